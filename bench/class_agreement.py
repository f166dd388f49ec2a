"""What training length keeps the class: how often samples of an inversion model p(x | h) are classified as
their input's class, and the NCE, as the model trains longer (issue 14's targets: >= 80 % at MNIST FC3 and
LOGITS, and §5.2's affNIST FC3 samples recognisable digits by the same measure).

    python bench/class_agreement.py [--params quick] [--dataset mnist] [--layers fc3] [--steps 450 1350 2700]
                                    [--tag=-layers]
    python bench/class_agreement.py --section architectures [--archs conv] [--steps 500 1000]
                                    [--inversion n_filters=16 warm_start_steps=3000] [--tag=-16f] [--compile]

Everything but the inversion model's ``steps`` (and, with ``--inversion``, the fields it names) is the parameter
set's §5.1 or §5.2 (same classifier, model size, learning rate and its per-update decay, images and samples per
image), so without ``--inversion`` a point at the set's own steps is the book's own model. The stages go through
the set's stage cache (shared with the book: what the book computed is reused, and what this bench computes the
book reuses once the set says the same). Writes bench/results/class_agreement-<set>-<dataset><tag>.{json,md},
atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
from inversion import pipeline  # noqa: E402
from inversion.atomic import atomic_write_text  # noqa: E402
from inversion.pipeline.architectures import architectures_plan  # noqa: E402
from inversion.pipeline.layers import layers_plan  # noqa: E402
from inversion.provenance import provenance  # noqa: E402
from inversion.reports.common import share_stderr  # noqa: E402


def inversion_overrides(items: list[str], ap: argparse.ArgumentParser) -> dict:
    """``key=value`` pairs (values read as YAML: 16, 3.0e-4, true, null) into a dict of inversion settings."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            ap.error(f"--inversion {item!r}: write each override as key=value, e.g. n_filters=16")
        out[key] = yaml.safe_load(value)
    return out


def agreement_stderr(samples) -> float | None:
    """The s.e. of a samples stage's class agreement across its input images (``reports.common.share_stderr``:
    the samples of one image share its context, so the binomial s.e. over all samples would understate the
    noise). None when the stage kept no per-sample agreement (a top-k samples file) or drew from one image."""
    with np.load(samples.dir / "samples.npz") as f:
        return share_stderr(f["agree"]) if "agree" in f.files else None


