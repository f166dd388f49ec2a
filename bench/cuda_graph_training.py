"""What does replaying the training step as one CUDA graph buy the quick §5.2 models, and does it train the same
model? The same §5.2 warm start trained eagerly and with ``cuda_graph`` (``inversion.training.TrainConfig``).

    python bench/cuda_graph_training.py --device cuda [--steps 10 310] [--tag=...]   # about 2 min on a GPU
    python bench/cuda_graph_training.py --device cpu --steps 2 4                      # the script's own check

Why: on an NVIDIA H200 the quick set's 16-filter §5.2 models trained at 12.5 updates/s per process with the GPU
17-44 % busy (bench/results/compile_autocast-cuda.md): a step of this small network is bound by the host
launching its kernels one by one, not by the GPU. A recorded step is launched as one graph.

Each run: the quick set's 6000-step unconditional p(x) of affNIST (committed), a conditional model started from
it (``PixelCNNpp.start_from``), random contexts relu(2 N(0, 1)) of FC3's size (256) for 4096 training and 64
test images, the quick set's §5.2 training settings (16 filters, batch 32, lr 1e-3, its bf16), trained through
``train_pixelcnn``. ``--steps a b``: trained to a, then resumed to b; the updates/s are those of the second
segment alone (the first holds the eager warm-up steps and the recording; the resumed run records again, and
that is inside its time). Reported: the mean test NLL (nats per image, eager fp32 evaluation) after each, and
the largest difference from the eager run's. On a CPU only the eager rows run. Writes
bench/results/cuda_graph_training-<device><tag>.{json,md}, atomically.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
sys.path.insert(0, str(REPO / "bench"))
from compile_autocast import N_TEST, N_TRAIN, bench_parser, segment_config, setup, warm_started  # noqa: E402
from inversion.atomic import atomic_write_text  # noqa: E402
from inversion.bounds import per_image_log_prob  # noqa: E402
from inversion.models.pixelcnn import train_pixelcnn  # noqa: E402
from inversion.provenance import provenance  # noqa: E402


def run(start_res, inv: dict, device: str, bf16: bool, cuda_graph: bool, steps: list[int], data) -> dict:
    x_tr, h_tr, x_te, h_te = data
    _, arch, model = warm_started(start_res, inv, device, x_te.shape[1:])
    nll = lambda m: -per_image_log_prob(m, x_te, h_te, batch_size=N_TEST, device=device, progress=False).mean().item()  # noqa: E731
    row = dict(device=device, bf16=bf16, cuda_graph=cuda_graph, nll={0: nll(model)}, seconds={})
    with tempfile.TemporaryDirectory() as work:
        for s in steps:
            cfg = segment_config(arch, inv, s, bf16)
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            train_pixelcnn(model, x_tr, h_tr, work, cfg, device=device, progress=False, data_init=False,
                           cuda_graph=cuda_graph)  # resumes the same work folder: steps are cumulative
            if device == "cuda":
                torch.cuda.synchronize()
            row["seconds"][s] = time.perf_counter() - t0
            row["nll"][s] = nll(model)
    row["updates_per_s"] = (steps[-1] - steps[-2]) / row["seconds"][steps[-1]] if len(steps) > 1 else None
    return row


def main(argv=None) -> int:
    ap = bench_parser(__doc__, [10, 310])
    ap.add_argument("--fp32", action="store_true", help="also the fp32 rows (the set's models train in bf16)")
    a, start_res, inv, data = setup(ap, argv)
    precisions = [inv["bf16"]] + ([not inv["bf16"]] if a.fp32 else [])
    graphs = [False, True] if a.device == "cuda" else [False]
    rows = []
    for bf16 in precisions:
        for cuda_graph in graphs:
            r = run(start_res, inv, a.device, bf16, cuda_graph, a.steps, data)
            eager = next((e for e in rows if e["bf16"] == bf16 and not e["cuda_graph"]), None)
            r["max_nll_diff_from_eager"] = (max(abs(r["nll"][s] - eager["nll"][s]) for s in a.steps)
                                            if eager is not None else None)
            rows.append(r)
            print(f"{a.device} bf16={bf16} cuda_graph={cuda_graph}: "
                  + " | ".join(f"step {s}: {v:.2f}" for s, v in r["nll"].items())
                  + f" | {r['updates_per_s'] or float('nan'):.1f} updates/s", flush=True)
    result = dict(params=a.params, start=start_res.dir.name, steps=a.steps, n_train=N_TRAIN, n_test=N_TEST,
                  rows=rows, provenance=provenance(a.device))
    stem = REPO / "bench" / "results" / f"cuda_graph_training-{a.device}{a.tag}"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
    p = result["provenance"]
    seg = f"{a.steps[-2]}→{a.steps[-1]}" if len(a.steps) > 1 else "-"
    md = (f"# The training step as one CUDA graph, on a warm-started PixelCNN++ ({p['device']}, torch {p['torch']})\n\n"
          f"`python bench/cuda_graph_training.py --device {a.device} --steps {' '.join(map(str, a.steps))}"
          f"{' --fp32' if a.fp32 else ''}{' --tag=' + a.tag if a.tag else ''}` at {p['commit'][:7]}"
          f"{' (dirty)' if p['dirty'] else ''}, {p['date'][:10]}. Start: `{start_res.dir.name}`; random contexts, "
          f"{N_TRAIN} training images, NLL in nats per image on {N_TEST} test images; updates/s over steps {seg} "
          "(one process, the GPU to itself).\n\n"
          "| bf16 | CUDA graph | " + " | ".join(f"NLL after {s}" for s in [0, *a.steps])
          + " | largest NLL difference from eager | updates/s |\n"
          "| --- | --- | " + " | ".join("---:" for _ in [0, *a.steps]) + " | ---: | ---: |\n"
          + "".join(f"| {r['bf16']} | {r['cuda_graph']} | " + " | ".join(f"{v:.2f}" for v in r["nll"].values())
                    + f" | {'-' if r['max_nll_diff_from_eager'] is None else format(r['max_nll_diff_from_eager'], '.3f')}"
                    + f" | {'-' if r['updates_per_s'] is None else format(r['updates_per_s'], '.1f')} |\n"
                    for r in rows))
    atomic_write_text(stem.with_suffix(".md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
