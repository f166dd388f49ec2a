"""PixelCNN++ speed: training images/s and sampling images/s, each option against a naive baseline.

Configurations (Appendix A): "mnist" = 1x28x28, 64 filters, 3 resnets, 256-way softmax, FC3 context (256,);
"cifar" = 3x32x32, 196 filters, 3 resnets, 10-component logistic mixture, FC3 context (256,).

The naive baseline, measured in the same run: eager float32 (TF32 off on CUDA) for training, and one
full network pass per pixel for sampling. Every other row is a ratio against it. The exact samplers
("fixed_point", "cached") draw with the same noise; the cached sampler's row says how many of its images
are identical to the fixed point's (in float32 they may differ where a uniform falls on a CDF edge).
Each training row also counts what one step launches (CUDA: kernel and graph launches from the host; CPU:
leaf aten operators): at a few microseconds each, that count bounds a small model's step from below.

    python bench/pixelcnn_speed.py                       # CPU, both configs, reduced counts
    python bench/pixelcnn_speed.py --device cuda          # GPU, 1024 samples, torch.compile included
    python bench/pixelcnn_speed.py --checkpoint runs/short_mnist_nce/fc3/state.pt   # sample a trained model

Writes bench/results/pixelcnn_speed-<device>.json and .md (device, torch, commit, date) and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))  # runnable without installing

from inversion.models.pixelcnn import PixelCNNpp  # noqa: E402
from inversion.models.sampling import CachedGraph, draw  # noqa: E402
from inversion.provenance import provenance  # noqa: E402
from inversion.training import load_checkpoint, load_weights  # noqa: E402

CONFIGS = {
    "mnist": dict(image_shape=(1, 28, 28), context_shape=(256,), n_filters=64, n_resnet=3, likelihood="softmax"),
    "cifar": dict(image_shape=(3, 32, 32), context_shape=(256,), n_filters=196, n_resnet=3,
                  likelihood="logistic_mixture", n_mixtures=10),
}


SAMPLERS = {"naive": "naive, one pass per pixel (baseline)", "fixed_point": "fixed point (exact)",
            "cached": "cached, each activation once (exact)",
            "cached_graphs": "cached, replayed as CUDA graphs (exact)"}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def cuda_backends(tf32=False, cudnn_benchmark=False):
    """TF32 matmuls/convolutions and cuDNN's algorithm timing, on or off for a block (no-ops without CUDA)."""
    if not torch.cuda.is_available():
        yield
        return
    flags = (torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32"), \
        (torch.backends.cudnn, "benchmark")
    old = [getattr(obj, name) for obj, name in flags]
    for (obj, name), value in zip(flags, (tf32, tf32, cudnn_benchmark)):
        setattr(obj, name, value)
    try:
        yield
    finally:
        for (obj, name), value in zip(flags, old):
            setattr(obj, name, value)


def make_model(cfg, device, checkpoint=None):
    torch.manual_seed(0)
    model = PixelCNNpp(**cfg).to(device)
    if checkpoint:
        load_weights(model, checkpoint)
    else:
        x, h = fake_batch(cfg, 64, device)
        model.data_init(x, h)
    return model


def stage_model(model_dir, n, device):
    """A trained inversion model from the stage cache (a cache/<set>/inversion-<key> folder) and the real
    contexts it was trained for: the layer's activations of the first ``n`` test images, computed with the
    classifier the stage consumed. Returns (model config, model, contexts)."""
    from inversion import data
    from inversion.models.classifier import compute_features, load_classifier
    from inversion.pipeline.cache import Result
    from inversion.pipeline.common import load_inversion

    d = Path(model_dir)
    info = json.loads((d / "result.json").read_text())
    if info.get("stage") != "inversion":
        raise SystemExit(f"{d} is not an inversion stage result (its result.json says stage={info.get('stage')!r})")
    model = load_inversion(Result(d)).to(device)
    clf_dir = d.parent / info["deps"]["classifier"]
    clf = load_classifier(clf_dir, "model.pt", device=device).eval()
    dataset = json.loads((clf_dir / "result.json").read_text())["config"]["dataset"]
    x, _ = data.load(dataset, "test")
    h = compute_features(clf, x[:n], info["config"]["layer"], device=device).to(device)
    return model.config, model, h


def fake_batch(cfg, n, device):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n, *cfg["image_shape"]), generator=g, dtype=torch.uint8).to(device)
    h = torch.randn(n, *cfg["context_shape"], generator=g).relu().to(device)
    return x, h


