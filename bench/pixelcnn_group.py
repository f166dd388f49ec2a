"""Many small models at once: K PixelCNN++ models trained one after another vs as one vmapped group.

Throughput is total training images per second over all K models (each model sees batch B per step).
The baseline is the same K models stepped one at a time, eager fp32, in the same run.

    python bench/pixelcnn_group.py --device cuda             # paper MNIST config, K = 1, 2, 4, 8
    python bench/pixelcnn_group.py --n-filters 32 --ks 1,4   # a CPU-sized run

Writes bench/results/pixelcnn_group-<device>.json and .md, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))  # runnable without installing

from grouped_pixelcnn import PixelCNNGroup  # noqa: E402  (bench/, beside this file)
from inversion.models.pixelcnn import PixelCNNpp  # noqa: E402
from inversion.provenance import provenance  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step, device, steps, warmup=2):
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - t0) / steps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--ks", default="1,2,4,8")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--n-filters", type=int, default=64)
    ap.add_argument("--n-resnet", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cfg = dict(image_shape=(1, 28, 28), context_shape=(256,), n_filters=args.n_filters, n_resnet=args.n_resnet)
    rows = []
    for k in map(int, args.ks.split(",")):
        torch.manual_seed(0)
        ms = [PixelCNNpp(**cfg).to(device) for _ in range(k)]
        x = torch.randint(0, 256, (args.batch, 1, 28, 28), dtype=torch.uint8, device=device)
        h = torch.randn(args.batch, k, 256, device=device).relu()
        opts = [torch.optim.Adam(m.parameters()) for m in ms]

        def one_by_one():
            for i, (m, o) in enumerate(zip(ms, opts)):
                loss = -m.log_prob(x, h[:, i]).mean()
                o.zero_grad(set_to_none=True)
                loss.backward()
                o.step()

        group = PixelCNNGroup(ms)
        gopt = torch.optim.Adam(group.parameters())

        def grouped():
            loss = -group.sub_pixel_log_prob(x, h).sum(dim=(2, 3, 4)).mean(dim=1).sum()
            gopt.zero_grad(set_to_none=True)
            loss.backward()
            gopt.step()

        t_seq = timed(one_by_one, device, args.steps)
        t_grp = timed(grouped, device, args.steps)
        row = dict(k=k, batch=args.batch, sequential_images_per_s=k * args.batch / t_seq,
                   grouped_images_per_s=k * args.batch / t_grp, speedup=t_seq / t_grp)
        rows.append(row)
        print(row, flush=True)
    prov = provenance(device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"pixelcnn_group-{device.type}"
    stem.with_suffix(".json").write_text(json.dumps(dict(provenance=prov, args=vars(args), rows=rows), indent=1))
    lines = [f"# K PixelCNN++ models trained at once on {prov['device']}", "",
             f"torch {prov['torch']}, commit {prov['commit'][:10]}, {prov['date']}; {args.n_filters} filters, "
             f"{args.n_resnet} resnets, 1x28x28, softmax, context (256,), batch {args.batch} per model, eager fp32.", "",
             "| K | one by one (img/s) | grouped (img/s) | × |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['k']} | {r['sequential_images_per_s']:.1f} | {r['grouped_images_per_s']:.1f} | {r['speedup']:.2f} |"
              for r in rows]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
