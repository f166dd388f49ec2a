"""Wall time of a plan run serially in one process vs on a local Dask cluster of N worker processes.

    python bench/parallel_stages.py --params quick --only dynamics --workers 2
    python bench/parallel_stages.py --params bench/parallel_stages-workers-short.yaml --only layers:fashion_mnist

Each variant computes the same stages from an empty cache (a fresh temporary directory), one variant after
the other, with nothing else running:
  serial          python -m inversion.pipeline run (one process, torch's default threads = the cores)
  workers=N       ... --workers N (N single-threaded-by-Dask worker processes, cores/N torch threads each)
Writes bench/results/parallel_stages-<params>-<only>.{json,md} with the commands, times and provenance.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
from inversion.provenance import provenance  # noqa: E402


def timed(cmd: list[str], cache: Path) -> dict:
    env = {**os.environ, "INVERSION_CACHE": str(cache)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return dict(command=" ".join(cmd[1:]), wall_s=round(wall, 1), summary=proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="quick")
    ap.add_argument("--only", nargs="*", default=["dynamics"])
    ap.add_argument("--workers", type=int, nargs="*", default=[2])
    args = ap.parse_args()
    base = [sys.executable, "-m", "inversion.pipeline", "run", "--params", args.params, "--only", *args.only]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        variants = [("serial", base)] + [(f"workers={n}", base + ["--workers", str(n)]) for n in args.workers]
        for name, cmd in variants:
            row = dict(variant=name, **timed(cmd, Path(tmp) / name))
            print(json.dumps(row), flush=True)
            rows.append(row)
    serial = rows[0]["wall_s"]
    for row in rows:
        row["speedup_vs_serial"] = round(serial / row["wall_s"], 2)
    name = Path(args.params).stem.removeprefix("parallel_stages-") if args.params.endswith(".yaml") else args.params
    tag = f"{name}-{'-'.join(o.replace(':', '_') for o in args.only)}"
    out = REPO / "bench" / "results" / f"parallel_stages-{tag}"
    info = dict(script="bench/parallel_stages.py", args=vars(args), cores=os.cpu_count(), rows=rows,
                provenance=provenance("cpu"))
    out.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    lines = [f"# {args.params} --only {' '.join(args.only)}: serial vs local Dask workers ({os.cpu_count()} cores)", "",
             f"`python bench/parallel_stages.py --params {args.params} --only {' '.join(args.only)} --workers "
             f"{' '.join(map(str, args.workers))}`, commit {info['provenance']['commit'][:7]}, "
             f"{info['provenance']['date']}, {info['provenance']['device']}", "",
             "| variant | wall s | speed-up | run's summary |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['variant']} | {r['wall_s']} | {r['speedup_vs_serial']} | {r['summary']} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
