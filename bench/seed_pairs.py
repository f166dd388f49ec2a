"""Seed-paired NCE differences between committed inversion models (issue 14's common random numbers), before
the parameter set's plan holds them all: from the per-image log-probs of NCE stages in the stage cache.

    python bench/seed_pairs.py --params quick conv=nce-6b9c94ad5988,nce-dd5ec33e1ca7 \
        conv_gmp=nce-646a343ef883,nce-a087c8b079f0 fc=nce-958d917195ef [--tag=-affnist16000]

Each ``name=STAGE[,STAGE...]`` lists one network's NCE stages by seed (first seed 0, then 1, ...); the models
of one seed must share their seed across the networks (as the plan's ``replicate_seeds`` gives). For each pair
of networks this writes the per-seed paired differences (``inversion.bounds.paired_difference``: ± the test-set
s.e.) and, where both have two seeds or more, the seed-paired difference
(``inversion.bounds.seed_paired_difference``: ± the spread of the per-seed differences and the test-set s.e.,
beside the noise the same models give treated as independent); for each network with two seeds, seed 0 −
seed 1. ``--reference STAGE`` (an ``unconditional_nce-<key>`` folder: the p(x) the models were warm-started
from, on the same test images) adds each model's gain over it (issue 14's gain over the unconditional model,
the V-information estimate), per seed ± the test-set s.e. and, with two seeds or more, the mean over seeds ± the
spread of the per-seed gains and the test-set s.e. The chapters compute the same from the plan once it holds
every model; this reads committed results only (nothing is trained). Writes
bench/results/seed_pairs-<set><tag>.{json,md}, atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

from inversion import pipeline  # noqa: E402
from inversion.atomic import atomic_write_text  # noqa: E402
from inversion.bounds import paired_difference, seed_paired_difference  # noqa: E402
from inversion.provenance import provenance  # noqa: E402


def check_nce_stage(folder: str, root: Path, ap: argparse.ArgumentParser, who: str,
                    prefixes: tuple[str, ...] = ("nce-",)) -> str:
    """``folder`` names an NCE stage (one of ``prefixes``) whose per-image log-probs are in the cache."""
    if not folder.startswith(prefixes):
        ap.error(f"{who}: {folder!r} is not an NCE stage folder ({' or '.join(p + '<key>' for p in prefixes)}); "
                 f"`python -m inversion.pipeline list --params <set>` names them")
    if not (root / folder / "log_probs.npy").exists():
        ap.error(f"{who}: {root / folder / 'log_probs.npy'} does not exist: compute the stage or check its name")
    return folder


def parse_network(text: str, root: Path, ap: argparse.ArgumentParser) -> tuple[str, list[str]]:
    name, sep, stages = text.partition("=")
    folders = [s for s in stages.split(",") if s]
    if not sep or not name or not folders:
        ap.error(f"{text!r}: write NAME=NCE_STAGE[,NCE_STAGE...], e.g. conv=nce-6b9c94ad5988,nce-dd5ec33e1ca7")
    return name, [check_nce_stage(f, root, ap, name) for f in folders]


def gains_over_reference(log_probs: dict[str, list[torch.Tensor]], reference: torch.Tensor) -> list[dict]:
    """Each network's gain over the reference, per seed (paired over the images) and, with two seeds or more,
    their mean ± the spread of the per-seed gains and the test-set s.e. (``seed_paired_difference`` with the one
    reference model standing in for every seed)."""
    out = []
    for n, lps in log_probs.items():
        per_seed = [paired_difference(lp, reference) for lp in lps]
        row = {"network": n, "per_seed": [{"value": m, "test_se": s} for m, s in per_seed]}
        if len(lps) >= 2:
            d = seed_paired_difference(dict(enumerate(lps)), {s: reference for s in range(len(lps))})
            row["seed_paired"] = dataclasses.asdict(d)
        out.append(row)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("networks", nargs="+", metavar="NAME=NCE_STAGE[,NCE_STAGE...]")
    ap.add_argument("--params", default="quick")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--tag", default="")
    ap.add_argument("--reference", metavar="STAGE", help="unconditional_nce-<key>: add each model's gain over it")
    args = ap.parse_args(argv)
    root = pipeline.Cache(pipeline.load_params(args.params), compute=False).root
    nets = dict(parse_network(t, root, ap) for t in args.networks)
    if len(nets) != len(args.networks):
        ap.error("each network name may be given once")
    reference = args.reference and check_nce_stage(args.reference, root, ap, "--reference",
                                                   ("unconditional_nce-", "nce-"))
    log_probs = {n: [torch.as_tensor(np.load(root / f / "log_probs.npy")) for f in fs] for n, fs in nets.items()}
    shapes = {n: sorted({tuple(lp.shape) for lp in lps}) for n, lps in log_probs.items()}
    if reference:
        ref_lp = torch.as_tensor(np.load(root / reference / "log_probs.npy"))
        shapes["--reference"] = [tuple(ref_lp.shape)]
    if len({shape for ss in shapes.values() for shape in ss}) != 1:
        ap.error(f"the stages hold different numbers of test images ({shapes}): compare NCEs on the same images")

    rows, lines = [], []
    for a, b in itertools.combinations(nets, 2):
        per_seed = [paired_difference(x, y) for x, y in zip(log_probs[a], log_probs[b])]
        row = {"a": a, "b": b, "per_seed": [{"value": m, "test_se": s} for m, s in per_seed]}
        text = ", ".join(f"{m:+.2f} ± {s:.2f}" for m, s in per_seed)
        seeded = "single seed: training noise not measured"
        if min(len(log_probs[a]), len(log_probs[b])) >= 2:
            d = seed_paired_difference(dict(enumerate(log_probs[a])), dict(enumerate(log_probs[b])))
            row["seed_paired"] = dataclasses.asdict(d)
            seeded = (f"**{d.value:+.2f} ± {d.noise:.2f}** ({d.n_seeds} seeds; sd of the per-seed differences "
                      f"{d.seed_sd:.2f}, test-set s.e. {d.test_se:.2f}; as independent models ± "
                      f"{d.independent_noise:.2f}; detectable {2 * d.noise:.2f})")
        rows.append(row)
        lines.append(f"| {a} − {b} | {text} | {seeded} |")
    seeds = []
    for n, lps in log_probs.items():
        if len(lps) >= 2:
            m, s = paired_difference(lps[0], lps[1])
            seeds.append({"network": n, "value": m, "test_se": s})
    gains = gains_over_reference(log_probs, ref_lp) if reference else []
    prov = provenance("cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"seed_pairs-{args.params}{args.tag}"
    record = {"command": "python bench/seed_pairs.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "stages": nets, "differences": rows, "seed0_minus_seed1": seeds,
              **({"reference": reference, "gains_over_reference": gains} if reference else {}), "provenance": prov}
    atomic_write_text(stem.with_suffix(".json"), json.dumps(record, indent=1) + "\n")
    md = [f"# Seed-paired NCE differences ({args.params})", "",
          f"`{record['command']}` at commit {prov['commit'][:10]}, reading committed NCE stages "
          f"({', '.join(f'{n}: ' + ', '.join(fs) for n, fs in nets.items())}; seed 0 first).", "",
          "Nats per image over the same test images. Per seed: the paired difference ± its test-set s.e. "
          "Seed-paired: the mean over seeds ± the spread of the per-seed differences and the test-set s.e. "
          "(`inversion.bounds.seed_paired_difference`); with two seeds that spread has one degree of freedom.", "",
          "| difference | per seed | seed-paired |", "| --- | --- | --- |", *lines, ""]
    md += [f"- {r['network']}: seed 0 − seed 1 = {r['value']:+.2f} ± {r['test_se']:.2f}" for r in seeds]
    if reference:
        md += ["", f"Gain over `{reference}` (each model's NCE minus the reference's, paired over the same images):",
               "", "| network | per seed | mean over seeds |", "| --- | --- | --- |"]
        for g in gains:
            sp = g.get("seed_paired")
            mean = (f"**{sp['value']:+.2f} ± {sp['noise']:.2f}** (sd of the per-seed gains {sp['seed_sd']:.2f}, "
                    f"test-set s.e. {sp['test_se']:.2f})" if sp else "single seed")
            per_seed = ", ".join(f"{p['value']:+.2f} ± {p['test_se']:.2f}" for p in g["per_seed"])
            md.append(f"| {g['network']} | {per_seed} | {mean} |")
    atomic_write_text(stem.with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(lines + [f"{r['network']} seed0-seed1 {r['value']:+.2f} ± {r['test_se']:.2f}" for r in seeds]
                    + [f"{g['network']} gain {[round(p['value'], 2) for p in g['per_seed']]}" for g in gains]))
    print(f"wrote {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
