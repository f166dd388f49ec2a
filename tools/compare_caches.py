"""Two stage caches of one parameter set, compared result by result: the check that a change of code shape
changed no number.

    python tools/compare_caches.py BEFORE/<set> AFTER/<set>      # exit 1 if anything differs

For every stage directory present in both (same key, so same config and inputs): its config, its metrics
(wall-clock timings aside: they differ between any two runs) and every .npz / .npy array, compared exactly
(NaN equal to NaN). Keys present in only one cache are listed: a changed key means a changed config or
stage version.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

TIMING = {"train_seconds", "sample_seconds", "samples_per_second", "steps_per_second", "seconds", "sweep_seconds",
          "wall_s"}


def _strip(x):
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if k not in TIMING}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def _same_arrays(fa: Path, fb: Path) -> bool:
    if not fb.exists():
        return False
    za, zb = np.load(fa), np.load(fb)
    if fa.suffix == ".npy":
        return np.array_equal(za, zb, equal_nan=za.dtype.kind == "f")
    return set(za.files) == set(zb.files) and all(
        np.array_equal(za[k], zb[k], equal_nan=za[k].dtype.kind == "f") for k in za.files)


def compare(a: Path, b: Path) -> list[str]:
    da = {d.name for d in a.iterdir() if (d / "result.json").exists()}
    db = {d.name for d in b.iterdir() if (d / "result.json").exists()}
    problems = [f"only in {a}: {n}" for n in sorted(da - db)] + [f"only in {b}: {n}" for n in sorted(db - da)]
    n_arrays = 0
    for name in sorted(da & db):
        ia, ib = (json.loads((x / name / "result.json").read_text()) for x in (a, b))
        if ia["config"] != ib["config"]:
            problems.append(f"{name}: config differs")
        if _strip(ia["metrics"]) != _strip(ib["metrics"]):
            problems.append(f"{name}: metrics differ")
        for f in sorted((a / name).iterdir()):
            if f.suffix in (".npz", ".npy"):
                n_arrays += 1
                if not _same_arrays(f, b / name / f.name):
                    problems.append(f"{name}/{f.name}: arrays differ")
    print(f"{len(da & db)} stage results in both ({len(da)} before, {len(db)} after), {n_arrays} array files compared")
    return problems


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tools/compare_caches.py BEFORE_CACHE/<set> AFTER_CACHE/<set>")
    found = compare(Path(sys.argv[1]), Path(sys.argv[2]))
    print("\n".join(found) if found else "identical: same keys, configs, metrics (timings aside) and arrays")
    sys.exit(1 if found else 0)