def train_step_flops(model, x, h):
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        loss = -model.log_prob(x, h).mean()
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def launches_per_step(step, device):
    """What one training step costs in launches: on CUDA the host's kernel and graph launch calls (a small
    model is launch-bound when this times a few microseconds approaches its step time); on a CPU the
    leaf aten operators it runs (each a dispatch of similar fixed cost)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        sync(device)
    events = prof.events()
    if device.type == "cuda":
        return sum(1 for e in events if e.name.startswith(("cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch")))
    aten = [e for e in events if e.name.startswith("aten::")]
    return sum(1 for e in aten if not any(c.name.startswith("aten::") for c in e.cpu_children))


def time_training(cfg, device, batch, steps, warmup, bf16=False, channels_last=False, compile=False, tf32_on=False,
                  compile_mode=None, fused_adam=False, cudnn_benchmark=False, cuda_graph=False):
    """Training images/s. ``cuda_graph`` records one whole step (forward, backward, Adam) as a CUDA graph
    and replays it: the inputs are checked once beforehand, since a check that reads a value back to the
    host cannot be recorded."""
    model = make_model(cfg, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    adam = dict(fused=True) if fused_adam else {}
    if cuda_graph:
        adam["capturable"] = True
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, **adam)
    x, h = fake_batch(cfg, batch, device)
    if cuda_graph:
        model.log_prob(x[:1], h[:1])  # the checks, once
        loss_fn = lambda m: -m.sub_pixel_log_prob(x, h).sum(dim=(1, 2, 3)).mean()  # noqa: E731
    else:
        loss_fn = lambda m: -m.log_prob(x, h).mean()  # noqa: E731
    if compile:
        loss_fn = torch.compile(loss_fn, mode=compile_mode)
    with cuda_backends(tf32_on, cudnn_benchmark):
        flops = train_step_flops(model, x, h)

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=not cuda_graph):
                loss = loss_fn(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        t0 = time.perf_counter()
        if cuda_graph:
            # Warm up on a side stream (Adam's state and cuDNN's workspaces exist before recording), then
            # record one step; its zero_grad leaves the gradients unset, so the recorded backward writes them.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            step = graph.replay
        else:
            for _ in range(warmup):
                step()
        sync(device)
        warm_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        dt = (time.perf_counter() - t0) / steps
        launches = launches_per_step(step, device)
    return dict(images_per_s=batch / dt, step_ms=dt * 1e3, tflops=flops / dt / 1e12, warmup_s=warm_s,
                launches_per_step=launches)


def time_log_prob(cfg, device, batch, steps, bf16=False):
    """Evaluation throughput: log p(x | h) of test images, no gradients (what the NCE costs)."""
    model = make_model(cfg, device).eval()
    x, h = fake_batch(cfg, batch, device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        model.log_prob(x, h)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            model.log_prob(x, h)
        sync(device)
    dt = (time.perf_counter() - t0) / steps
    return dict(images_per_s=batch / dt, step_ms=dt * 1e3, batch=batch)


def time_sampling(cfg, device, n, method, checkpoint=None, contexts=None, naive_pixels=None, tf32_on=False,
                  model_dir=None):
    """Images/s drawing n conditional samples. The naive sampler's cost per pixel is constant (a full
    pass), so on slow devices it is timed over ``naive_pixels`` pixels and scaled to the whole image."""
    if model_dir is not None:
        cfg, model, h = stage_model(model_dir, n, device)
        model.eval()
    else:
        model = make_model(cfg, device, checkpoint).eval()
        _, h = fake_batch(cfg, n, device)
    if contexts is not None:  # real layer activations: how fast the fixed point converges depends on them
        h = load_checkpoint(contexts, map_location=device)[:n]
    n = len(h)
    noise = model.draw_noise(n, torch.Generator().manual_seed(2))
    C, H, W = cfg["image_shape"]
    with cuda_backends(tf32_on), torch.no_grad():
        if method == "naive":
            pixels = H * W if naive_pixels is None else min(naive_pixels, H * W)
            x = torch.zeros(n, C, H, W, dtype=torch.long, device=device)
            model.forward(model.scale(x), h)  # warm-up
            sync(device)
            t0 = time.perf_counter()
            for i in range(pixels):
                r, c = divmod(i, W)
                out = model.forward(model.scale(x), h)
                x[:, :, r, c] = model.draw_from_output(out[:, :, r : r + 1, c : c + 1],
                                                       noise[:, :, r : r + 1, c : c + 1])[:, :, 0, 0]
            sync(device)
            dt = (time.perf_counter() - t0) * (H * W) / pixels
            return dict(images_per_s=n / dt, n=n, seconds=dt, passes=H * W, extrapolated_from_pixels=pixels), None
        if method == "cached_graphs":  # recorded once for this batch size (timed apart), then replayed
            from cuda_graph_sampler import record  # bench/, beside this file

            graph = CachedGraph(model)
            t0 = time.perf_counter()
            recording = record(graph, h, noise)
            recording.replay(h, noise)
            sync(device)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            images = recording.replay(h, noise).clone()
            sync(device)
            dt = time.perf_counter() - t0
            return dict(images_per_s=n / dt, n=n, seconds=dt, passes=None, recording_s=first), images.cpu()
        draw(model, h[:2], noise=noise[:2], method=method)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        drawn = draw(model, h, noise=noise, method=method)
        sync(device)
        dt = time.perf_counter() - t0
        # network passes: the fixed point's count; None for the cached sampler (each activation once)
        return dict(images_per_s=n / dt, n=n, seconds=dt, passes=drawn.network_passes), drawn.images.cpu()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--configs", default="mnist,cifar")
    ap.add_argument("--batch", type=int, default=None, help="training batch (default: 64 cuda, 16 cpu)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--samples", type=int, default=None, help="images to sample (default: 1024 cuda, 16 cpu)")
    ap.add_argument("--naive-pixels", type=int, default=None, help="time the naive sampler over this many pixels")
    ap.add_argument("--compile", action="store_true", help="include torch.compile (default on for cuda)")
    ap.add_argument("--checkpoint", default=None, help="a trained mnist model to sample from (state.pt/best.pt)")
    ap.add_argument("--contexts", default=None, help="a tensor file of real contexts for --checkpoint")
    ap.add_argument("--model-dir", default=None,
                    help="sample a trained inversion model of the stage cache (cache/<set>/inversion-<key>) with its "
                         "layer's real test activations, in place of the mnist config")
    ap.add_argument("--tag", default=None, help="suffix of the result files (pixelcnn_speed-<device>-<tag>.*)")
    ap.add_argument("--samplers", default=None,
                    help="which samplers to time, of naive (the baseline; without it no ratio is given), fixed_point, "
                         "cached, cached_graphs (default: all; cached_graphs only on cuda)")
    ap.add_argument("--autotune", action="store_true", help="include torch.compile(mode='max-autotune') (slow to compile)")
    ap.add_argument("--variants", default=None,
                    help="time only the training variants whose label contains one of these comma-separated words, "
                         "and none of those given with a leading '-' (the baseline always runs); e.g. "
                         "'--variants=-compile' then '--variants compile' to split a run over two 10-minute calls")
    ap.add_argument("--skip-sampling", action="store_true")
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch or (64 if cuda else 16)
    steps = args.steps or (30 if cuda else 3)
    n_samples = args.samples or (1024 if cuda else 16)
    naive_pixels = args.naive_pixels if args.naive_pixels is not None else (None if cuda else 28)
    do_compile = args.compile or cuda

    rows = []
    for name in args.configs.split(","):
        cfg = CONFIGS[name]
        variants = [("eager fp32 (baseline)", dict())]
        if cuda:
            graph = dict(cuda_graph=True, fused_adam=True)
            variants += [("eager TF32", dict(tf32_on=True)),
                         ("eager fp32 + cudnn.benchmark", dict(cudnn_benchmark=True)),
                         ("fp32, whole step as one CUDA graph + fused Adam", graph),
                         ("bf16, whole step as one CUDA graph + fused Adam", dict(graph, bf16=True))]
        variants += [("bf16 autocast", dict(bf16=True)), ("bf16 + channels_last", dict(bf16=True, channels_last=True))]
        if do_compile:
            variants += [("fp32 + torch.compile", dict(compile=True)),
                         ("bf16 + torch.compile", dict(bf16=True, compile=True)),
                         ("bf16 + channels_last + torch.compile", dict(bf16=True, channels_last=True, compile=True)),
                         ("bf16 + torch.compile + fused Adam", dict(bf16=True, compile=True, fused_adam=True))]
            if cuda:  # CUDA graphs for forward and backward: launch overhead is what limits this small model
                variants.append(("bf16 + compile(reduce-overhead) + fused Adam",
                                 dict(bf16=True, compile=True, compile_mode="reduce-overhead", fused_adam=True)))
            if args.autotune:
                variants.append(("bf16 + compile(max-autotune) + fused Adam",
                                 dict(bf16=True, compile=True, compile_mode="max-autotune", fused_adam=True)))
        if args.variants:
            words = [w.strip() for w in args.variants.split(",") if w.strip()]
            keep, drop = [w for w in words if not w.startswith("-")], [w[1:] for w in words if w.startswith("-")]
            variants = variants[:1] + [v for v in variants[1:] if (not keep or any(w in v[0] for w in keep))
                                       and not any(w in v[0] for w in drop)]
        base = None
        for label, kw in ([] if args.skip_training else variants):
            try:
                r = time_training(cfg, device, batch, steps, warmup=3 if not kw.get("compile") else 5, **kw)
            except Exception as e:  # an option failing on this device is a result too
                rows.append(dict(config=name, task="train", variant=label, error=f"{type(e).__name__}: {e}"[:300]))
                print(rows[-1], flush=True)
                continue
            base = base or r["images_per_s"]
            rows.append(dict(config=name, task="train", variant=label, batch=batch, **r,
                             speedup=r["images_per_s"] / base))
            print(rows[-1], flush=True)
        base = None
        for label, kw in ([] if args.skip_training else [("eager fp32 (baseline)", {}), ("bf16 autocast", dict(bf16=True))]):
            r = time_log_prob(cfg, device, 4 * batch, steps, **kw)
            base = base or r["images_per_s"]
            rows.append(dict(config=name, task="log_prob", variant=label, **r, speedup=r["images_per_s"] / base))
            print(rows[-1], flush=True)
        if args.skip_sampling:
            continue
        ckpt = args.checkpoint if name == "mnist" else None
        ctx = args.contexts if name == "mnist" else None
        base, drawn = None, {}
        samplers = args.samplers or "naive,fixed_point,cached" + (",cached_graphs" if cuda else "")
        for method in samplers.split(","):
            mdir = args.model_dir if name == "mnist" else None
            try:
                r, drawn[method] = time_sampling(cfg, device, n_samples, method, ckpt, ctx, naive_pixels,
                                                 model_dir=mdir)
            except Exception as e:  # an option failing on this device is a result too
                rows.append(dict(config=name, task="sample", variant=SAMPLERS[method],
                                 error=f"{type(e).__name__}: {e}"[:300]))
                print(rows[-1], flush=True)
                continue
            if method == "naive":
                base = r["images_per_s"]
            if method.startswith("cached") and drawn.get("fixed_point") is not None:
                r["identical_to_fixed_point"] = int((drawn[method] == drawn["fixed_point"]).flatten(1).all(1).sum())
            rows.append(dict(config=name if not mdir else f"{name}: {Path(mdir).name}", task="sample",
                             variant=SAMPLERS[method], trained=bool(ckpt or mdir), **r,
                             speedup=r["images_per_s"] / base if base else None))
            print(rows[-1], flush=True)

    prov = provenance(device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / (f"pixelcnn_speed-{device.type}" + (f"-{args.tag}" if args.tag else ""))
    stem.with_suffix(".json").write_text(json.dumps(dict(provenance=prov, args=vars(args), rows=rows), indent=1))
    lines = [f"# PixelCNN++ speed on {prov['device']}", "",
             f"torch {prov['torch']}, commit {prov['commit'][:10]}{' (dirty)' if prov['dirty'] else ''}, {prov['date']}.",
             f"Command: `python bench/pixelcnn_speed.py {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
             "| config | task | variant | images/s | × baseline | detail |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['task']} | {r['variant']} | – | – | failed: {r['error'][:80]} |")
            continue
        if r["task"] == "train":
            detail = (f"batch {r['batch']}, {r['step_ms']:.1f} ms/step, {r['tflops']:.2f} TFLOP/s, "
                      f"{r['launches_per_step']} {'launches' if device.type == 'cuda' else 'aten ops'}/step")
        elif r["task"] == "log_prob":
            detail = f"batch {r['batch']}, {r['step_ms']:.1f} ms/batch, no gradients"
        else:
            detail = f"{r['n']} images{' (trained model)' if r['trained'] else ' (untrained model)'}"
            if r["passes"] is not None:
                detail += f", {r['passes']} passes"
            if r.get("extrapolated_from_pixels", r["passes"]) != r["passes"]:
                detail += f" (timed over {r['extrapolated_from_pixels']} pixels, scaled)"
            if "recording_s" in r:
                detail += f", recorded once in {r['recording_s']:.1f} s (not counted)"
            if "identical_to_fixed_point" in r:
                detail += f", {r['identical_to_fixed_point']} of {r['n']} images identical to the fixed point's"
        speedup = "–" if r["speedup"] is None else f"{r['speedup']:.2f}"
        lines.append(f"| {r['config']} | {r['task']} | {r['variant']} | {r['images_per_s']:.3g} | {speedup} | {detail} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
