"""What one PixelCNN++ training step costs inside a Dask worker process, against a plain process.

Session 26 found the pipeline's steps (``pipeline run --workers 2 --threads 1``) about twice as slow as
``bench/train_step_cpu.py``'s. The cause is the environment Dask's nanny gives every worker it spawns
(``distributed.nanny.pre-spawn-environ``): ``MALLOC_TRIM_THRESHOLD_=65536`` makes glibc return freed memory
to the OS at once, and PyTorch's CPU ops allocate and free large buffers every step. This bench times the
quick set's §5.1 model (16 filters, 1 resnet, 1x28x28 softmax, FC3-sized context, batch 32, fp32, eager)
with one torch thread, rounds interleaved so that load on the machine falls on every variant alike, in:

- this process (no Dask);
- a worker of a local cluster with Dask's default nanny environment;
- a worker of the engine's local cluster (``inversion.pipeline.engine.connect``: the same, less
  ``MALLOC_TRIM_THRESHOLD_``).

    python bench/dask_worker_step.py [--steps 10] [--rounds 3] [--out bench/results/dask_worker_step]

Writes <out>.{json,md} (device, torch, commit, date) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))


def step_ms(steps: int, warmup: int = 3) -> dict:
    """Median ms of ``steps`` training steps of the §5.1 model in the calling process, one torch thread."""
    import torch

    sys.path.insert(0, str(REPO / "lib"))
    from inversion.models.pixelcnn import PixelCNNpp

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = PixelCNNpp(image_shape=(1, 28, 28), context_shape=(256,), n_filters=16, n_resnet=1,
                       likelihood="softmax", dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8)
    h = torch.randn(32, 256)
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        (-model.log_prob(x, h).mean()).backward()
        opt.step()
        if i >= warmup:
            times.append((time.perf_counter() - t) * 1e3)
    return dict(ms=statistics.median(times), malloc_trim=os.environ.get("MALLOC_TRIM_THRESHOLD_"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round and variant")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, variants interleaved in each")
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/dask_worker_step")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.rounds < 1:
        ap.error(f"--steps and --rounds must be >= 1, got {args.steps} and {args.rounds}")

    import dask
    from distributed import Client, LocalCluster

    from inversion.atomic import atomic_write_text
    from inversion.pipeline import engine
    from inversion.provenance import provenance

    at_start = os.environ.get("MALLOC_TRIM_THRESHOLD_")  # what this process's malloc was set up with
    default_env = dask.config.get("distributed.nanny.pre-spawn-environ")
    with dask.config.set({"distributed.nanny.pre-spawn-environ": default_env}):
        plain = Client(LocalCluster(n_workers=1, threads_per_worker=1, processes=True, memory_limit=0,
                                    dashboard_address=None))
    fixed = engine.connect(None, "cpu", workers=1, threads=1)
    variants = {"this process (no Dask)": lambda: dict(step_ms(args.steps), malloc_trim=at_start),
                "Dask worker, nanny's default environment": lambda: plain.submit(step_ms, args.steps, pure=False).result(),
                "Dask worker of engine.connect": lambda: fixed.submit(step_ms, args.steps, pure=False).result()}
    rows = {name: [] for name in variants}
    try:
        for r in range(args.rounds):
            for name, run in variants.items():
                got = run()
                rows[name].append(got)
                print(f"round {r}: {name}: {got['ms']:.0f} ms/step (MALLOC_TRIM_THRESHOLD_={got['malloc_trim']})",
                      flush=True)
    finally:
        for c in (plain, fixed):
            c.close()
            c.cluster.close()
    base = statistics.median(g["ms"] for g in rows["this process (no Dask)"])
    table = [dict(variant=name, ms=statistics.median(g["ms"] for g in got), malloc_trim=got[0]["malloc_trim"],
                  rounds=[g["ms"] for g in got]) for name, got in rows.items()]
    for t in table:
        t["x_plain"] = t["ms"] / base
    cmd = "python bench/dask_worker_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    prov = provenance()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(dict(
        command=cmd.strip(), provenance=prov, steps=args.steps, rounds=args.rounds, table=table), indent=1, default=str))
    md = ["# A PixelCNN++ training step inside a Dask worker (1 thread, fp32, eager)", "",
          f"`{cmd.strip()}`, commit {prov.get('commit', '?')[:7]}{' (dirty)' if prov.get('dirty') else ''}, "
          f"{prov.get('date', '')}, {prov.get('device', '')}, torch {prov.get('torch', '')}", "",
          "The quick set's §5.1 model (16 filters, 1 resnet, 1x28x28 softmax, FC3-sized context, batch 32): median "
          f"ms per step over {args.steps} steps, the median over {args.rounds} interleaved rounds.", "",
          "| where | MALLOC_TRIM_THRESHOLD_ | ms/step | × this process |", "| --- | --- | ---: | ---: |"]
    md += [f"| {t['variant']} | {t['malloc_trim'] or 'unset'} | {t['ms']:.0f} | {t['x_plain']:.2f} |" for t in table]
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
