"""What training length keeps the class: how often samples of §5.1's p(x | h) are classified as their input's
class, and the NCE, as the inversion model trains longer (issue 14's target: >= 80 % at MNIST FC3 and LOGITS).

    python bench/class_agreement.py [--params quick] [--dataset mnist] [--layers fc3] [--steps 450 1350 2700]
                                    [--tag=-layers]

Everything but the inversion model's ``steps`` is the parameter set's §5.1 (same classifier, model size,
learning rate and its per-update decay, Table 1's images and samples per image), so the first point is the
book's own model. The stages go through the set's stage cache (shared with the book: what the book computed
is reused). Writes bench/results/class_agreement-<set>-<dataset><tag>.{json,md}, atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
from inversion import pipeline  # noqa: E402
from inversion.atomic import atomic_write_text  # noqa: E402
from inversion.pipeline.layers import layers_plan  # noqa: E402
from inversion.provenance import provenance  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="quick")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--layers", nargs="+", default=["fc3"])
    ap.add_argument("--steps", nargs="+", type=int, default=[450, 1350, 2700])
    ap.add_argument("--n-images", type=int, default=None, help="Table 1 images (default: the set's)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--tag", default="", help="appended to the result files' name, e.g. -layers")
    args = ap.parse_args(argv)
    if any(s < 1 for s in args.steps):
        ap.error(f"--steps {args.steps}: every step count must be >= 1")

    rows = []
    for steps in args.steps:
        # Through per_dataset: a set's per_dataset entry (quick's MNIST steps) beats a section-wide value.
        layers = {"datasets": [args.dataset], "layers": args.layers,
                  "per_dataset": {args.dataset: {"inversion": {"steps": steps}}}}
        if args.n_images:
            layers["evaluation"] = {"n_images": args.n_images}
        P = pipeline.load_params(args.params, {"layers": layers})
        cache = pipeline.Cache(P, progress=True)
        plan = layers_plan(P, args.dataset)
        for layer in args.layers:
            refs = plan["layers"][layer]
            inv, nce, samples = (cache.result(refs[k]) for k in ("inversion", "nce", "samples"))
            rows.append(dict(layer=layer, steps=steps, nats=nce.metrics["nats"], nats_stderr=nce.metrics["stderr"],
                             class_agreement=samples.metrics["class_agreement"],
                             n_samples=samples.metrics["stored_shape"][0] * samples.metrics["stored_shape"][1],
                             train_minutes=inv.provenance.get("wall_s", 0.0) / 60, inversion=inv.dir.name))
            r = rows[-1]
            print(f"{layer} {steps} steps: class agreement {r['class_agreement']:.1%}, NCE {r['nats']:.1f} "
                  f"± {r['nats_stderr']:.1f} nats, trained in {r['train_minutes']:.1f} min", flush=True)

    out = Path(args.out)
    name = f"class_agreement-{args.params}-{args.dataset}{args.tag}"
    payload = dict(args=vars(args), rows=rows, provenance=provenance())
    atomic_write_text(out / f"{name}.json", json.dumps(payload, indent=1))
    lines = [f"# Class agreement of §5.1's samples against training length ({args.params}, {args.dataset})", "",
             f"`python bench/class_agreement.py --params {args.params} --dataset {args.dataset} "
             f"--layers {' '.join(args.layers)} --steps {' '.join(map(str, args.steps))}"
             + (f" --tag={args.tag}" if args.tag else "") + "` at commit "
             f"{payload['provenance']['commit'][:10]} on {payload['provenance']['device']}.", "",
             "Class agreement: the fraction of samples the classifier assigns the input's class (chance 10 %; its "
             "binomial s.e. understates the noise, since the 10 samples of one image are not independent). "
             "NCE on the set's test images, ± its s.e. Train minutes: wall time of the inversion stage.", "",
             "| layer | steps | class agreement | samples | NCE (nats) | train min |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['layer']} | {r['steps']} | {r['class_agreement']:.1%} | {r['n_samples']} | "
              f"{r['nats']:.1f} ± {r['nats_stderr']:.1f} | {r['train_minutes']:.1f} |" for r in rows]
    atomic_write_text(out / f"{name}.md", "\n".join(lines) + "\n")
    print(f"wrote {out / name}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
