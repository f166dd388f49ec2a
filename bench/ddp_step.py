"""Training step time of one PixelCNN++ on one process vs data-parallel over 2 processes (gloo on CPU,
nccl on GPUs), the same global batch.

    python bench/ddp_step.py [--device cpu] [--steps 30] [--filters 16 --resnets 1 --batch 16]

Variants, each training the same model from the same start for ``--steps`` steps after 3 warm-up steps
through ``inversion.training.fit``:
  1 process        torch's default threads (on CPU: all cores)
  2 processes      torch.distributed, 1 thread each on CPU (one GPU each on cuda), each half the batch
Writes bench/results/ddp_step-<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
from inversion import distributed  # noqa: E402
from inversion.models.pixelcnn import PixelCNNConfig, PixelCNNpp, train_pixelcnn  # noqa: E402
from inversion.provenance import provenance  # noqa: E402


def _train(args, workdir: str, device: str) -> float:
    """Seconds per step of ``args.steps`` steps (after 3 warm-up steps)."""
    g = torch.Generator().manual_seed(0)
    n = 512
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    contexts = torch.randn(n, 64, generator=g)
    cfg = PixelCNNConfig(n_filters=args.filters, n_resnet=args.resnets, n_resolutions=3, dropout=0.5,
                         steps=3, batch_size=args.batch, lr=1e-3)
    torch.manual_seed(0)
    model = PixelCNNpp.from_config((1, 28, 28), (64,), cfg)
    train_pixelcnn(model, images, contexts, workdir, cfg, device=device, progress=False)
    cfg = PixelCNNConfig(**{**cfg.__dict__, "steps": 3 + args.steps})
    t0 = time.perf_counter()
    train_pixelcnn(model, images, contexts, workdir, cfg, device=device, progress=False, checkpoint_every=10**9)
    return (time.perf_counter() - t0) / args.steps


def _rank(rank: int, world: int, port: int, args, workdir: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    if args.device == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    group = distributed.from_environment(args.device)
    with distributed.data_parallel(group):
        per_step = _train(args, workdir, str(group.device))
    if rank == 0:
        Path(out).write_text(json.dumps(per_step))
    torch.distributed.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--filters", type=int, default=16)
    ap.add_argument("--resnets", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        one = _train(args, f"{tmp}/one", args.device)
        rows.append(dict(variant="1 process", s_per_step=round(one, 4), threads=torch.get_num_threads()))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        out = f"{tmp}/ddp.json"
        mp.spawn(_rank, args=(2, port, args, f"{tmp}/ddp", out), nprocs=2, join=True)
        two = json.loads(Path(out).read_text())
        rows.append(dict(variant="2 processes (DDP)", s_per_step=round(two, 4),
                         threads=max(1, (os.cpu_count() or 1) // 2) if args.device == "cpu" else None))
    for r in rows:
        r["speedup"] = round(one / r["s_per_step"], 2)
    info = dict(script="bench/ddp_step.py", args=vars(args), rows=rows, provenance=provenance(args.device))
    out = REPO / "bench" / "results" / f"ddp_step-{args.device}"
    out.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    lines = [f"# One PixelCNN++ step: 1 process vs 2 data-parallel processes ({args.device})", "",
             f"`python bench/ddp_step.py --device {args.device} --steps {args.steps} --filters {args.filters} "
             f"--resnets {args.resnets} --batch {args.batch}` (global batch {args.batch}, 1x28x28, dropout 0.5), "
             f"commit {info['provenance']['commit'][:7]}, {info['provenance']['date']}, {info['provenance']['device']}",
             "", "| variant | s/step | torch threads per process | speed-up |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['variant']} | {r['s_per_step']} | {r['threads']} | {r['speedup']} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
