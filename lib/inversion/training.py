"""The one training loop every model here uses: classifiers, PixelCNN++ inversion models, MSE decoders.

What it guarantees, so callers need not:
- Resumable. All state (weights, optimiser, step, best score, history) is written atomically
  (``inversion.atomic``) to ``workdir/state.pt`` every ``checkpoint_every`` steps and at the end; a rerun
  with the same workdir continues from there. Batches are a pure function of (seed, step), so a resumed
  run sees exactly the batches an uninterrupted run would have.
- Snapshots of the weights at requested step counts (``snapshot_steps``; §5.3 needs 0, 1e2, ... 1e5),
  written to ``workdir/step_<k>.pt``.
- Early stopping on a validation score (higher is better) with the best weights kept in
  ``workdir/best.pt``.
- Progress through tqdm.
- On a GPU, optionally one recorded step (``cuda_graph``): forward, backward and Adam replayed as one CUDA
  graph, for models whose steps are too small to keep a GPU busy between kernel launches.
- Data-parallel under torchrun. Inside ``inversion.distributed.data_parallel(group)`` every rank trains on
  its shard of each global batch through DistributedDataParallel, with the single-process run's global
  batch and schedule; rank 0 alone writes checkpoints (see ``inversion.distributed``).
- Checkpoints are data, not code: tensors and plain values only, read back with ``torch.load(...,
  weights_only=True)`` (``load_checkpoint``), so a checkpoint from someone else's archive or a shared cache
  cannot run code when it is opened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import numbers
import os
import pickle
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from inversion import distributed
from inversion.atomic import atomic_torch_save, atomic_write_text
from inversion.provenance import cpu_flags, device_name


@dataclasses.dataclass
class TrainConfig:
    """The loop's settings. What to train for how long at which rate is the caller's (each model has its own
    config dataclass with its defaults: PixelCNNConfig, ClassifierConfig, DecoderConfig); the rest has
    neutral defaults that change nothing unless asked."""

    steps: int
    batch_size: int
    lr: float
    lr_decay: float = 1.0  # multiplicative, applied after every step
    adam_betas: tuple[float, float] = (0.9, 0.999)
    eval_every: int = 0  # 0: never evaluate
    patience: int = 0  # evaluations without improvement before stopping; 0: never stop early
    checkpoint_every: int = 500
    snapshot_steps: tuple[int, ...] = ()
    grad_clip: float = 0.0  # 0: off
    bf16: bool = False  # autocast matmuls/convs to bfloat16 (loss stays float32)
    # torch.compile the loss (inductor): the same model and loss, equal up to float rounding; on a CPU a
    # PixelCNN++ step runs ~1.65x faster after ~3 minutes of compiling (bench/results/README.md), so it pays
    # from a few thousand steps. Dropout masks then come from inductor's generator: still a function of
    # (seed, step), but not the eager run's masks.
    compile: bool = False
    # Record one whole step (forward, backward, Adam) as a CUDA graph after a few eager ones and replay it: the
    # same updates as eager steps on the same GPU (the same kernels, launched by the graph instead of by
    # Python), for models so small that a step is bound by kernel launches (the quick §5.2 models on an H200:
    # bench/results/cuda_graph_training-cuda.md). CUDA only; not with compile, torchrun, or random ops in the
    # step (the dropout masks would not follow the (seed, step) rule: refused when seen).
    cuda_graph: bool = False
    seed: int = 0
    progress: bool = True


def check_field(config, name: str, kind: type, ok: Callable[[object], bool], valid: str) -> None:
    """Raise a ValueError naming ``config``'s field ``name``, its value and ``valid`` (the valid range in
    words) unless the value is of ``kind`` and ``ok(value)`` holds. The model config dataclasses'
    __post_init__ use it, so a bad setting fails where it is written, not deep inside a training run.

    ``kind`` is int, float, bool, str or a tuple of types; a bool is not an int here (steps=True is a
    mistake) and an int is a float (lr=1 is fine)."""
    value = getattr(config, name)
    if kind is bool:
        typed = isinstance(value, bool)
    elif kind is int:
        typed = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif kind is float:
        typed = isinstance(value, numbers.Real) and not isinstance(value, bool)
    else:
        typed = isinstance(value, kind)
    if not typed or not ok(value):
        raise ValueError(f"{type(config).__name__}.{name} must be {valid}, got {value!r}")


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Indices of the batch used at ``step``: epochs are seeded permutations, so this is resumable."""
    per_epoch = max(n // batch_size, 1)
    epoch, offset = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    return perm[offset * batch_size : (offset + 1) * batch_size]


class UnsafeCheckpoint(pickle.UnpicklingError):
    """A checkpoint holds a pickled object that is not a tensor or a plain value, so it was refused."""


def load_checkpoint(path: str | os.PathLike, map_location=None):
    """``torch.load(path, weights_only=True)``: tensors, dicts, lists, tuples, numbers, strings and None.

    Anything else in the file (a pickled class, a function, a ``__reduce__`` that runs a command) is refused
    before it is built, with ``UnsafeCheckpoint`` naming the file: checkpoints travel between people and
    machines (``pack`` archives, shared caches, cluster workers), and unpickling an arbitrary object runs
    code. Everything this library writes loads this way.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        why = str(e).strip().splitlines()
        detail = next((line.strip() for line in why if "Unsupported" in line or "GLOBAL" in line), why[0] if why else "")
        raise UnsafeCheckpoint(
            f"{path}: refused to load: it holds a pickled object that is not a tensor or plain value "
            f"({detail}). Checkpoints written by this library hold state dicts only; do not load files you do "
            "not trust. If this one is yours, load it with torch.load(..., weights_only=False) and re-save its "
            "state dict.") from None


class _LossOf(torch.nn.Module):
    """``loss_fn(model, batch)`` as a module's forward, so DistributedDataParallel sees the call it wraps
    (the models' losses call ``log_prob`` and other methods, which DDP would not see)."""

    def __init__(self, model: torch.nn.Module, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch):
        return self.loss_fn(self.model, batch)


@dataclasses.dataclass
class TrainResult:
    step: int  # steps taken in total
    best_score: float  # best validation score (nan when never evaluated)
    best_step: int
    history: list[dict]  # one row per evaluation: {"step", "loss", "score", ...}
    stopped_early: bool
    seconds: float  # wall time of all sessions of this run, resumed ones included
    resumed_from: int = 0  # the step this session started at (0: a fresh run)



# CPU features under which bf16 autocast was measured faster than fp32 here (Intel Xeon and AMD EPYC family 25,
# both AVX-512: 1.38-1.64x). Without them oneDNN emulates bf16: 3.6x slower than fp32 on an AMD EPYC of family
# 23 (bench/results/train_step_cpu-amd-family23.md).
FAST_BF16_FEATURES = frozenset({"avx512f", "avx512_bf16", "amx_bf16"})


def warn_if_bf16_is_slow_here() -> None:
    """Warn (once per place, as warnings do) that bf16 autocast is asked for on a CPU without AVX-512. It runs
    as asked: bf16 is part of the model's recipe (a parameter set's, in its stage keys), so silently training
    in fp32 would be another model; the warning says why the steps are slow and where it was measured."""
    flags = cpu_flags()
    if flags and not flags & FAST_BF16_FEATURES:
        warnings.warn(f"bf16 autocast on a CPU without AVX-512 ({device_name('cpu')}): bf16 is emulated here, "
                      "and a step measured 3.6x slower than fp32 on such a CPU "
                      "(bench/results/train_step_cpu-amd-family23.md). It runs as asked, since bf16 is part "
                      "of the recipe; expect long steps, or run on a CPU with AVX-512 or a GPU.",
                      RuntimeWarning, stacklevel=3)


def check_compile(device: torch.device, bf16: bool, compile: bool) -> None:
    """Refuse ``torch.compile`` with bf16 autocast on CUDA, the one execution measured to train a different model.

    On an NVIDIA H200 with torch 2.11.0+cu130 (2026-12-04, ``bench/compile_autocast.py``) a warm-started
    §5.2 model trained so went from 799 nats per image to 3476 after 5 updates and 2.2e7 after 40, while eager
    bf16, eager fp32 and compiled fp32 stayed within 16 nats of one another (compiled fp32 matched eager fp32
    to 0.1 nats). On a CPU (inductor's C++ backend) compiled bf16 is fine: the quick set's committed §5.2
    models were trained so on Intel Xeons (``"compiled": true`` in their provenance) and gain ~30 nats over
    p(x). The losses stay finite, so the non-finite check would not catch it: the run would finish and its
    stage would be wrong. Compiling is how a stage runs, not what it is, yet a run asked to compile should
    fail with the reason rather than quietly run eagerly. Where it comes from is not established (autocast
    entered outside the compiled loss is a candidate). Re-measure on a newer torch with
    ``python bench/compile_autocast.py --device cuda`` (about 3 minutes on a GPU).
    """
    if compile and bf16 and torch.device(device).type == "cuda":
        raise ValueError("torch.compile with bf16 autocast on CUDA trained a diverging model here (NVIDIA H200, "
                         "torch 2.11: 799 -> 2.2e7 nats in 40 updates, where eager bf16 and compiled fp32 were "
                         "fine; bench/results/compile_autocast-cuda.md). Train eagerly (drop --compile), or set "
                         "the model's bf16: false; re-check a newer torch with bench/compile_autocast.py.")


# Eager steps before a step is recorded: Adam's state, cuDNN's workspaces and autocast exist by then.
GRAPH_WARMUP_STEPS = 3


def check_cuda_graph(device: torch.device, cuda_graph: bool, compile: bool, distributed_run: bool = False) -> None:
    """Refuse ``cuda_graph`` where a recorded step cannot be the run that was asked for, with the reason."""
    if not cuda_graph:
        return
    if torch.device(device).type != "cuda":
        raise ValueError(f"cuda_graph records the training step as a CUDA graph and needs a CUDA device, got "
                         f"{device}; leave it off on a CPU.")
    if compile:
        raise ValueError("cuda_graph and compile are two ways to run a step: choose one (torch.compile with bf16 "
                         "is refused on CUDA anyway, see check_compile).")
    if distributed_run:
        raise ValueError("cuda_graph is not measured under torchrun (DistributedDataParallel's gradient hooks "
                         "would be recorded); run one process per model, or leave it off.")


def _random_draws(device: torch.device) -> int | None:
    """The CUDA generator's offset (how far its stream has been drawn since the last seeding); None if unknown."""
    gen = torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    try:
        return int(gen.get_offset())
    except (AttributeError, RuntimeError):
        return None


def _keep_lr_tensors(opt: torch.optim.Optimizer, lr_tensors: list[torch.Tensor]) -> None:
    """A recorded Adam step reads each group's learning rate from a tensor; schedulers and load_state_dict
    may put a float there instead. Write the value into the recorded tensor and put it back."""
    for group, t in zip(opt.param_groups, lr_tensors):
        if group["lr"] is not t:
            t.fill_(float(group["lr"]))
            group["lr"] = t


@dataclasses.dataclass
class _RecordedStep:
    """One training step recorded as a CUDA graph: copy a batch into ``inputs``, ``replay``, read ``loss``."""

    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]
    loss: torch.Tensor

    def __call__(self, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        for static, t in zip(self.inputs, batch):
            static.copy_(t)
        self.graph.replay()
        return self.loss


def fit(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, Sequence[torch.Tensor]], torch.Tensor],
    data: Sequence[torch.Tensor],
    cfg: TrainConfig,
    workdir: str | os.PathLike,
    eval_fn: Callable[[torch.nn.Module], dict] | None = None,
    on_start: Callable[[torch.nn.Module, Sequence[torch.Tensor]], None] | None = None,
    device: str | torch.device | None = None,
    desc: str = "train",
    restore_best: bool = False,
) -> TrainResult:
    """Train ``model`` to minimise ``loss_fn(model, batch)`` over ``data`` (tensors sharing dim 0).

    ``eval_fn(model)`` returns a dict with a ``"score"`` (higher is better) and any other metrics to log;
    it is called every ``cfg.eval_every`` steps with the model in eval mode. ``on_start(model, batch)``
    runs once on the first batch of a fresh run (weight norm's data-dependent init uses it).
    The batch tensors are moved to ``device`` (default: the model's). With ``restore_best`` the model
    ends with the best-scoring weights (early stopping's answer) instead of the last ones.
    """
    if cfg.steps < 0:
        raise ValueError(f"steps must be >= 0, got {cfg.steps}")
    n = len(data[0])
    if any(len(t) != n for t in data):
        raise ValueError(f"all data tensors must share their first dimension; got {[len(t) for t in data]}")
    if n == 0:
        raise ValueError("no training data")
    group = distributed.active()
    if group is not None:
        distributed.shard(torch.arange(cfg.batch_size), group)  # a batch that does not split fails here
    writes = group is None or group.is_main  # under torchrun rank 0 alone writes
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    check_compile(device, cfg.bf16, cfg.compile)
    check_cuda_graph(device, cfg.cuda_graph, cfg.compile, distributed_run=group is not None)
    model.to(device)
    if cfg.cuda_graph:  # a recorded Adam step keeps its state and learning rate on the GPU
        lr_tensors = [torch.tensor(cfg.lr, dtype=torch.float32, device=device)]
        opt = torch.optim.Adam(model.parameters(), lr=lr_tensors[0], betas=cfg.adam_betas, capturable=True)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.adam_betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cfg.lr_decay**s)
    state_path = workdir / "state.pt"
    state = dict(step=0, best_score=-math.inf, best_step=-1, history=[], evals_since_best=0, seconds=0.0)
    if state_path.exists():
        saved = load_checkpoint(state_path, map_location=device)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        state = saved["progress"]
    if cfg.cuda_graph:
        _keep_lr_tensors(opt, lr_tensors)

    def batch_at(step, shard=False):
        idx = batch_indices(n, cfg.batch_size, step, cfg.seed)
        if shard:
            idx = distributed.shard(idx, group)
        return [t[idx].to(device, non_blocking=True) for t in data]

    def save(obj, path):
        if writes:
            atomic_torch_save(obj, path)

    def save_state():
        save(
            dict(model=model.state_dict(), optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                 progress=state, config=dataclasses.asdict(cfg)),
            state_path,
        )

    def evaluate(loss_value):
        model.eval()
        with torch.no_grad():
            metrics = dict(eval_fn(model))
        model.train()
        row = dict(step=state["step"], loss=loss_value, **metrics)
        state["history"].append(row)
        if metrics["score"] > state["best_score"]:
            state.update(best_score=float(metrics["score"]), best_step=state["step"], evals_since_best=0)
            save(model.state_dict(), workdir / "best.pt")
        else:
            state["evals_since_best"] += 1
        return row

    if state["step"] == 0 and on_start is not None:
        torch.manual_seed(cfg.seed)
        with torch.no_grad():
            on_start(model, batch_at(0))
    if state["step"] == 0 and 0 in cfg.snapshot_steps:
        save(model.state_dict(), workdir / "step_0.pt")
    # Under torchrun: every rank initialised the same way on the same global batch; DDP's constructor
    # broadcasts rank 0's weights anyway, then averages gradients over the ranks' shards after backward.
    objective = _LossOf(model, loss_fn)
    if group is not None:
        objective = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        objective = torch.compile(objective)  # compiled on the first step; evaluation stays eager

    if cfg.bf16 and device.type == "cpu":
        warn_if_bf16_is_slow_here()
    stopped_early = state.get("stopped_early", False)
    resumed_from = state["step"]
    t0 = time.perf_counter() - state["seconds"]
    model.train()
    bar = tqdm(total=cfg.steps, initial=state["step"], desc=desc, disable=not cfg.progress, leave=False)
    last_loss = float("nan")
    recorded: _RecordedStep | None = None
    side = torch.cuda.Stream(device) if cfg.cuda_graph else None  # eager steps before recording run here
    while state["step"] < cfg.steps and not stopped_early:
        step = state["step"]
        # Dropout noise depends on (seed, step) only, so a resumed run matches an uninterrupted one; under
        # torchrun also on the rank, so shards do not share masks.
        torch.manual_seed(cfg.seed * 7919 + step + (group.rank * 1_000_003 if group else 0))
        batch = batch_at(step, shard=True)
        if recorded is None and cfg.cuda_graph and step >= resumed_from + GRAPH_WARMUP_STEPS:
            recorded = _record_step(objective, opt, batch, cfg)
        if recorded is not None:
            loss = recorded(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}; last good state is in "
                                         f"{state_path}")
        else:
            draws = _random_draws(device) if cfg.cuda_graph else None
            if side is not None:  # the batch was copied on the default stream
                side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                loss = _eager_step(objective, opt, batch, cfg, model, step, state_path)
            if side is not None:
                torch.cuda.current_stream().wait_stream(side)
            if cfg.cuda_graph and draws is not None and _random_draws(device) != draws:
                raise ValueError("cuda_graph: this training step draws random numbers (dropout?); a recorded step "
                                 "would not redraw them from (seed, step) as an eager one does. Train it without "
                                 "cuda_graph.")
        sched.step()
        if cfg.cuda_graph:
            _keep_lr_tensors(opt, lr_tensors)
            # the recorded Adam reads this tensor: it must hold the schedule's value (torch 2.4.0a0 compounded
            # the decay of tensor learning rates, pytorch#126854)
            if not math.isclose(lr_tensors[0].item(), cfg.lr * cfg.lr_decay**sched.last_epoch, rel_tol=1e-5):
                raise RuntimeError(f"cuda_graph: the learning rate tensor holds {lr_tensors[0].item():.6g} after "
                                   f"{sched.last_epoch} updates, not {cfg.lr * cfg.lr_decay**sched.last_epoch:.6g}; "
                                   "this torch's scheduler does not keep tensor learning rates: train without cuda_graph")
        state["step"] = step + 1
        last_loss = loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{last_loss:.4g}")
        if state["step"] in cfg.snapshot_steps:
            save(model.state_dict(), workdir / f"step_{state['step']}.pt")
        if eval_fn is not None and cfg.eval_every and state["step"] % cfg.eval_every == 0:
            evaluate(last_loss)
            if cfg.patience and state["evals_since_best"] >= cfg.patience:
                stopped_early = True
                state["stopped_early"] = True
        if state["step"] % cfg.checkpoint_every == 0 or state["step"] == cfg.steps or stopped_early:
            state["seconds"] = time.perf_counter() - t0
            save_state()
    bar.close()
    if eval_fn is not None and (not state["history"] or state["history"][-1]["step"] != state["step"]):
        evaluate(last_loss)
    state["seconds"] = time.perf_counter() - t0
    save_state()
    distributed.barrier(group)  # rank 0's files are written before any rank reads them
    if restore_best and eval_fn is not None:
        load_weights(model, workdir / "best.pt")
    return TrainResult(
        step=state["step"],
        best_score=state["best_score"] if state["best_step"] >= 0 else float("nan"),
        best_step=state["best_step"],
        history=state["history"],
        stopped_early=stopped_early,
        seconds=state["seconds"],
        resumed_from=resumed_from,
    )


