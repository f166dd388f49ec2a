"""What each way of judging an NCE difference buys: the noise of §5.3's and §5.2's claimed differences under
(a) today's method, independent models (the main models' paired test-set s.e. combined with the seed spread
of each side), and (b) common random numbers (every compared model trained with the same seeds; one paired
difference per seed), each from scratch and warm-started from an unconditional PixelCNN++, on the same
parameter set, with the CPU time each costs.

    python bench/noise_methods.py --section dynamics [--params quick] [--warm-steps 1500] [--seeds 1 2]
    python bench/noise_methods.py --section architectures [--params quick] [--warm-steps 1500] [--seeds 1 2]

The stages go through the parameter set's stage cache (shared with the book: what the book computed is
reused, what this computes the book can reuse). Writes bench/results/noise_methods-<set>-<section>[-warm-lr-<lr>].{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
from inversion import pipeline  # noqa: E402
from inversion.pipeline.architectures import architectures_plan  # noqa: E402
from inversion.pipeline.cache import iter_refs  # noqa: E402
from inversion.pipeline.dynamics import dynamics_plan  # noqa: E402
from inversion.reports import architectures as AR  # noqa: E402
from inversion.reports import common as C  # noqa: E402
from inversion.reports import dynamics as DR  # noqa: E402


def minutes(plan, cache) -> float:
    """CPU minutes of every stage a plan needs, its dependencies included (the unconditional model too)."""
    return sum(cache.result(r).provenance.get("wall_s", 0.0) for r in iter_refs(plan)) / 60


def dynamics_rows(P, cache, label):
    R = pipeline.dynamics_results(P, cache)
    s = DR.dynamics_summary(R)
    # Independent models: the main models plus the replicates at the last regular snapshot (what the book
    # trained before paired seeds), judged with the seed spread; paired: every model, per seed.
    independent = replace(s, by_seed={})
    plan = dynamics_plan(P)
    main_cost = minutes({k: v for k, v in plan.items() if k != "paired"}, cache)
    all_cost = minutes(plan, cache)
    rows = []
    for l in s.layers:
        for name, get in (("rise", lambda x: DR.rise_and_fall(x, "regular", l).rise),
                          ("fall", lambda x: DR.rise_and_fall(x, "regular", l).fall),
                          ("overfit − regular", lambda x: DR.overfit_minus_regular(x, l))):
            a, b = get(independent), get(s)
            rows.append(dict(recipe=label, layer=l, difference=name, independent_value=a.value,
                             independent_noise=a.noise, paired_value=b.value, paired_noise=b.noise))
    return rows, dict(recipe=label, independent_minutes=main_cost, paired_minutes=all_cost,
                      n_seeds=1 + len(P.section("dynamics").replicate_seeds))


def architectures_rows(P, cache, label):
    R = pipeline.architectures_results(P, cache)
    s = AR.architecture_summary(R)
    rows = []
    for (a, b), p in s.paired.items():
        rows.append(dict(recipe=label, layer="fc3", difference=f"{a} − {b}", independent_value=None,
                         independent_noise=p.independent_noise, paired_value=p.value, paired_noise=p.noise))
    cost = minutes(architectures_plan(P), cache)  # the same models either way: only the analysis differs
    return rows, dict(recipe=label, independent_minutes=cost, paired_minutes=cost,
                      n_seeds=1 + len(P.section("architectures").replicate_seeds))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--section", choices=("dynamics", "architectures"), required=True)
    ap.add_argument("--params", default="quick")
    ap.add_argument("--warm-steps", type=int, default=1500, help="steps of the unconditional model (0: skip warm)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="replicate seeds beside the main one")
    ap.add_argument("--layers", nargs="+", default=None, help="§5.3 layers to measure (default: the set's)")
    ap.add_argument("--warm-lr", type=float, default=None, help="learning rate of the warm models' conditional "
                    "phase (default: the set's lr)")
    args = ap.parse_args(argv)
    if args.warm_steps < 0:
        ap.error(f"--warm-steps must be >= 0, got {args.warm_steps}")
    lr = f", lr {args.warm_lr:g}" if args.warm_lr else ""
    recipes = [("from scratch", 0)] + ([(f"warm start ({args.warm_steps} steps of p(x){lr})", args.warm_steps)]
                                       if args.warm_steps else [])
    rows, costs, t0 = [], [], time.time()
    for label, warm in recipes:
        over = {"replicate_seeds": args.seeds, "inversion": {"warm_start_steps": warm,
                                                             **({"warm_start_lr": args.warm_lr} if warm else {})}}
        if args.section == "dynamics":
            over["paired_seeds"] = True
            if args.layers:
                over["layers"] = args.layers
        P = pipeline.load_params(args.params, {args.section: over})
        cache = pipeline.Cache(P, compute=True)
        fn = dynamics_rows if args.section == "dynamics" else architectures_rows
        r, c = fn(P, cache, label)
        rows += r
        costs.append(c)
    name = f"noise_methods-{args.params}-{args.section}" + (f"-warm-lr-{args.warm_lr:.0e}" if args.warm_lr else "")
    out = REPO / "bench" / "results"
    payload = dict(section=args.section, params=args.params, seeds=args.seeds, warm_steps=args.warm_steps,
                   rows=rows, costs=costs, wall_s=time.time() - t0)
    (out / f"{name}.json").write_text(json.dumps(payload, indent=1))
    lines = [f"# Noise of the {args.section} NCE differences: independent models vs paired seeds",
             "", f"`python bench/noise_methods.py --section {args.section} --params {args.params} "
                 f"--warm-steps {args.warm_steps} --seeds {' '.join(map(str, args.seeds))}"
                 + (f" --layers {' '.join(args.layers)}" if args.layers else "")
                 + (f" --warm-lr {args.warm_lr:g}" if args.warm_lr else "") + "`", "",
             "Noise = the standard deviation of the difference (nats); decided when |value| > 2 × noise.", "",
             C.markdown_table(["recipe", "layer", "difference", "independent: value ± noise", "paired: value ± noise",
                               "noise ratio"],
                              [(r["recipe"], r["layer"], r["difference"],
                                f"{C.fmt(r['independent_value'], '+.2f')} ± {r['independent_noise']:.2f}",
                                f"{r['paired_value']:+.2f} ± {r['paired_noise']:.2f}",
                                f"{r['paired_noise'] / r['independent_noise']:.2f}" if r["independent_noise"] else "n/a")
                               for r in rows]), "",
             C.markdown_table(["recipe", "seeds", "CPU min, independent design", "CPU min, paired design"],
                              [(c["recipe"], c["n_seeds"], f"{c['independent_minutes']:.1f}",
                                f"{c['paired_minutes']:.1f}") for c in costs])]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