def models(args, steps: int, inversion: dict) -> tuple[str, list[tuple[str, object, dict]]]:
    """The dataset, and (label, cache, {"inversion", "nce", "samples"} refs) of the models this point trains."""
    inversion = {**inversion, "steps": steps}
    if args.section == "layers":
        # Through per_dataset: a set's per_dataset entry (quick's MNIST steps) beats a section-wide value.
        layers = {"datasets": [args.dataset], "layers": args.layers,
                  "per_dataset": {args.dataset: {"inversion": inversion}}}
        if args.n_images:
            layers["evaluation"] = {"n_images": args.n_images}
        P = pipeline.load_params(args.params, {"layers": layers})
        plan = layers_plan(P, args.dataset)["layers"]
        labels, dataset = args.layers, args.dataset
    else:
        section = {"archs": args.archs, "inversion": inversion}
        if args.n_images:
            section["evaluation"] = {"n_images": args.n_images}
        P = pipeline.load_params(args.params, {"architectures": section})
        plan = architectures_plan(P)
        labels, dataset = args.archs, P.section("architectures").dataset
    cache = pipeline.Cache(P, progress=True, compile=args.compile)
    return dataset, [(label, cache, plan[label]) for label in labels]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="quick")
    ap.add_argument("--section", choices=("layers", "architectures"), default="layers",
                    help="§5.1's layers of one dataset, or §5.2's networks on affNIST")
    ap.add_argument("--dataset", default="mnist", help="layers only (architectures: the section's)")
    ap.add_argument("--layers", nargs="+", default=["fc3"], help="layers only")
    ap.add_argument("--archs", nargs="+", default=["conv"], help="architectures only: fc, conv, conv_gmp")
    ap.add_argument("--steps", nargs="+", type=int, default=[450, 1350, 2700])
    ap.add_argument("--inversion", nargs="*", default=[], metavar="KEY=VALUE",
                    help="inversion settings to change besides steps, e.g. n_filters=16 warm_start_steps=3000")
    ap.add_argument("--n-images", type=int, default=None, help="images sampled (default: the set's)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--tag", default="", help="appended to the result files' name, e.g. -layers")
    ap.add_argument("--compile", action="store_true", help="torch.compile the inversion models' training "
                    "(as `pipeline run --compile`: the same stages, faster from a few thousand steps)")
    args = ap.parse_args(argv)
    if any(s < 1 for s in args.steps):
        ap.error(f"--steps {args.steps}: every step count must be >= 1")
    inversion = inversion_overrides(args.inversion, ap)
    if "steps" in inversion:
        ap.error("--inversion steps=...: give the training lengths with --steps")

    rows = []
    for steps in args.steps:
        dataset, trained = models(args, steps, inversion)
        for label, cache, refs in trained:
            inv, nce, samples = (cache.result(refs[k]) for k in ("inversion", "nce", "samples"))
            rows.append(dict(model=label, steps=steps, nats=nce.metrics["nats"], nats_stderr=nce.metrics["stderr"],
                             class_agreement=samples.metrics["class_agreement"],
                             class_agreement_stderr=agreement_stderr(samples),
                             n_samples=samples.metrics["stored_shape"][0] * samples.metrics["stored_shape"][1],
                             train_minutes=inv.metrics["train_seconds"] / 60, inversion=inv.dir.name))
            r = rows[-1]
            se = "" if r["class_agreement_stderr"] is None else f" ± {r['class_agreement_stderr']:.1%}"
            print(f"{label} {steps} steps: class agreement {r['class_agreement']:.1%}{se}, NCE {r['nats']:.1f} "
                  f"± {r['nats_stderr']:.1f} nats, trained in {r['train_minutes']:.1f} min", flush=True)

    out = Path(args.out)
    name = f"class_agreement-{args.params}-{dataset}{args.tag}"
    payload = dict(args=vars(args), rows=rows, provenance=provenance())
    atomic_write_text(out / f"{name}.json", json.dumps(payload, indent=1))
    column = "layer" if args.section == "layers" else "network"
    command = (f"python bench/class_agreement.py --params {args.params} --section {args.section} "
               + (f"--dataset {args.dataset} --layers {' '.join(args.layers)}" if args.section == "layers"
                  else f"--archs {' '.join(args.archs)}")
               + f" --steps {' '.join(map(str, args.steps))}"
               + (f" --inversion {' '.join(args.inversion)}" if args.inversion else "")
               + (f" --n-images {args.n_images}" if args.n_images else "")
               + (f" --tag={args.tag}" if args.tag else "")
               + (" --compile" if args.compile else ""))
    lines = [f"# Class agreement of {'§5.1' if args.section == 'layers' else '§5.2'}'s samples against training "
             f"length ({args.params}, {dataset})", "",
             f"`{command}` at commit {payload['provenance']['commit'][:10]} on {payload['provenance']['device']}.", "",
             "Class agreement: the fraction of samples the classifier assigns the class it gives their input "
             "(chance 10 %), ± its s.e. across the input images (the samples of one image share its context, so "
             "the binomial s.e. over all samples would understate the noise). NCE on the set's test images, ± its s.e. Train minutes: the inversion model's training "
             "time, summed over the sessions a resumed training ran in (a warm-started model's excludes its "
             "unconditional model's).", "",
             f"| {column} | steps | class agreement | samples | NCE (nats) | train min |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['model']} | {r['steps']} | {r['class_agreement']:.1%}"
              + ("" if r["class_agreement_stderr"] is None else f" ± {r['class_agreement_stderr']:.1%}")
              + f" | {r['n_samples']} | "
              f"{r['nats']:.1f} ± {r['nats_stderr']:.1f} | {r['train_minutes']:.1f} |" for r in rows]
    atomic_write_text(out / f"{name}.md", "\n".join(lines) + "\n")
    print(f"wrote {out / name}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
