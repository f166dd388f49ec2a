"""What one PixelCNN++ training step costs on this CPU, per change, and whether a change moves bits/dim.

Issue 14's profile (80 filters, 3 resnets, 3x32x32, batch 8, dropout 0.5, 2 threads): element-wise dropout
masks (``aten::bernoulli_``) took 18 % of the step and fp32 was 1.6x slower than bf16 autocast. This bench
times whole training steps (forward, backward, Adam), interleaved so that load on the machine falls on
every variant alike, for:

- ``nn.Dropout`` (the masks from ``bernoulli_``) against ``inversion.models.pixelcnn.Dropout`` (the same
  distribution, masks drawn as float32 uniforms compared with p), each in fp32 and under bf16 autocast;
- bf16 + channels_last, and with ``--compile`` bf16 + torch.compile (rows to read, not adopted: see the
  results' README).

Then it trains the quick set's MNIST model shape (16 filters, 1 resnet, softmax; dropout 0.5 so the masks
matter) on real MNIST for ``--steps`` updates per variant and seed, through the library's
``train_pixelcnn``, and reports the test bits/dim on ``--n-test`` images: a change of recipe is harmless if
its bits/dim differ from the baseline's by no more than seeds differ from each other. Which variants train:
the baseline and the adopted recipes, or with ``--quality compile`` bf16 eager against bf16 + torch.compile
(``TrainConfig.compile``, for long stages; its dropout masks come from inductor's generator).

    python bench/train_step_cpu.py [--time-steps 8] [--steps 300] [--seeds 0 1] [--n-test 1000]
    python bench/train_step_cpu.py --shapes quick-layers quick-small --compile --steps 0 --out .../train_step_cpu-quick
    python bench/train_step_cpu.py --shapes quick-affnist --compile --quality compile --out .../train_step_cpu-compile

Writes bench/results/train_step_cpu.{json,md} (device, torch, commit, date) and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
from inversion.data import load  # noqa: E402
from inversion.models.pixelcnn import Dropout, PixelCNNConfig, PixelCNNpp, train_pixelcnn  # noqa: E402
from inversion.provenance import provenance  # noqa: E402

# Model shapes (model keywords, batch): issue 14's profile, a CIFAR-like colour model conditioned on an FC3
# vector; and the quick set's inversion models (§5.1: 16 filters, batch 32; §5.3, and §5.2 until 2026-12-02:
# 8 filters, batch 16; §5.2 since then: 16 filters, batch 32 on affNIST's 40x40).
SHAPES = {
    "profile": (dict(image_shape=(3, 32, 32), context_shape=(256,), n_filters=80, n_resnet=3,
                     likelihood="logistic_mixture", n_mixtures=10, dropout=0.5), 8),
    "quick-layers": (dict(image_shape=(1, 28, 28), context_shape=(256,), n_filters=16, n_resnet=1,
                          likelihood="softmax", dropout=0.0), 32),
    "quick-small": (dict(image_shape=(1, 28, 28), context_shape=(256,), n_filters=8, n_resnet=1,
                         likelihood="softmax", dropout=0.0), 16),
    "quick-affnist": (dict(image_shape=(1, 40, 40), context_shape=(256,), n_filters=16, n_resnet=1,
                           likelihood="softmax", dropout=0.0), 32),
}
# (name, masks from nn.Dropout's bernoulli_?, bf16 autocast?, channels_last?, torch.compile?)
VARIANTS = [("fp32, nn.Dropout (baseline)", True, False, False, False),
            ("fp32, uniform-mask Dropout", False, False, False, False),
            ("bf16, nn.Dropout", True, True, False, False),
            ("bf16, uniform-mask Dropout", False, True, False, False),
            ("bf16 + channels_last, uniform-mask Dropout", False, True, True, False)]
COMPILED = ("bf16 + torch.compile, uniform-mask Dropout", False, True, False, True)


def with_bernoulli_masks(model: nn.Module) -> nn.Module:
    """The model with every dropout drawn by ``nn.Dropout`` (``bernoulli_``), as before this change."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Dropout):
                setattr(module, name, nn.Dropout(child.p))
    return model


