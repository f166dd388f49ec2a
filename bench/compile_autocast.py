"""Does an execution option change what a warm-started PixelCNN++ learns? The same §5.2 warm start trained a few
updates eagerly and through ``torch.compile``, in fp32 and under bf16 autocast, on each device asked for.

    python bench/compile_autocast.py --device cuda [--steps 5 40] [--tag=-torch2.12]   # about 3 min on a GPU
    python bench/compile_autocast.py --device cpu                                       # the CPU's own check

Why: on an NVIDIA H200 with torch 2.11 the quick set's §5.2 FC model, compiled under bf16 autocast, trained with
finite losses of 1e6-1e8 nats per image where CPU runs of the same stage start near 1e3, and no check caught it
(``inversion.training.check_compile`` now refuses that combination on CUDA). This bench is the measurement that
guard rests on, and the one to rerun on a newer torch before lifting it: it lifts the guard for its own runs.

Each run: the quick set's 6000-step unconditional p(x) of affNIST (its checkpoint is committed), a conditional
model started from it (``PixelCNNpp.start_from``: exactly p(x) at step 0), contexts relu(2 N(0, 1)) of FC3's
size (256) for 4096 training and 64 test images, the quick set's §5.2 training settings (16 filters, batch 32,
lr 1e-3), trained through ``train_pixelcnn``; the mean test NLL (nats per image, eager fp32 evaluation) after
each number of ``--steps``. A sound execution stays within a few nats of eager fp32 at 5 updates and stays near
p(x)'s NLL (the random contexts carry nothing to learn); ``diverged`` marks a run whose last NLL is over twice
its start. Writes bench/results/compile_autocast-<device><tag>.{json,md}, atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
from inversion import pipeline  # noqa: E402
from inversion.atomic import atomic_write_text  # noqa: E402
from inversion.bounds import per_image_log_prob  # noqa: E402
from inversion.models.pixelcnn import PixelCNNConfig, PixelCNNpp, train_pixelcnn  # noqa: E402
from inversion.pipeline.cache import iter_refs  # noqa: E402
from inversion.pipeline.common import load_inversion, load_split  # noqa: E402
from inversion.pipeline.plans import plan  # noqa: E402
from inversion.provenance import provenance  # noqa: E402

N_TRAIN, N_TEST, CONTEXT = 4096, 64, 256


def start_model(params: str, warm_start_steps: int):
    """The set's §5.2 unconditional stage at ``warm_start_steps`` (its checkpoint must be here: quick's
    6000-step p(x) is committed)."""
    P = pipeline.load_params(params, {"architectures": {"inversion": {"warm_start_steps": warm_start_steps}}})
    refs = [r for r in iter_refs(plan(P, ["architectures"])) if r.stage.name == "unconditional"]
    cache = pipeline.Cache(P, compute=False)
    return P, cache.result(refs[0], ("model.pt",))


def bench_parser(doc: str, default_steps: list[int]) -> argparse.ArgumentParser:
    """The options of the benches that train the §5.2 warm start a few updates (this one, cuda_graph_training)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--params", default="quick")
    ap.add_argument("--steps", type=int, nargs="+", default=default_steps)
    ap.add_argument("--warm-start-steps", type=int, default=6000, help="which p(x) of the set to start from")
    ap.add_argument("--tag", default="")
    return ap


def setup(ap: argparse.ArgumentParser, argv=None):
    """Parse and check ``bench_parser``'s options; (options, the p(x) stage, the set's §5.2 inversion settings,
    the random-context data)."""
    a = ap.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no GPU here; use --device cpu")
    if a.steps != sorted(set(a.steps)) or a.steps[0] < 1:
        ap.error(f"--steps must increase and be >= 1, got {a.steps}")
    P, start_res = start_model(a.params, a.warm_start_steps)
    inv = dataclasses.asdict(P.section("architectures").inversion)
    return a, start_res, inv, random_context_data(start_res)


def warm_started(start_res, inv: dict, device: str, image_shape):
    """(the p(x) model, the architecture settings, a conditional model started from it: exactly p(x) at step 0)."""
    torch.manual_seed(0)
    start = load_inversion(start_res, device)
    arch = {k: inv[k] for k in PixelCNNConfig.ARCHITECTURE if k in inv}
    model = PixelCNNpp.from_config(tuple(image_shape), (CONTEXT,), PixelCNNConfig(**arch)).start_from(start)
    return start, arch, model


