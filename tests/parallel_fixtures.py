"""Small stages for the tests of parallel and data-parallel runs (tests/test_engine.py, test_distributed.py).

They live in a module of their own so that Dask's worker processes can import them: a stage travels to a
worker by reference (``Stage.__reduce__``), as the module attribute it is bound to.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from inversion.pipeline import load_params
from inversion.pipeline.cache import Context, stage
from inversion.training import TrainConfig, fit


@dataclass(frozen=True)
class SlowFitConfig:
    steps: int = 20
    sleep: float = 0.0  # seconds per step, so a test can kill a worker mid-stage
    batch_size: int = 8
    fail: bool = False  # raise instead of training
    seed: int = 0


@stage("slow_fit", "1", SlowFitConfig, data_parallel=True)
def slow_fit(ctx: Context) -> dict:
    """Least squares with a linear model through the shared training loop, checkpointing every step."""
    c = ctx.config
    if c.fail:
        raise RuntimeError("this stage fails on purpose")
    g = torch.Generator().manual_seed(c.seed)
    x = torch.randn(64, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(64, 1, generator=g)
    torch.manual_seed(c.seed)
    model = torch.nn.Linear(4, 1)

    def loss_fn(m, batch):
        time.sleep(c.sleep)
        return ((m(batch[0]) - batch[1]) ** 2).mean()

    res = fit(model, loss_fn, (x, y), TrainConfig(steps=c.steps, batch_size=c.batch_size, lr=0.05, checkpoint_every=1,
                                                   seed=c.seed, progress=False), ctx.work)
    torch.save(model.state_dict(), ctx.out / "model.pt")
    return dict(steps=res.step, resumed_from=res.resumed_from, weight=model.weight.detach().flatten().tolist(),
                bias=model.bias.item())


@dataclass(frozen=True)
class ReadFitConfig:
    scale: float = 1.0


@stage("read_fit", "1", ReadFitConfig, deps=("fit",))
def read_fit(ctx: Context) -> dict:
    """A stage downstream of slow_fit: reads its checkpoint."""
    state = torch.load(ctx.dep("fit", need=("model.pt",)).path("model.pt"), weights_only=True)
    return dict(weight_sum=ctx.config.scale * state["weight"].sum().item())


def two_layer_smoke(folder: Path) -> Path:
    """params/smoke.yaml with §5.1 on two layers (CONV1, FC3) instead of four, written into ``folder``.

    For the tests of how stages run (serial against parallel, two runners on one cache, torchrun), not of what
    they compute: ``layers:mnist`` keeps every kind of stage (classifier, inversion, NCE, decoder, samples,
    Fig. 2's samples of FC3, neighbours) in 12 stages instead of 22. A serial run of it took 0.76x the
    four-layer run's wall time (medians of 3 pairs beside a training, 2026-12-03: 23.1 s against 28.8 s; start-up
    and the classifier are most of either). The set keeps its name, so its cache folder is still ``smoke/``."""
    two_layers = load_params("smoke", {"layers": {"layers": ["conv1", "fc3"]}})  # merged and validated here
    path = Path(folder) / "smoke-two-layers.yaml"
    path.write_text(yaml.safe_dump(two_layers.data, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------------------------
# Data-parallel training (tests/test_distributed.py): one rank of a gloo job, started by torch.multiprocessing
# ---------------------------------------------------------------------------------------------------------


def tiny_pixelcnn_data(n=64, seed=0):
    """Binary-ish 1x8x8 images with a 3-vector context: enough for a PixelCNN++ to take real steps."""
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, 1, 8, 8, generator=g) > 0.5).to(torch.uint8) * 255
    contexts = torch.randn(n, 3, generator=g)
    return images, contexts


def tiny_pixelcnn_config(steps: int):
    from inversion.models.pixelcnn import PixelCNNConfig

    return PixelCNNConfig(n_filters=8, n_resnet=1, n_resolutions=2, dropout=0.0, steps=steps, batch_size=8,
                          lr=2e-3, lr_decay=0.99)


def train_tiny_pixelcnn(workdir, steps: int, checkpoint_every: int = 500):
    """Train the tiny PixelCNN++ for ``steps`` (resuming from ``workdir``); its state dict."""
    from inversion.models.pixelcnn import PixelCNNpp, train_pixelcnn

    images, contexts = tiny_pixelcnn_data()
    cfg = tiny_pixelcnn_config(steps)
    torch.manual_seed(0)
    model = PixelCNNpp.from_config((1, 8, 8), (3,), cfg)
    res = train_pixelcnn(model, images, contexts, workdir, cfg, progress=False, checkpoint_every=checkpoint_every)
    return model.state_dict(), res


def ddp_rank(rank: int, world_size: int, port: int, workdir: str, steps: list[int], out: str) -> None:
    """One rank: join the gloo group as torchrun would, train the tiny PixelCNN++ data-parallel for each of
    ``steps`` in turn on one workdir (each call resumes the last), rank 0 saves the final weights to ``out``."""
    import os

    from inversion import distributed

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    group = distributed.from_environment("cpu")
    with distributed.data_parallel(group):
        for k in steps:
            state, res = train_tiny_pixelcnn(workdir, k, checkpoint_every=2)
    if rank == 0:
        torch.save(dict(state=state, resumed_from=res.resumed_from, step=res.step), out)
    torch.distributed.destroy_process_group()


def ranked_cache(rank: int, world_size: int, port: int, root: str) -> None:
    """One rank of a torchrun-style run of slow_fit and read_fit through the stage cache."""
    import os

    from inversion import distributed, pipeline
    from inversion.pipeline.cache import Cache, ref

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    group = distributed.from_environment("cpu")
    cache = Cache(pipeline.load_params("smoke"), root=root, device="cpu", group=group)
    fit_ref = ref(slow_fit, dict(steps=12))
    for r in (fit_ref, ref(read_fit, {}, fit=fit_ref), fit_ref):
        cache.result(r)
    torch.distributed.destroy_process_group()