def time_steps(shape: str, variants: list, steps: int, warmup: int) -> list[dict]:
    """ms per training step of each variant, round-robin over the variants so a slow minute hits them all;
    a compiled variant's warm-up (its compile time) is reported beside it."""
    cfg, batch = SHAPES[shape]
    torch.manual_seed(0)
    x = torch.randint(0, 256, (batch, *cfg["image_shape"]), dtype=torch.uint8)
    h = torch.randn(batch, *cfg["context_shape"])
    runs = []
    for name, bernoulli, bf16, channels_last, compiled in variants:
        torch.manual_seed(0)
        model = PixelCNNpp(**cfg)
        model.data_init(x, h)
        if bernoulli:
            with_bernoulli_masks(model)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        loss_of = lambda model: -model.sub_pixel_log_prob(x, h).sum(dim=(1, 2, 3)).mean()  # noqa: E731
        if compiled:
            loss_of = torch.compile(loss_of)

        def step(model=model, opt=opt, bf16=bf16, loss_of=loss_of):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = loss_of(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        t0 = time.perf_counter()
        for _ in range(warmup):
            step()
        runs.append(dict(name=name, step=step, times=[], warmup_s=time.perf_counter() - t0))
    for _ in range(steps):
        for run in runs:
            t0 = time.perf_counter()
            run["step"]()
            run["times"].append(time.perf_counter() - t0)
    base = sorted(runs[0]["times"])[len(runs[0]["times"]) // 2]
    rows = []
    for run in runs:
        median = sorted(run["times"])[len(run["times"]) // 2]
        rows.append(dict(shape=shape, batch=batch, variant=run["name"], step_ms=1e3 * median, speedup=base / median,
                         n=len(run["times"]), warmup_s=run["warmup_s"]))
    return rows


def train_bits_per_dim(variant: tuple, seed: int, steps: int, n_test: int, train, test) -> dict:
    name, bernoulli, bf16, channels_last, compiled = variant
    config = PixelCNNConfig(n_filters=16, n_resnet=1, n_resolutions=3, likelihood="softmax", dropout=0.5,
                            steps=steps, batch_size=32, lr=1e-3, lr_decay=0.9999, bf16=bf16, eval_every=0,
                            seed=seed)
    torch.manual_seed(seed)
    model = PixelCNNpp.from_config((1, 28, 28), None, config)
    if bernoulli:
        with_bernoulli_masks(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        train_pixelcnn(model, train, None, workdir, config, progress=False, compile=compiled)
    train_s = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        nats = torch.cat([model.log_prob(test[i:i + 250]) for i in range(0, n_test, 250)]).double()
    bpd = -nats / (28 * 28 * math.log(2))
    return dict(variant=name, seed=seed, bits_per_dim=bpd.mean().item(),
                se=bpd.std().item() / math.sqrt(len(bpd)), train_s=train_s)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time-steps", type=int, default=8, help="timed steps per variant (after 2 warm-up steps)")
    ap.add_argument("--steps", type=int, default=300, help="training steps per bits/dim run (0: skip that part)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", nargs="+", default=["profile"], choices=list(SHAPES), help="model shapes to time")
    ap.add_argument("--compile", action="store_true", help="also time bf16 + torch.compile (inductor's C++ backend; "
                    "its compile time is reported as the warm-up)")
    ap.add_argument("--quality", choices=("adopted", "compile"), default="adopted",
                    help="which variants train for bits/dim: the baseline and the adopted recipes (fp32 and bf16 "
                         "with uniform-mask Dropout), or bf16 eager against bf16 + torch.compile")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "train_step_cpu")
    args = ap.parse_args(argv)
    for name in ("time_steps", "n_test", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.steps < 0:
        ap.error(f"--steps must be >= 0, got {args.steps}")
    torch.set_num_threads(args.threads)

    print("timing training steps ...", flush=True)
    timing = []
    for shape in args.shapes:
        timing += time_steps(shape, VARIANTS + ([COMPILED] if args.compile else []), args.time_steps, warmup=2)
    for r in timing:
        print(f"  {r['shape']}, {r['variant']}: {r['step_ms']:.0f} ms/step ({r['speedup']:.2f}x; warm-up "
              f"{r['warmup_s']:.0f} s)", flush=True)
    quality = []
    if args.steps:
        train_x, _ = load("mnist", "train")
        test_x, _ = load("mnist", "test")
        test_x = test_x[:args.n_test]
        # the baseline and the two recipes adopted; with --quality compile, bf16 eager against bf16 compiled
        chosen = VARIANTS[:2] + VARIANTS[3:4] if args.quality == "adopted" else [VARIANTS[3], COMPILED]
        for variant in chosen:
            for seed in args.seeds:
                r = train_bits_per_dim(variant, seed, args.steps, args.n_test, train_x, test_x)
                quality.append(r)
                print(f"  {r['variant']}, seed {seed}: {r['bits_per_dim']:.4f} ± {r['se']:.4f} bits/dim "
                      f"({r['train_s']:.0f} s)", flush=True)

    cmd = "python bench/train_step_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    prov = provenance()
    result = dict(command=cmd.strip(), provenance=prov, shapes={k: SHAPES[k] for k in args.shapes},
                  threads=args.threads, timing=timing, quality=quality, steps=args.steps, n_test=args.n_test)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    tmp.replace(args.out.with_suffix(".json"))
    md = [f"# PixelCNN++ training step on CPU ({args.threads} threads)", "",
          f"`{cmd.strip()}`, commit {prov.get('commit', '?')[:7]}{' (dirty)' if prov.get('dirty') else ''}, "
          f"{prov.get('date', '')}, torch {torch.__version__}", "",
          "Step time (forward, backward, Adam), median over the timed steps, variants interleaved. Shapes: "
          "profile = 80 filters, 3 resnets, 3x32x32 logistic mixture, FC3 context, batch 8, dropout 0.5; "
          "quick-layers = 16 filters, 1 resnet, 1x28x28 softmax, batch 32, no dropout (quick §5.1); "
          "quick-small = 8 filters, batch 16 (quick §5.3; §5.2 until 2026-12-02); quick-affnist = 16 filters, "
          "1 resnet, 1x40x40 softmax, batch 32 (quick §5.2). "
          "The warm-up is 2 steps (a compile included).", "",
          "| shape | variant | ms/step | × baseline | warm-up s |", "| --- | --- | ---: | ---: | ---: |"]
    md += [f"| {r['shape']} | {r['variant']} | {r['step_ms']:.0f} | {r['speedup']:.2f} | {r['warmup_s']:.0f} |"
           for r in timing]
    if quality:
        md += ["", f"Test bits/dim after {args.steps} steps (MNIST, 16 filters, 1 resnet, softmax, dropout 0.5, "
               f"batch 32, lr 1e-3; {args.n_test} test images; ± the test-set s.e.):", "",
               "| variant | seed | bits/dim | training s |", "| --- | ---: | ---: | ---: |"]
        md += [f"| {r['variant']} | {r['seed']} | {r['bits_per_dim']:.4f} ± {r['se']:.4f} | {r['train_s']:.0f} |"
               for r in quality]
    tmp = args.out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(md) + "\n")
    tmp.replace(args.out.with_suffix(".md"))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