def segment_config(arch: dict, inv: dict, steps: int, bf16: bool) -> PixelCNNConfig:
    """The set's §5.2 training settings, run to ``steps`` updates in all (a resumed work folder continues)."""
    return PixelCNNConfig(**arch, steps=steps, batch_size=inv["batch_size"], lr=inv["lr"], lr_decay=inv["lr_decay"],
                          bf16=bf16, eval_every=0)


def random_context_data(start_res):
    """(train images, their contexts, test images, theirs): the start's dataset, contexts relu(2 N(0, 1)) of
    FC3's size drawn from seed 0."""
    g = torch.Generator().manual_seed(0)
    x_tr = load_split(start_res.config["dataset"], "train")[0][:N_TRAIN]
    x_te = load_split(start_res.config["dataset"], "test")[0][:N_TEST]
    return (x_tr, torch.relu(torch.randn(N_TRAIN, CONTEXT, generator=g) * 2), x_te,
            torch.relu(torch.randn(N_TEST, CONTEXT, generator=g) * 2))


def run(start_res, inv: dict, device: str, bf16: bool, compile: bool, steps: list[int], data) -> dict:
    x_tr, h_tr, x_te, h_te = data
    start, arch, model = warm_started(start_res, inv, device, x_te.shape[1:])
    nll = lambda m, h: -per_image_log_prob(m, x_te, h, batch_size=N_TEST, device=device, progress=False).mean().item()  # noqa: E731
    row = dict(device=device, bf16=bf16, compile=compile, start_nll=nll(start, None), nll={})
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as work, mock.patch("inversion.training.check_compile"):
        row["nll"][0] = nll(model, h_te)
        for s in steps:
            train_pixelcnn(model, x_tr, h_tr, work, segment_config(arch, inv, s, bf16), device=device, progress=False, data_init=False,
                           compile=compile)  # resumes the same work folder: steps are cumulative
            row["nll"][s] = nll(model, h_te)
    row["seconds"] = time.perf_counter() - t0
    row["diverged"] = row["nll"][steps[-1]] > 2 * row["nll"][0]
    return row


def main(argv=None) -> int:
    a, start_res, inv, data = setup(bench_parser(__doc__, [5, 40]), argv)
    modes = [(a.device, b, c) for b in (False, True) for c in (False, True)]
    if a.device == "cuda":
        modes.append(("cpu", False, False))  # the CPU reference on the same machine
    rows = []
    for device, bf16, compile in modes:
        rows.append(run(start_res, inv, device, bf16, compile, a.steps, data))
        r = rows[-1]
        print(f"{device} bf16={bf16} compile={compile}: " + " | ".join(f"step {s}: {v:.1f}" for s, v in r["nll"].items())
              + f" ({r['seconds']:.0f} s){' DIVERGED' if r['diverged'] else ''}", flush=True)
    result = dict(params=a.params, start=start_res.dir.name, steps=a.steps, n_train=N_TRAIN, n_test=N_TEST,
                  rows=rows, provenance=provenance(a.device))
    stem = REPO / "bench" / "results" / f"compile_autocast-{a.device}{a.tag}"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
    p = result["provenance"]
    md = (f"# Execution options and a warm-started PixelCNN++ ({p['device']}, torch {p['torch']})\n\n"
          f"`python bench/compile_autocast.py --device {a.device} --steps {' '.join(map(str, a.steps))}"
          f"{' --tag=' + a.tag if a.tag else ''}` at {p['commit'][:7]}{' (dirty)' if p['dirty'] else ''}, "
          f"{p['date'][:10]}. Start: `{start_res.dir.name}` (p(x) NLL {rows[0]['start_nll']:.1f} nats per "
          f"image on {N_TEST} test images); random contexts, {N_TRAIN} training images.\n\n"
          "| device | bf16 | compiled | " + " | ".join(f"NLL after {s}" for s in [0, *a.steps]) + " | seconds | diverged |\n"
          "| --- | --- | --- | " + " | ".join("---:" for _ in [0, *a.steps]) + " | ---: | --- |\n"
          + "".join(f"| {r['device']} | {r['bf16']} | {r['compile']} | "
                    + " | ".join(f"{v:.1f}" for v in r["nll"].values())
                    + f" | {r['seconds']:.0f} | {'**yes**' if r['diverged'] else 'no'} |\n" for r in rows))
    atomic_write_text(stem.with_suffix(".md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