def _eager_step(objective, opt, batch, cfg: TrainConfig, model, step: int, state_path: Path) -> torch.Tensor:
    """One update, launched op by op; the loss (before the update)."""
    # autocast's cast cache is off under cuda_graph so the warm-up steps run as the recorded one will
    with torch.autocast(batch[0].device.type, dtype=torch.bfloat16, enabled=cfg.bf16,
                        cache_enabled=not cfg.cuda_graph):
        loss = objective(batch)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}; last good state is in {state_path}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    # detached: a loss kept with its autograd graph holds the accumulate-grad nodes of this step's stream,
    # which the recorded backward of the next step would then have to synchronise with
    return loss.detach()


def _record_step(objective, opt, batch, cfg: TrainConfig) -> _RecordedStep:
    """Record forward, backward (with clipping) and Adam's update on copies of ``batch`` as one CUDA graph.
    Recording runs nothing: the caller replays it for this step and every later one. The gradients are unset
    before recording, so the recorded backward writes them into the graph's own memory."""
    inputs = [t.clone() for t in batch]
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    params = [p for group in opt.param_groups for p in group["params"]]
    with torch.cuda.graph(graph):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16, cache_enabled=False):
            loss = objective(inputs)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
    return _RecordedStep(graph, inputs, loss)


def load_weights(model: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Load a state dict saved by ``fit`` (best.pt, step_<k>.pt, or the model inside state.pt)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}; train first (inversion.training.fit writes it)")
    saved = load_checkpoint(path, map_location=next(model.parameters()).device)
    model.load_state_dict(saved["model"] if "optimizer" in saved else saved)
    return model


def write_run_config(workdir: str | os.PathLike, run_config: dict) -> None:
    """Write ``workdir/config.json`` (what is trained, so it can be rebuilt); refuse to resume a workdir whose
    checkpoint belongs to a different run, which would otherwise fail deep inside load_state_dict or, worse,
    silently continue with other settings."""
    workdir = Path(workdir)
    path = workdir / "config.json"
    run_config = json.loads(json.dumps(run_config))  # tuples become lists, as they come back from disk
    if path.exists() and (workdir / "state.pt").exists():
        saved = json.loads(path.read_text())
        if saved != run_config:
            raise ValueError(f"{workdir} holds a different run ({saved}); not resuming it as {run_config}. "
                             "Use another workdir or delete this one.")
    atomic_write_text(path, json.dumps(run_config, indent=1))


def load_trained(model_class, workdir: str | os.PathLike, weights: str = "best.pt", device=None):
    """Rebuild ``model_class(**config["model"])`` from ``workdir/config.json`` and load ``workdir/weights``."""
    workdir = Path(workdir)
    path = workdir / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"no config.json in {workdir}; was it written by a train_* function?")
    model = model_class(**json.loads(path.read_text())["model"])
    if device is not None:
        model.to(device)
    return load_weights(model, workdir / weights)
