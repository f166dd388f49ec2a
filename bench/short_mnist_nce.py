"""A short, real MNIST run: classifier -> FC3 features -> conditional and unconditional PixelCNN++.

Reports test accuracy, the NCE (nats/image) and bits/dim of p(x | FC3) and of p(x), their paired
difference, and training throughput. Paper architecture by default (64 filters, 3 resnets, softmax);
steps are far below the paper's 250k, so the numbers are those of a short run, not converged ones.

    python bench/short_mnist_nce.py --device cuda --pixelcnn-steps 2000        # a few GPU minutes
    python bench/short_mnist_nce.py --pixelcnn-steps 200 --n-filters 32 --n-resnet 1   # CPU-sized

Writes <out>/short_mnist_nce-<device>.json and .md. Resumes after a kill (workdirs under --workdir).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))  # runnable without installing

from inversion import bounds, data  # noqa: E402
from inversion.models import classifier, pixelcnn  # noqa: E402
from inversion.provenance import provenance  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--classifier-steps", type=int, default=3000)
    ap.add_argument("--pixelcnn-steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--n-filters", type=int, default=64)
    ap.add_argument("--n-resnet", type=int, default=3)
    ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--test-images", type=int, default=10000)
    ap.add_argument("--workdir", default="runs/short_mnist_nce")
    ap.add_argument("--models", default="fc3,unconditional", help="which PixelCNNs to train")
    ap.add_argument("--tag", default="", help="suffix for PixelCNN workdirs and the output files (e.g. -bf16)")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    work = Path(args.workdir)
    t_start = time.perf_counter()

    train_x, train_y = data.load("mnist", "train")
    valid_x, valid_y = data.load("mnist", "valid")
    test_x, test_y = data.load("mnist", "test")
    test_x, test_y = test_x[: args.test_images], test_y[: args.test_images]

    torch.manual_seed(0)
    clf = classifier.Classifier((1, 28, 28), "conv").to(dev)
    classifier.train_classifier(clf, (train_x, train_y), (valid_x, valid_y), work / "classifier",
                                classifier.ClassifierConfig(steps=args.classifier_steps, eval_every=500, patience=0),
                                device=dev)
    acc = classifier.accuracy(clf, test_x, test_y, device=dev)
    h_train = classifier.compute_features(clf, train_x, "fc3", device=dev)
    h_test = classifier.compute_features(clf, test_x, "fc3", device=dev)
    (work / "fc3").mkdir(parents=True, exist_ok=True)
    torch.save(h_test[:1024].clone(), work / "fc3" / "test_contexts.pt")  # for bench/pixelcnn_speed.py

    results = {}
    for name, ctx_train, ctx_test in [("fc3", h_train, h_test), ("unconditional", None, None)]:
        if name not in args.models.split(","):
            continue
        torch.manual_seed(0)
        model = pixelcnn.PixelCNNpp((1, 28, 28), None if ctx_train is None else (256,), n_filters=args.n_filters,
                                    n_resnet=args.n_resnet, likelihood="softmax", dropout=args.dropout).to(dev)
        config = pixelcnn.PixelCNNConfig(steps=args.pixelcnn_steps, batch_size=args.batch_size, bf16=args.bf16)
        run = pixelcnn.train_pixelcnn(model, train_x, ctx_train, work / (name + args.tag), config, device=dev,
                                      desc=name)
        lp = bounds.per_image_log_prob(model, test_x, ctx_test, batch_size=500, device=dev)
        results[name] = dict(nce=bounds.summarize(lp, dims=28 * 28).as_dict(), train_seconds=run.seconds,
                             train_images_per_second=args.pixelcnn_steps * args.batch_size / run.seconds,
                             n_parameters=model.n_parameters())
        results[name]["per_image"] = lp
    per_image = {name: r.pop("per_image") for name, r in results.items()}
    diff, diff_se = (bounds.paired_difference(per_image["fc3"], per_image["unconditional"])
                     if len(per_image) == 2 else (float("nan"), float("nan")))

    report = dict(
        config=vars(args), classifier_test_accuracy=acc, pixelcnn=results,
        nce_fc3_minus_unconditional=dict(nats=diff, stderr=diff_se),
        wall_seconds=time.perf_counter() - t_start, provenance=provenance(dev),
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"short_mnist_nce-{dev.type}{args.tag}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    lines = [
        f"# Short MNIST run ({report['provenance']['device']}, torch {report['provenance']['torch']}, "
        f"commit {report['provenance']['commit'][:10]}, {report['provenance']['date']})",
        "",
        f"Classifier: {args.classifier_steps} steps, test accuracy {acc:.4f}. PixelCNN++: {args.n_filters} filters, "
        f"{args.n_resnet} resnets, {args.pixelcnn_steps} steps of batch {args.batch_size}{', bf16' if args.bf16 else ''}; "
        f"NCE on {len(test_x)} test images.",
        "",
        "| model | NCE (nats/image) | ± s.e. | bits/dim | train img/s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        lines.append(f"| p(x | {name}) | {r['nce']['nats']:.2f} | {r['nce']['stderr']:.2f} | "
                     f"{r['nce']['bits_per_dim']:.4f} | {r['train_images_per_second']:.1f} |")
    if len(per_image) == 2:
        lines += ["", f"NCE(fc3) − NCE(unconditional) = {diff:.2f} ± {diff_se:.2f} nats (paired s.e.)"]
    lines.append("")
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
