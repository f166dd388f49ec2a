"""Does §5.3's fall come later? The NCE of a late classifier snapshot against an earlier one, per layer and regime.

    python bench/late_snapshot.py --params <yaml with dynamics.steps [..., EARLY, LATE]> [--tag=-10k]

The quick set's §5.3 stops at 3000 classifier updates, and there CONV2's NCE is still highest at the last
checkpoint (no fall: "contradicted"), while FC3's and LOGITS' falls are inside their noise. The paper's falls
come between 1e4 and 1e5 updates. This reads a computed §5.3 run whose snapshots end with EARLY and LATE (the
last two of ``dynamics.steps``; stages from ``python -m inversion.pipeline run --params <yaml> --only dynamics``,
nothing is computed here) and writes, per layer:
- per regime, NCE(LATE) − NCE(EARLY): the fall the quick set cannot see, seed-paired when the run pairs its
  seeds (``inversion.reports.dynamics``' own differences, the chapter's noise);
- overfitted − regular at EARLY and at LATE (the chapter's "the overfitted net keeps more" at each);
- each NCE's gain over the p(x) its models were warm-started from;
and the classifiers' train/test accuracy at both snapshots. Judged as the chapter judges: beyond 2 × noise.
Writes bench/results/late_snapshot-<set><tag>.{json,md}, atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

from inversion import pipeline  # noqa: E402
from inversion.atomic import atomic_write_text  # noqa: E402
from inversion.provenance import provenance  # noqa: E402
from inversion.reports import common as C  # noqa: E402
from inversion.reports import dynamics as DR  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One NCE difference a − b (nats) with its noise and the verdict beyond 2 × noise (+1 a higher, -1 lower,
    0 inside the noise)."""
    layer: str
    what: str
    value: float
    noise: float
    direction: int


def compare(s: DR.DynamicsSummary, early: int, late: int) -> list[Comparison]:
    """Every late − early and overfit − regular difference of the summary's layers (the chapter's noise)."""
    out = []

    def add(layer, what, a, b):
        d = DR.nce_difference(s, layer, a, b)
        out.append(Comparison(layer, what, d.value, d.noise, {True: 1, False: -1, None: 0}[C.decide(d, +1)]))

    for l in s.layers:
        for g in s.regimes:
            add(l, f"{g}: NCE({late}) − NCE({early})", (g, late), (g, early))
        if {"regular", "overfit"} <= set(s.regimes):
            for t in (early, late):
                add(l, f"overfit − regular at {t}", ("overfit", t), ("regular", t))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", required=True, help="the parameter set (name or YAML path) the run was computed with")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    P = pipeline.load_params(args.params)
    steps = list(P.section("dynamics").steps)
    if len(steps) < 2:
        ap.error(f"dynamics.steps of {args.params} is {steps}: give at least two snapshots (EARLY, LATE)")
    early, late = steps[-2], steps[-1]
    cache = pipeline.Cache(P, compute=False)
    try:
        R = pipeline.dynamics_results(P, cache)
    except pipeline.StageMissing as e:
        ap.error(f"the §5.3 run of {args.params} is not computed in {cache.root}: {e}")
    s = DR.dynamics_summary(R)
    rows = compare(s, early, late)
    gains = {g: {l: {t: dataclasses.asdict(s.gain(g, l, t)) for t in (early, late)} for l in s.layers}
             for g in s.regimes} if s.unconditional else {}
    accuracy = {g: {t: dataclasses.asdict(s.accuracy[g][t]) for t in (early, late)} for g in s.regimes}
    results = C.flat_results(R)  # with the models behind the NCEs (their recorded deps)
    devices = sorted({r.provenance.get("device", "?") for r in results})
    prov = provenance("cpu")
    record = {"command": "python bench/late_snapshot.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "params": P.source or P.name, "dynamics_section": P.data["dynamics"], "steps": steps,
              "early": early, "late": late,
              "paired_seeds": bool(s.by_seed), "comparisons": [dataclasses.asdict(c) for c in rows],
              "gains_over_px": gains, "accuracy": accuracy, "stage_devices": devices,
              "n_stages": len(results),
              "stage_wall_s": round(sum(r.provenance.get("wall_s", 0.0) for r in results), 1), "provenance": prov}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"late_snapshot-{P.name}{args.tag}"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(record, indent=1) + "\n")
    verdict = {1: "higher", -1: "lower", 0: "inside the noise"}
    md = [f"# §5.3 at a later snapshot: {late} against {early} classifier updates ({P.name})", "",
          f"`{record['command']}` at commit {prov['commit'][:10]}; the stages ({len(results)}, "
          f"{record['stage_wall_s'] / 60:.1f} min of stage time) were computed on {', '.join(devices)}. "
          f"Snapshots {steps}; seeds {'paired (common random numbers)' if s.by_seed else 'independent'}. "
          "Nats per image; noise as the chapter's (spread of the per-seed paired differences and test-set s.e.); "
          "a difference is decided beyond 2 × noise.", "",
          "| layer | difference | value ± noise | verdict |", "| --- | --- | ---: | --- |"]
    md += [f"| {C.layer_label(c.layer)} | {c.what} | {c.value:+.3f} ± {c.noise:.3f} | {verdict[c.direction]} |"
           for c in rows]
    if gains:
        md += ["", "Gain over p(x) (NCE minus the warm start's, paired over the test images; ± test-set s.e.):", "",
               "| layer | regime | " + " | ".join(f"at {t}" for t in (early, late)) + " |", "| --- | --- | ---: | ---: |"]
        md += [f"| {C.layer_label(l)} | {g} | " + " | ".join(f"{gains[g][l][t]['value']:+.2f} ± {gains[g][l][t]['stderr']:.2f}"
                                                           for t in (early, late)) + " |"
               for l in s.layers for g in s.regimes]
    md += ["", "Classifier accuracy (train / test):", ""]
    md += [f"- {g}: " + "; ".join(f"at {t}: {accuracy[g][t]['train']:.1%} / {accuracy[g][t]['test']:.1%}"
                                 for t in (early, late)) for g in s.regimes]
    atomic_write_text(stem.with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
