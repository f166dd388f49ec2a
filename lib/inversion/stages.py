"""The stage cache: every heavy step of the book as a cached, resumable, provenance-stamped library call.

A *stage* is one heavy step: train a classifier, train an inversion model (PixelCNN++) or an MSE decoder
on one layer, evaluate the NCE bound, draw samples, search nearest neighbours, run the toy bound example.
A stage is requested through a ``Ref``: the stage name, its full configuration (every default filled in,
unknown keys rejected) and the refs of the stages it consumes. The ref's key is

    sha256(canonical JSON of {stage, stage code version, full config, {dependency name: dependency key}})

cut to 12 hex digits, so a changed parameter anywhere upstream changes every key downstream, and a
stage whose code changes meaningfully bumps its ``version`` (``STAGES[name].version``) to invalidate old
results. Results live in

    <cache root>/<parameter set>/<stage>-<key>/        result.json + small files (npz, npy, json, *.pt)
    <cache root>/<parameter set>/<stage>-<key>.work/   resumable training workdir while a stage runs

with the cache root ``$INVERSION_CACHE`` or else ``<repo>/cache``. A result directory is written as a
temporary directory and renamed into place, so it either exists completely or not at all; a killed
training stage resumes from its ``.work`` directory (``inversion.training.fit``). ``result.json`` holds
the stage's metrics and its provenance: commit and dirty flag, device, torch and Python versions, wall
seconds, date, parameter set, full config and the keys of its inputs.

What must travel between machines. A stage whose ``result.json`` exists is reused as it is. Checkpoints
(``*.pt``) are only opened when a downstream stage has to be computed; if one is missing then (results
copied from another machine without their checkpoints, which git ignores), the stage that makes it is
recomputed, with a warning. So copying the ``result.json`` and ``*.npz``/``*.npy`` files of a finished
parameter set is enough to rebuild its chapters; checkpoints are needed only to compute new downstream
stages (e.g. more samples) without retraining.

Parameter sets are YAML files in ``params/`` nested per book section (``background``, ``layers``,
``architectures``, ``dynamics``, ``estimators``); ``load_params`` reads one, applies overrides, and
the section functions (``background``, ``layers``, ``architectures``, ``dynamics``) turn it into refs and
results. Chapters and the command
line call the same functions:

    python -m inversion.stages run  --params params/paper.yaml [--only layers:mnist] [--device cuda]
    python -m inversion.stages list --params quick          # every stage of the set: cached or missing
    python -m inversion.stages show --params quick KEY      # a result.json
    python -m inversion.stages pack --params paper results.tgz   # finished results, no checkpoints, to carry
    python -m inversion.stages unpack --params paper results.tgz # merge them into this machine's cache
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import functools
import hashlib
import json
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
PARAMS_DIR = REPO / "params"
CACHE_ENV = "INVERSION_CACHE"
SECTIONS = ("background", "layers", "architectures", "dynamics", "estimators")  # book sections that have stages, in book order

__all__ = [
    "Cache", "Params", "Ref", "Result", "StageMissing", "STAGES", "SECTIONS",
    "load_params", "ref", "background", "layers", "architectures", "dynamics", "layers_plan", "background_plan",
    "architectures_plan", "dynamics_plan", "plan", "main",
]


# =========================================================================================================
# Parameter sets
# =========================================================================================================


def _read_yaml(path: Path) -> dict:
    try:
        import yaml
    except ImportError:  # the GPU image has no PyYAML: a JSON twin of the file works there too
        twin = path.with_suffix(".json")
        if twin.exists():
            return json.loads(twin.read_text())
        raise ImportError(f"reading {path} needs PyYAML (pip install pyyaml), or a JSON copy at {twin} "
                          "(python -m inversion.stages export-json --params ... writes one)") from None
    with open(path) as f:
        return yaml.safe_load(f) or {}


def deep_merge(base: Mapping, override: Mapping) -> dict:
    """``base`` updated by ``override``, recursively for nested dicts (lists and scalars are replaced)."""
    out = copy.deepcopy(dict(base))
    for k, v in (override or {}).items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


@dataclass
class Params:
    """A parameter set: its name (the cache folder), where it came from, and its nested content."""

    name: str
    data: dict
    source: str = ""

    def __getitem__(self, key):
        return self.data[key]

    def get(self, key, default=None):
        return self.data.get(key, default)

    def section(self, name: str, dataset: str | None = None, layer: str | None = None) -> dict:
        """One section's settings, with its ``per_dataset`` / ``per_layer`` overrides applied.

        ``per_dataset: {svhn: {...}}`` applies to every layer of a dataset, ``per_layer: {"svhn/conv1":
        {...}}`` to one layer of one dataset, and ``per_layer: {conv1: {...}}`` to one layer of every dataset.
        """
        if name not in self.data:
            raise KeyError(f"parameter set {self.name!r} has no section {name!r} (it has {sorted(self.data)})")
        sec = {k: v for k, v in self.data[name].items() if k not in ("per_dataset", "per_layer")}
        if dataset is not None:
            sec = deep_merge(sec, self.data[name].get("per_dataset", {}).get(dataset, {}))
        if layer is not None:
            per_layer = self.data[name].get("per_layer", {})
            sec = deep_merge(sec, per_layer.get(layer, {}))
            if dataset is not None:
                sec = deep_merge(sec, per_layer.get(f"{dataset}/{layer}", {}))
        return sec

    @property
    def device(self) -> str:
        d = self.data.get("device", "auto")
        return ("cuda" if torch.cuda.is_available() else "cpu") if d == "auto" else d


def load_params(spec: str | os.PathLike | Params = "quick", overrides: Mapping | None = None) -> Params:
    """A parameter set by name (``params/<name>.yaml``) or path, deep-merged with ``overrides``."""
    if isinstance(spec, Params):
        return Params(spec.name, deep_merge(spec.data, overrides or {}), spec.source)
    path = Path(spec)
    if not path.suffix:
        path = PARAMS_DIR / f"{spec}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in PARAMS_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no parameter set {str(spec)!r} (looked for {path}); known sets: {known}")
    data = _read_yaml(path)
    name = data.get("name", path.stem)
    return Params(name=name, data=deep_merge(data, overrides or {}), source=str(path))


# =========================================================================================================
# Stages: definitions and refs
# =========================================================================================================


@dataclass(frozen=True)
class StageDef:
    name: str
    version: str  # bump when the stage's code changes what it computes
    defaults: dict  # every config key the stage reads, with its default
    deps: tuple[str, ...]  # names of the stages it consumes, as passed to ``ref``
    compute: Callable[["Context"], dict]
    checkpoints: tuple[str, ...] = ()  # git-ignored files a consumer may need (recomputed when missing)
    doc: str = ""


STAGES: dict[str, StageDef] = {}


def _stage(name: str, version: str, defaults: dict, deps: tuple[str, ...] = (), checkpoints: tuple[str, ...] = ()):
    def register(fn):
        STAGES[name] = StageDef(name, version, defaults, deps, fn, checkpoints, (fn.__doc__ or "").strip())
        return fn

    return register


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _jsonable(obj):
    """Plain JSON types only (tuples -> lists, numpy scalars -> Python), so keys are stable."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"config values must be JSON-like, got {type(obj).__name__}: {obj!r}")


@dataclass(frozen=True, eq=False)
class Ref:
    """A request for one stage result; nothing runs until ``Cache.result(ref)``."""

    stage: str
    config: dict
    deps: dict = field(default_factory=dict)  # name -> Ref

    @property
    def version(self) -> str:
        return STAGES[self.stage].version

    @property
    def key(self) -> str:
        payload = dict(stage=self.stage, version=self.version, config=self.config,
                       deps={k: v.key for k, v in sorted(self.deps.items())})
        return hashlib.sha256(_canonical(payload).encode()).hexdigest()[:12]

    @property
    def dirname(self) -> str:
        return f"{self.stage}-{self.key}"

    def describe(self) -> str:
        short = {k: v for k, v in self.config.items() if k in ("dataset", "layer", "arch", "step", "steps", "n_images",
                                                                "n_samples", "n_test", "contexts")}
        return f"{self.dirname} {short}" if short else self.dirname

    def walk(self) -> Iterator["Ref"]:
        """This ref and everything upstream of it, dependencies first."""
        for d in self.deps.values():
            yield from d.walk()
        yield self


def ref(stage: str, config: Mapping | None = None, **deps: Ref) -> Ref:
    """A ``Ref`` with the stage's defaults filled in; unknown config keys or missing dependencies raise."""
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}; stages: {sorted(STAGES)}")
    s = STAGES[stage]
    config = dict(config or {})
    unknown = sorted(set(config) - set(s.defaults))
    if unknown:
        raise KeyError(f"stage {stage!r} has no parameter(s) {unknown}; it takes {sorted(s.defaults)}")
    if set(deps) != set(s.deps):
        raise KeyError(f"stage {stage!r} consumes {list(s.deps)}, got {sorted(deps)}")
    full = _jsonable({**s.defaults, **config})
    missing = [k for k, v in full.items() if v is _REQUIRED]
    if missing:
        raise KeyError(f"stage {stage!r} needs {missing}")
    return Ref(stage, full, dict(deps))


_REQUIRED = "<required>"


# =========================================================================================================
# Results and the cache
# =========================================================================================================


class StageMissing(RuntimeError):
    """A stage is not in the cache and computing was switched off (``compute=False``)."""


class Result:
    """A finished stage: ``metrics``, ``config``, ``provenance`` and the files in its directory."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.info = json.loads((self.dir / "result.json").read_text())

    stage = property(lambda self: self.info["stage"])
    key = property(lambda self: self.info["key"])
    config = property(lambda self: self.info["config"])
    metrics = property(lambda self: self.info["metrics"])
    provenance = property(lambda self: self.info["provenance"])

    def path(self, name: str) -> Path:
        return self.dir / name

    def arrays(self, name: str) -> dict[str, np.ndarray]:
        """The arrays of an .npz file (or {"array": ...} for an .npy file) of this result."""
        p = self.dir / name
        if p.suffix == ".npy":
            return {"array": np.load(p)}
        with np.load(p) as z:
            return {k: z[k] for k in z.files}

    def __repr__(self):
        return f"Result({self.dir.name})"


class Context:
    """What a stage's compute function sees: its config, dependencies, output and work directories, device."""

    def __init__(self, cache: "Cache", r: Ref, out: Path, work: Path):
        self.cache, self.ref, self.out, self.work = cache, r, out, work
        self.config = r.config
        self.device = torch.device(cache.device)
        self.progress = cache.progress

    def dep(self, name: str, need: tuple[str, ...] = ()) -> Result:
        return self.cache.result(self.ref.deps[name], need=need)

    def log(self, msg: str) -> None:
        self.cache.log(f"  [{self.ref.dirname}] {msg}")

    def save_npz(self, name: str, **arrays) -> None:
        np.savez_compressed(self.out / name, **{k: np.asarray(v) for k, v in arrays.items()})


def _default_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Cache:
    """Stage results of one parameter set under ``root/<param set>/``; computes what is missing.

    compute: False makes a missing stage raise ``StageMissing`` (with the command that fills it) instead of
    running it: a chapter built with ``compute=False`` only reads results.
    """

    def __init__(self, params: Params | str, root: str | os.PathLike | None = None, device: str | None = None,
                 compute: bool = True, progress: bool = False, log: Callable[[str], None] = _default_log):
        self.params = params if isinstance(params, Params) else load_params(params)
        base = Path(root or os.environ.get(CACHE_ENV) or REPO / "cache")
        self.root = base / self.params.name
        self.device = device or self.params.device
        self.compute, self.progress, self.log = compute, progress, log
        self.computed: list[str] = []  # dirnames computed by this Cache object, in order
        self._compute_seconds = 0.0  # own wall time of every stage computed so far (for nested computes)

    def status(self, r: Ref) -> str:
        d = self.root / r.dirname
        if not (d / "result.json").exists():
            return "missing"
        lacking = [c for c in STAGES[r.stage].checkpoints if not (d / c).exists()]
        return "cached" if not lacking else "cached (no checkpoint)"

    def has(self, r: Ref) -> bool:
        return (self.root / r.dirname / "result.json").exists()

    def result(self, r: Ref, need: tuple[str, ...] = ()) -> Result:
        """The result of ``r``; computed (dependencies first, as needed) if absent or lacking a needed file."""
        d = self.root / r.dirname
        if self._complete(d, need):
            return Result(d)
        if not self.compute:
            raise StageMissing(
                f"stage {r.describe()} is not in the cache {self.root} and computing is off. Fill it with\n"
                f"  python -m inversion.stages run --params {self.params.source or self.params.name}")
        self.root.mkdir(parents=True, exist_ok=True)
        with _locked(self.root / f".{r.dirname}.lock"):
            if self._complete(d, need):  # another process finished it while we waited
                return Result(d)
            if d.exists():
                lacking = [n for n in need if not (d / n).exists()]
                self.log(f"{r.dirname}: result exists but {lacking} is missing (imported without checkpoints?); "
                         "recomputing the stage")
            return self._compute(r, d)

    @staticmethod
    def _complete(d: Path, need) -> bool:
        return (d / "result.json").exists() and all((d / n).exists() for n in need)

    def _compute(self, r: Ref, final: Path) -> Result:
        from inversion.provenance import provenance

        s = STAGES[r.stage]
        tmp = self.root / f".tmp-{r.dirname}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        work = self.root / f"{r.dirname}.work"
        ctx = Context(self, r, tmp, work)
        self.log(f"computing {r.describe()} on {self.device}")
        t0, before = time.perf_counter(), self._compute_seconds
        try:
            torch.manual_seed(0)
            metrics = s.compute(ctx)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # the .work directory stays, so training can resume
            raise
        # this stage's own time: dependencies it had to compute first record theirs
        wall = time.perf_counter() - t0 - (self._compute_seconds - before)
        self._compute_seconds += wall
        info = dict(
            stage=r.stage, key=r.key, version=s.version, config=r.config,
            deps={k: v.dirname for k, v in r.deps.items()},
            metrics=_jsonable(_finite(metrics)),
            files={p.name: p.stat().st_size for p in sorted(tmp.iterdir())},
            provenance=provenance(self.device, wall_s=round(wall, 2), param_set=self.params.name),
        )
        (tmp / "result.json").write_text(json.dumps(info, indent=1) + "\n")
        trash = None
        if final.exists():
            trash = self.root / f".old-{r.dirname}-{os.getpid()}"
            os.rename(final, trash)
        os.rename(tmp, final)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        self.computed.append(r.dirname)
        self.log(f"done {r.dirname} in {wall:.1f} s")
        return Result(final)

    def results(self, refs):
        """Materialise a nested dict/list of refs into the same structure of results."""
        if isinstance(refs, Ref):
            return self.result(refs)
        if isinstance(refs, Mapping):
            return {k: self.results(v) for k, v in refs.items()}
        if isinstance(refs, (list, tuple)):
            return [self.results(v) for v in refs]
        return refs


def _finite(obj):
    """NaN/inf -> None, so result.json stays strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def iter_refs(refs) -> Iterator[Ref]:
    """Every ref in a nested plan, upstream first, each once."""
    seen = set()

    def rec(x):
        if isinstance(x, Ref):
            for r in x.walk():
                if r.dirname not in seen:
                    seen.add(r.dirname)
                    yield r
        elif isinstance(x, Mapping):
            for v in x.values():
                yield from rec(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                yield from rec(v)

    yield from rec(refs)


# =========================================================================================================
# Stage implementations
# =========================================================================================================


@functools.lru_cache(maxsize=8)
def _load(dataset: str, split: str):
    """inversion.data.load, memoised per process: stages of one run read the same splits many times."""
    from inversion import data

    return data.load(dataset, split)


def _test_split(dataset: str, n: int | None = None, offset: int = 0):
    x, y = _load(dataset, "test")
    stop = None if n is None else offset + n
    if stop is not None and stop > len(x):
        raise ValueError(f"{dataset} has {len(x)} test images; asked for {offset}..{stop}")
    return x[offset:stop], y[offset:stop]


def _subset(t, n):
    return t if n is None else t[:n]


def load_classifier(result: Result, device=None, weights: str = "model.pt"):
    from inversion.classifier import load_classifier as load

    return load(result.dir, weights, device=device).eval()


@_stage("classifier", "1", checkpoints=("model.pt",), defaults=dict(
    dataset=_REQUIRED, arch="conv", n_filters=None, fc_units=256, dropout=[0.25, 0.25, 0.5], steps=10000,
    batch_size=64, lr=3e-4, eval_every=500, patience=10, n_train=None, overfit_n=None, snapshot_steps=[],
    seed=0))
def _classifier(ctx: Context) -> dict:
    """Train a supervised classifier (Appendix A) with early stopping on validation accuracy."""
    from inversion import data
    from inversion.classifier import Classifier, accuracy, n_parameters, train_classifier

    c = ctx.config
    train = tuple(_subset(t, c["n_train"]) for t in _load(c["dataset"], "train"))
    valid = _load(c["dataset"], "valid")
    torch.manual_seed(c["seed"])
    model = Classifier(data.IMAGE_SHAPES[c["dataset"]], c["arch"], n_filters=c["n_filters"],
                       fc_units=c["fc_units"], dropout=c["dropout"])
    res = train_classifier(model, train, valid, ctx.work, steps=c["steps"], batch_size=c["batch_size"], lr=c["lr"],
                           eval_every=c["eval_every"], patience=c["patience"], snapshot_steps=c["snapshot_steps"],
                           overfit_n=c["overfit_n"], seed=c["seed"], device=ctx.device, progress=ctx.progress)
    test_acc = accuracy(model, *_load(c["dataset"], "test"), device=ctx.device)
    shutil.copy(ctx.work / "best.pt", ctx.out / "model.pt")
    shutil.copy(ctx.work / "config.json", ctx.out / "config.json")
    for snap in ctx.work.glob("step_*.pt"):
        shutil.copy(snap, ctx.out / snap.name)
    ctx.log(f"test accuracy {test_acc:.4f} after {res.step} steps ({res.seconds:.0f} s)")
    return dict(test_accuracy=test_acc, valid_accuracy=res.best_score, best_step=res.best_step, steps=res.step,
                stopped_early=res.stopped_early, train_seconds=res.seconds, n_parameters=n_parameters(model),
                history=res.history)


@_stage("snapshot", "1", deps=("classifier",), checkpoints=("model.pt",), defaults=dict(
    dataset=_REQUIRED, step=_REQUIRED, n_eval=5000))
def _snapshot(ctx: Context) -> dict:
    """The classifier as it was after exactly ``step`` updates (§5.3), as a classifier result of its own.

    Stages that consume a classifier (inversion, nce, decoder, samples, estimators) take a snapshot in its
    place. Its metrics: test accuracy, and accuracy on (up to ``n_eval`` of) the images it was trained on, so
    the chapter can show the generalisation gap of the overfitted network next to its NCE.
    """
    from inversion.classifier import accuracy
    from inversion.classifier import load_classifier as load_from_dir

    c = ctx.config
    name = f"step_{c['step']}.pt"
    clf_res = ctx.dep("classifier", need=(name,))
    if clf_res.config["dataset"] != c["dataset"]:
        raise ValueError(f"snapshot of a {clf_res.config['dataset']} classifier asked for dataset {c['dataset']!r}")
    shutil.copy(clf_res.path(name), ctx.out / "model.pt")
    shutil.copy(clf_res.path("config.json"), ctx.out / "config.json")
    clf = load_from_dir(ctx.out, "model.pt", device=ctx.device).eval()
    cc = clf_res.config
    n_fit = cc["overfit_n"] or cc["n_train"]
    x_tr, y_tr = (_subset(t, n_fit) for t in _load(c["dataset"], "train"))
    x_tr, y_tr = x_tr[: c["n_eval"]], y_tr[: c["n_eval"]]
    test_acc = accuracy(clf, *_load(c["dataset"], "test"), device=ctx.device)
    train_acc = accuracy(clf, x_tr, y_tr, device=ctx.device)
    ctx.log(f"step {c['step']}: test accuracy {test_acc:.4f}, train accuracy {train_acc:.4f}")
    return dict(step=c["step"], test_accuracy=test_acc, train_accuracy=train_acc, n_train_eval=len(x_tr))


def _features(clf, images, layer, device, batch_size=500):
    from inversion.classifier import compute_features

    return compute_features(clf, images, layer, batch_size=batch_size, device=device)


def load_inversion(result: Result, device=None):
    from inversion.pixelcnn import PixelCNNpp

    model = PixelCNNpp(**json.loads(result.path("model.json").read_text()))
    state = torch.load(result.path("model.pt"), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(device or "cpu").eval()


def _layer_training_pairs(ctx: Context):
    """(dataset, classifier, training images, their activations at ctx.config["layer"]): what every model
    that inverts a layer (PixelCNN++ or MSE decoder) is trained on."""
    c = ctx.config
    clf_res = ctx.dep("classifier", need=("model.pt",))
    dataset = clf_res.config["dataset"]
    clf = load_classifier(clf_res, ctx.device)
    x_tr = _subset(_load(dataset, "train")[0], c["n_train"])
    return dataset, clf, x_tr, _features(clf, x_tr, c["layer"], ctx.device)


@_stage("inversion", "1", deps=("classifier",), checkpoints=("model.pt",), defaults=dict(
    layer=_REQUIRED, n_filters=64, n_resnet=3, n_resolutions=3, likelihood="softmax", n_mixtures=10, dropout=0.5,
    context_dropout=0.0, steps=250000, batch_size=32, lr=1e-3, lr_decay=0.9999, n_train=None, n_valid=1000,
    eval_every=0, patience=0, bf16=False, seed=0))
def _inversion(ctx: Context) -> dict:
    """Train a conditional PixelCNN++ p(x | h) on one classifier layer (§4, Appendix A)."""
    from inversion import data
    from inversion.pixelcnn import PixelCNNpp, train_pixelcnn

    c = ctx.config
    dataset, clf, x_tr, h_tr = _layer_training_pairs(ctx)
    valid = None
    if c["eval_every"] and c["n_valid"]:
        x_va = _load(dataset, "valid")[0][: c["n_valid"]]
        valid = (x_va, _features(clf, x_va, c["layer"], ctx.device))
    torch.manual_seed(c["seed"])
    model = PixelCNNpp(data.IMAGE_SHAPES[dataset], context_shape=tuple(h_tr.shape[1:]), n_filters=c["n_filters"],
                       n_resnet=c["n_resnet"], likelihood=c["likelihood"], n_mixtures=c["n_mixtures"],
                       dropout=c["dropout"], context_dropout=c["context_dropout"], n_resolutions=c["n_resolutions"])
    res = train_pixelcnn(model, x_tr, h_tr, ctx.work, steps=c["steps"], batch_size=c["batch_size"], lr=c["lr"],
                         lr_decay=c["lr_decay"], valid=valid, eval_every=c["eval_every"], patience=c["patience"],
                         bf16=c["bf16"], seed=c["seed"], device=ctx.device, progress=ctx.progress,
                         desc=f"pixelcnn {dataset}/{c['layer']}")
    torch.save(model.state_dict(), ctx.out / "model.pt")  # train_pixelcnn left the best weights in model
    (ctx.out / "model.json").write_text(json.dumps(_jsonable(model.config), indent=1))
    losses = [row["loss"] for row in res.history]
    ctx.log(f"{res.step} steps in {res.seconds:.0f} s")
    return dict(steps=res.step, train_seconds=res.seconds, steps_per_second=res.step / max(res.seconds, 1e-9),
                best_valid_nats=res.best_score, best_step=res.best_step, n_parameters=model.n_parameters(),
                context_shape=list(h_tr.shape[1:]), history=res.history, last_loss=losses[-1] if losses else None)


@_stage("nce", "1", deps=("classifier", "inversion"), defaults=dict(n_test=10000, batch_size=256))
def _nce(ctx: Context) -> dict:
    """The NCE bound (mean test log p(x | h), nats per image) with its standard error (§4.1)."""
    from inversion.bounds import per_image_log_prob, summarize

    c = ctx.config
    clf_res = ctx.dep("classifier", need=("model.pt",))
    inv_res = ctx.dep("inversion", need=("model.pt",))
    clf = load_classifier(clf_res, ctx.device)
    model = load_inversion(inv_res, ctx.device)
    x, _ = _test_split(clf_res.config["dataset"], c["n_test"])
    h = _features(clf, x, inv_res.config["layer"], ctx.device)
    lp = per_image_log_prob(model, x, h, batch_size=c["batch_size"], progress=ctx.progress)
    np.save(ctx.out / "log_probs.npy", lp.numpy())
    s = summarize(lp, dims=int(x[0].numel()))
    ctx.log(f"NCE {s.nats:.2f} ± {s.stderr:.2f} nats ({s.bits_per_dim:.3f} bits/dim)")
    return s.as_dict()


@_stage("decoder", "1", deps=("classifier",), checkpoints=("model.pt",), defaults=dict(
    layer=_REQUIRED, n_filters=64, steps=20000, batch_size=64, lr=1e-3, n_train=None, n_valid=1000,
    eval_every=1000, patience=10, n_test=10000, n_show=16, seed=0))
def _decoder(ctx: Context) -> dict:
    """Train the MSE decoder baseline x_hat = f(h) (eq. 3) on one layer; test MSE and reconstructions."""
    from inversion import data
    from inversion.decoders import MSEDecoder, evaluate_mse, train_decoder

    c = ctx.config
    dataset, clf, x_tr, h_tr = _layer_training_pairs(ctx)
    x_va = _load(dataset, "valid")[0][: c["n_valid"]]
    valid = (_features(clf, x_va, c["layer"], ctx.device), x_va) if c["eval_every"] and c["n_valid"] else None
    torch.manual_seed(c["seed"])
    dec = MSEDecoder(tuple(h_tr.shape[1:]), data.IMAGE_SHAPES[dataset], n_filters=c["n_filters"])
    res = train_decoder(dec, h_tr, x_tr, ctx.work, steps=c["steps"], batch_size=c["batch_size"], lr=c["lr"],
                        valid=valid, eval_every=c["eval_every"], patience=c["patience"], seed=c["seed"],
                        device=ctx.device, progress=ctx.progress)
    dec.eval()
    x_te, _ = _test_split(dataset, c["n_test"])
    h_te = _features(clf, x_te, c["layer"], ctx.device)
    mse = evaluate_mse(dec, h_te, x_te)
    n_show = min(c["n_show"], len(x_te))
    recon = dec.reconstruct(h_te[:n_show].to(ctx.device)).cpu()
    ctx.save_npz("reconstructions.npz", images=recon.numpy(), test_index=np.arange(n_show))
    torch.save(dec.state_dict(), ctx.out / "model.pt")
    shutil.copy(ctx.work / "config.json", ctx.out / "config.json")
    ctx.log(f"test MSE {mse:.5f}")
    return dict(test_mse=mse, steps=res.step, train_seconds=res.seconds, best_step=res.best_step, history=res.history)


@_stage("samples", "1", deps=("classifier", "inversion"), defaults=dict(
    n_images=500, offset=0, n_samples=10, nn_of=10, keep_topk=None, method="cached", batch_size=256, seed=0))
def _samples(ctx: Context) -> dict:
    """Sample the inversion model for test images; distances of the samples' representations (Table 1).

    For test images offset..offset+n_images, ``n_samples`` samples each are drawn from p(x | h(x)), sent back
    through the classifier, and compared with the input at the same layer: ``dist`` is the mean absolute
    difference per unit, L1(h, h_hat) / dim(h). IM-S is the first sample's distance, IM-NN the smallest of
    the first ``nn_of`` (the paper: 10). ``keep_topk`` stores only the k closest samples per image (Fig. 2
    draws 1024 and shows 6); otherwise all are stored.
    """
    c = ctx.config
    clf_res = ctx.dep("classifier", need=("model.pt",))
    inv_res = ctx.dep("inversion", need=("model.pt",))
    clf = load_classifier(clf_res, ctx.device)
    model = load_inversion(inv_res, ctx.device)
    layer = inv_res.config["layer"]
    x, y = _test_split(clf_res.config["dataset"], c["n_images"], c["offset"])
    with torch.no_grad():
        feats = clf.features(x.to(ctx.device))  # every layer at once; n_images is small
    h, pred = feats[layer].float(), feats["logits"].argmax(1)
    n, k = len(x), c["n_samples"]
    gen = torch.Generator().manual_seed(c["seed"])
    noise = model.draw_noise(n * k, gen).cpu()
    context = h.repeat_interleave(k, dim=0)
    chunks, passes, t0 = [], [], time.perf_counter()
    for i in range(0, n * k, c["batch_size"]):
        chunks.append(model.sample(context[i : i + c["batch_size"]], noise=noise[i : i + c["batch_size"]],
                                   method=c["method"]).cpu())
        # network passes per batch: the fixed point's count, H*W for the naive sampler, none for the cached
        # one (it computes each activation once: the work of about one pass)
        passes.append(model.last_sample_passes if c["method"] == "fixed_point" else
                      int(np.prod(x.shape[2:])) if c["method"] == "naive" else None)
    sample_seconds = time.perf_counter() - t0
    samples = torch.cat(chunks)  # [n*k, C, H, W] uint8
    s_feats = {name: t.float() for name, t in _batched_features(clf, samples, layer, ctx.device).items()}
    dist = (s_feats[layer].cpu() - context.cpu()).abs().flatten(1).mean(1).view(n, k)
    agree = (s_feats["logits"].argmax(1).view(n, k).cpu() == pred.cpu()[:, None]).float()
    xs = samples.view(n, k, *x.shape[1:]).float() / 255.0
    pix = (xs - x.float()[:, None] / 255.0).abs().flatten(2).mean(2)  # [n, k] pixel L1 to own input
    # Pixel L1 from each image's samples to every input of the set: do samples keep the input's style, or
    # only its class? (own input vs other test images of the same class)
    to_all = torch.stack([(xs - (x[j].float() / 255.0)).abs().flatten(2).mean(2).mean(1) for j in range(n)], 1)
    if c["keep_topk"]:
        order = dist.argsort(dim=1)[:, : c["keep_topk"]]
        kept = samples.view(n, k, *x.shape[1:])[torch.arange(n)[:, None], order]
        ctx.save_npz("samples.npz", samples=kept.numpy(), order=order.numpy(), dist=dist.numpy(),
                     test_index=np.arange(c["offset"], c["offset"] + n), labels=y.numpy())
        stored = kept
    else:
        stored = samples.view(n, k, *x.shape[1:])
        ctx.save_npz("samples.npz", samples=stored.numpy(), dist=dist.numpy(), agree=agree.numpy(),
                     pixel_l1=pix.numpy(), pixel_l1_to_inputs=to_all.numpy(),
                     test_index=np.arange(c["offset"], c["offset"] + n), labels=y.numpy())
    nn_of = min(c["nn_of"], k)
    most = "" if None in passes else f" ({max(passes)} network passes at most per batch)"
    ctx.log(f"{n * k} samples in {sample_seconds:.0f} s{most}; "
            f"IM-S {dist[:, 0].mean():.4g}, IM-NN {dist[:, :nn_of].min(1).values.mean():.4g}")
    return dict(im_s=dist[:, 0].mean().item(), im_nn=dist[:, :nn_of].min(1).values.mean().item(),
                im_s_stderr=(dist[:, 0].std() / math.sqrt(n)).item() if n > 1 else None,
                top1=dist.min(1).values.mean().item(), nn_of=nn_of, class_agreement=agree.mean().item(),
                pixel_l1=pix.mean().item(), sample_seconds=sample_seconds,
                samples_per_second=n * k / max(sample_seconds, 1e-9), stored_shape=list(stored.shape),
                network_passes=passes)


@torch.no_grad()
def _batched_features(clf, images, layer, device, batch_size=500):
    out: dict[str, list] = {layer: [], "logits": []}
    for i in range(0, len(images), batch_size):
        f = clf.features(images[i : i + batch_size].to(device))
        for name in out:
            out[name].append(f[name].float().cpu())
    return {k: torch.cat(v) for k, v in out.items()}


@_stage("neighbours", "1", deps=("classifier",), defaults=dict(
    layer=_REQUIRED, n_test=500, pool=None, k=10, batch_size=64))
def _neighbours(ctx: Context) -> dict:
    """Nearest training images to test images in a layer's representation space (L1 per unit; Table 1, Fig. 2)."""
    from inversion import data

    c = ctx.config
    clf_res = ctx.dep("classifier", need=("model.pt",))
    clf = load_classifier(clf_res, ctx.device)
    dataset = clf_res.config["dataset"]
    pool = _subset(_load(dataset, "train")[0], c["pool"])
    x, _ = _test_split(dataset, c["n_test"])
    hp = _features(clf, pool, c["layer"], ctx.device).flatten(1).to(ctx.device)
    hx = _features(clf, x, c["layer"], ctx.device).flatten(1).to(ctx.device)
    dims = hp.shape[1]
    idx, dist = [], []
    for i in range(0, len(hx), c["batch_size"]):
        d = torch.cdist(hx[i : i + c["batch_size"]], hp, p=1) / dims
        v, j = d.topk(min(c["k"], len(hp)), dim=1, largest=False)
        idx.append(j.cpu())
        dist.append(v.cpu())
    idx, dist = torch.cat(idx), torch.cat(dist)
    ctx.save_npz("neighbours.npz", index=idx.numpy(), dist=dist.numpy())
    return dict(nn1=dist[:, 0].mean().item(), pool=len(pool), n_test=len(x), dims=dims)


# ---- the toy bound example (Background chapter) -------------------------------------------------------

TOY_TEMPLATES = np.array([
    [[0, 0, 0], [1, 1, 1], [0, 0, 0]],  # horizontal bar
    [[0, 1, 0], [0, 1, 0], [0, 1, 0]],  # vertical bar
    [[1, 0, 0], [0, 1, 0], [0, 0, 1]],  # diagonal
    [[0, 0, 1], [0, 1, 0], [1, 0, 0]],  # anti-diagonal
], dtype=np.int64)


def toy_distribution(flip: float) -> tuple[np.ndarray, np.ndarray]:
    """All 512 binary 3x3 images [512, 3, 3] and their exact probabilities: one of four bar templates, chosen
    uniformly, with every pixel flipped independently with probability ``flip``."""
    states = ((np.arange(512)[:, None] >> np.arange(9)[::-1]) & 1).reshape(512, 3, 3)
    diff = (states[:, None] != TOY_TEMPLATES[None]).reshape(512, 4, 9).sum(-1)
    p = (flip ** diff * (1 - flip) ** (9 - diff)).mean(1)
    return states, p / p.sum()


def toy_context(states: np.ndarray, kind: str) -> np.ndarray | None:
    """A deterministic h(x): "none" (no context), "count" (number of lit pixels, one-hot of 10), "rows" (the
    three row sums, each one-hot of 4), "image" (x itself, 9 bits; H(x | h) = 0)."""
    n = len(states)
    if kind == "none":
        return None
    if kind == "count":
        return np.eye(10, dtype=np.float32)[states.reshape(n, -1).sum(1)]
    if kind == "rows":
        return np.concatenate([np.eye(4, dtype=np.float32)[states[:, r].sum(1)] for r in range(3)], 1)
    if kind == "image":
        return states.reshape(n, -1).astype(np.float32)
    raise ValueError(f"unknown toy context {kind!r}")


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def toy_exact_entropies(flip: float, kinds) -> dict:
    """H(x) and, for each context kind, H(x | h) = H(x) - H(h) (h is a function of x), in nats."""
    states, p = toy_distribution(flip)
    hx = _entropy(p)
    out = {"H(x)": hx}
    for kind in kinds:
        h = toy_context(states, kind)
        if h is None:
            out[kind] = hx
            continue
        _, inv = np.unique(h, axis=0, return_inverse=True)
        ph = np.bincount(inv.ravel(), weights=p)
        out[kind] = hx - _entropy(ph)
    return out


@contextlib.contextmanager
def _threads(n: int):
    """Run with ``n`` torch threads: the toy models are so small that every op is overhead, and a second
    thread only adds synchronisation (badly so when other processes share the cores)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@_stage("toy_bound", "1", defaults=dict(
    flip=0.1, contexts=["none", "count", "rows", "image"], n_train=20000, n_test=2000, eval_at=[0, 100, 300, 1000],
    n_filters=32, n_resnet=1, n_resolutions=2, dropout=0.0, batch_size=64, lr=2e-3, lr_decay=1.0, seed=0))
def _toy_bound(ctx: Context) -> dict:
    """Exact cross-entropy of PixelCNN++ inversion models of a known discrete distribution, during training.

    For each context kind a model is trained on ``n_train`` samples; at each step count in ``eval_at`` its
    cross-entropy H*(x | h) = -sum_x p(x) log p_theta(x | h(x)) is computed exactly over all 512 images,
    and at the end the NCE is also estimated on ``n_test`` fresh samples, as the layer chapters must.
    """
    c = ctx.config
    states, p = toy_distribution(c["flip"])
    rng = np.random.default_rng(c["seed"])
    train_ix, test_ix = rng.choice(512, size=c["n_train"], p=p), rng.choice(512, size=c["n_test"], p=p)
    exact = toy_exact_entropies(c["flip"], c["contexts"])
    steps = sorted(set(int(s) for s in c["eval_at"]))
    curves, final = {}, {}
    with _threads(1 if ctx.device.type == "cpu" else torch.get_num_threads()):
        for kind in c["contexts"]:
            curves[kind], final[kind] = _toy_one(ctx, kind, states, p, train_ix, test_ix, steps)
            final[kind].update(true_nce=-exact[kind], gap=curves[kind][-1] - exact[kind])
            ctx.log(f"{kind}: exact NCE {-curves[kind][-1]:.3f} vs -H(x|h) = {-exact[kind]:.3f}")
    ctx.save_npz("curves.npz", steps=np.array(steps), **{k: np.array(v) for k, v in curves.items()})
    return dict(exact=exact, final=final, steps=steps, curves=curves)


def _toy_one(ctx: Context, kind: str, states, p, train_ix, test_ix, steps) -> tuple[list[float], dict]:
    """Train one toy inversion model; its exact cross-entropy at each of ``steps`` and its final test NCE."""
    from inversion.bounds import per_image_log_prob, summarize
    from inversion.pixelcnn import PixelCNNpp, train_pixelcnn

    c = ctx.config
    h_all = toy_context(states, kind)

    def images(ix):
        return torch.from_numpy(states[ix][:, None].astype(np.uint8) * 255)

    def context(ix):
        return None if h_all is None else torch.from_numpy(h_all[ix])

    torch.manual_seed(c["seed"])
    model = PixelCNNpp((1, 3, 3), None if h_all is None else (h_all.shape[1],), n_filters=c["n_filters"],
                       n_resnet=c["n_resnet"], n_resolutions=c["n_resolutions"], dropout=c["dropout"])
    everything = np.arange(512)
    ce = []
    for n in steps:
        if n > 0:  # train_pixelcnn resumes from ctx.work/<kind>, so each call continues the same run
            train_pixelcnn(model, images(train_ix), context(train_ix), ctx.work / kind, steps=n,
                           batch_size=c["batch_size"], lr=c["lr"], lr_decay=c["lr_decay"], seed=c["seed"],
                           device=ctx.device, progress=ctx.progress, desc=f"toy {kind}")
        else:  # the untrained (data-initialised) model
            model.data_init(images(train_ix[: c["batch_size"]]), context(train_ix[: c["batch_size"]]))
        lp = per_image_log_prob(model, images(everything), context(everything), batch_size=512, progress=False)
        ce.append(float(-(p * lp.numpy()).sum()))  # exact H(p(x|h), p_theta(x|h))
    est = summarize(per_image_log_prob(model, images(test_ix), context(test_ix), batch_size=512, progress=False),
                    dims=9)
    return ce, dict(nce_exact=-ce[-1], nce_test=est.nats, nce_test_stderr=est.stderr)


# =========================================================================================================
# Sections: the stages each part of the book needs, from a parameter set
# =========================================================================================================


def _pick(d: Mapping, keys) -> dict:
    return {k: d[k] for k in keys if k in d}


def background_plan(P: Params) -> dict:
    return {"toy": ref("toy_bound", P.section("background")["toy"])}


def layers_datasets(P: Params) -> list[str]:
    return list(P.section("layers")["datasets"])


def layers_plan(P: Params, dataset: str) -> dict:
    """Refs of §5.1 for one dataset: the classifier, and per layer the inversion model, its NCE, the MSE
    decoder, samples (Table 1, Fig. 1, widget), nearest neighbours; plus Fig. 2's many-sample draw."""
    S = P.section("layers", dataset)
    clf = ref("classifier", {"dataset": dataset, **S["classifier"]})
    plan = {"classifier": clf, "layers": {}}
    ev = S["evaluation"]
    for layer in S["layers"]:
        L = P.section("layers", dataset, layer)
        inv = ref("inversion", {"layer": layer, **L["inversion"]}, classifier=clf)
        plan["layers"][layer] = {
            "inversion": inv,
            "nce": ref("nce", {"n_test": ev["n_test_nce"]}, classifier=clf, inversion=inv),
            "decoder": ref("decoder", {"layer": layer, "n_test": ev["n_test_nce"], "n_show": ev["n_images"],
                                       **L["decoder"]}, classifier=clf),
            "samples": ref("samples", {"n_images": ev["n_images"], "n_samples": ev["n_samples"],
                                       **L.get("sampling", {})}, classifier=clf, inversion=inv),
            "neighbours": ref("neighbours", {"layer": layer, "n_test": ev["n_images"], "pool": ev["nn_pool"],
                                             "k": max(ev["nn_k"], S["figure2"]["top_k"])}, classifier=clf),
        }
    f2 = S["figure2"]
    if f2["layer"] in plan["layers"]:
        inv = plan["layers"][f2["layer"]]["inversion"]
        plan["figure2"] = ref("samples", {"n_images": f2["n_images"], "offset": 0, "n_samples": f2["n_samples"],
                                          "keep_topk": f2["top_k"], **P.section("layers", dataset, f2["layer"])
                                          .get("sampling", {})}, classifier=clf, inversion=inv)
    return plan


def architectures_plan(P: Params) -> dict:
    """Refs of §5.2: per architecture (fc, conv, conv_gmp) on affNIST, the classifier and, for one layer
    (FC3), the inversion model, its NCE, the MSE decoder and samples (Fig. 4, the geometry table)."""
    S = P.section("architectures")
    dataset, layer, ev = S["dataset"], S["layer"], S["evaluation"]
    out = {}
    for arch in S["archs"]:
        A = deep_merge(S, S.get("per_arch", {}).get(arch, {}))
        clf = ref("classifier", {"dataset": dataset, "arch": arch, **A["classifier"]})
        inv = ref("inversion", {"layer": layer, **A["inversion"]}, classifier=clf)
        out[arch] = {
            "classifier": clf,
            "inversion": inv,
            "nce": ref("nce", {"n_test": ev["n_test_nce"]}, classifier=clf, inversion=inv),
            "replicates": _replicates(A, ev, clf, {"layer": layer, **A["inversion"]}),
            "decoder": ref("decoder", {"layer": layer, "n_test": ev["n_test_nce"], "n_show": ev["n_images"],
                                       **A["decoder"]}, classifier=clf),
            "samples": ref("samples", {"n_images": ev["n_images"], "n_samples": ev["n_samples"],
                                       **A.get("sampling", {})}, classifier=clf, inversion=inv),
        }
    return out


def _replicates(section: Mapping, ev: Mapping, clf: Ref, inversion_config: Mapping) -> dict:
    """{seed: nce ref} of inversion models that differ from the main one only in their seed (the section's
    ``replicate_seeds``): their spread is the part of an NCE difference that the test-set standard error
    does not see, the variation from training the inversion model itself."""
    out = {}
    for seed in section.get("replicate_seeds") or []:
        inv = ref("inversion", {**inversion_config, "seed": int(seed)}, classifier=clf)
        out[int(seed)] = ref("nce", {"n_test": ev["n_test_nce"]}, classifier=clf, inversion=inv)
    return out


def dynamics_plan(P: Params) -> dict:
    """Refs of §5.3: for each regime (regular, overfit) one classifier trained without early stopping and
    snapshotted at ``steps``; per snapshot and layer an inversion model and its NCE.

    Returns {"steps": [...], "layers": [...], "regimes": {regime: {"classifier": ref,
    "snapshots": {step: ref}, "nce": {layer: {step: ref}}, "inversion": {layer: {step: ref}}}},
    "replicates": {layer: {seed: nce ref}}}; the replicates (``replicate_seeds``) are inversion models of the
    last snapshot of the first regime that differ only in their seed.
    """
    S = P.section("dynamics")
    dataset, steps, ev = S["dataset"], sorted(int(s) for s in S["steps"]), S["evaluation"]
    out = {"steps": steps, "layers": list(S["layers"]), "regimes": {}}
    for regime, overrides in S["regimes"].items():
        cfg = deep_merge(S["classifier"], overrides or {})
        clf = ref("classifier", {"dataset": dataset, **cfg, "steps": max(steps), "snapshot_steps": steps,
                                 "patience": 0})
        R = {"classifier": clf, "snapshots": {}, "inversion": {}, "nce": {}}
        for step in steps:
            R["snapshots"][step] = ref("snapshot", {"dataset": dataset, "step": step}, classifier=clf)
        # Before its first update a classifier is its initialisation, which depends only on the keys below:
        # regimes that share them share the step-0 network, so its inversion models are trained once.
        init = {k: clf.config[k] for k in ("dataset", "arch", "n_filters", "fc_units", "seed")}
        for other in out["regimes"].values():
            o = other["classifier"].config
            if 0 in steps and all(o[k] == v for k, v in init.items()):
                R["snapshots"][0] = other["snapshots"][0]
                break
        for layer in S["layers"]:
            L = P.section("dynamics", layer=layer)
            R["inversion"][layer], R["nce"][layer] = {}, {}
            for step, snap in R["snapshots"].items():
                inv = ref("inversion", {"layer": layer, **L["inversion"]}, classifier=snap)
                R["inversion"][layer][step] = inv
                R["nce"][layer][step] = ref("nce", {"n_test": ev["n_test_nce"]}, classifier=snap, inversion=inv)
        out["regimes"][regime] = R
    first = next(iter(out["regimes"].values()))
    last = first["snapshots"][steps[-1]]
    out["replicates"] = {
        layer: _replicates(S, ev, last, {"layer": layer, **P.section("dynamics", layer=layer)["inversion"]})
        for layer in S["layers"]}
    return out


def plan(P: Params, only: list[str] | None = None) -> dict:
    """Every stage of a parameter set, nested by section (and dataset), optionally restricted with
    ``only=["layers", "layers:mnist", "background"]``."""
    def wanted(section, dataset=None):
        if not only:
            return True
        return any(o == section or (dataset is not None and o == f"{section}:{dataset}") for o in only)

    out = {}
    if "background" in P.data and wanted("background"):
        out["background"] = background_plan(P)
    if "layers" in P.data:
        ds = [d for d in layers_datasets(P) if wanted("layers", d)]
        if ds:
            out["layers"] = {d: layers_plan(P, d) for d in ds}
    if "architectures" in P.data and wanted("architectures"):
        out["architectures"] = architectures_plan(P)
    if "dynamics" in P.data and wanted("dynamics"):
        out["dynamics"] = dynamics_plan(P)
    if "estimators" in P.data and wanted("estimators"):
        from inversion.estimator_stages import estimators_plan  # registers the estimator stages

        out["estimators"] = estimators_plan(P)
    return out


def available(dataset: str) -> tuple[bool, str]:
    """Whether a dataset can be loaded here, and why not (SVHN and CIFAR-10 need a download)."""
    from inversion import data

    try:
        data.fetch(dataset)
        return True, ""
    except data.DatasetUnavailable as e:
        return False, str(e).splitlines()[0]


def background(P: Params | str = "quick", cache: Cache | None = None, **cache_kw) -> dict:
    """The Background chapter's results (the toy bound example)."""
    P = P if isinstance(P, Params) else load_params(P)
    cache = cache or Cache(P, **cache_kw)
    return cache.results(background_plan(P))


def layers(P: Params | str = "quick", dataset: str = "mnist", cache: Cache | None = None, **cache_kw) -> dict:
    """The §5.1 results of one dataset: {"classifier", "layers": {layer: {...}}, "figure2"}."""
    P = P if isinstance(P, Params) else load_params(P)
    cache = cache or Cache(P, **cache_kw)
    return cache.results(layers_plan(P, dataset))


def architectures(P: Params | str = "quick", cache: Cache | None = None, **cache_kw) -> dict:
    """The §5.2 results: {arch: {"classifier", "inversion", "nce", "decoder", "samples"}}."""
    P = P if isinstance(P, Params) else load_params(P)
    cache = cache or Cache(P, **cache_kw)
    return cache.results(architectures_plan(P))


def dynamics(P: Params | str = "quick", cache: Cache | None = None, **cache_kw) -> dict:
    """The §5.3 results, shaped like ``dynamics_plan`` with results in place of refs."""
    P = P if isinstance(P, Params) else load_params(P)
    cache = cache or Cache(P, **cache_kw)
    return cache.results(dynamics_plan(P))


# =========================================================================================================
# Command line
# =========================================================================================================


def _export_json(P: Params, path: Path) -> None:
    path.write_text(json.dumps(P.data, indent=1) + "\n")


PORTABLE = (".json", ".npz", ".npy")  # what travels between machines: results, not checkpoints


def pack(cache: Cache, out: Path, with_checkpoints: bool = False) -> list[str]:
    """A .tar.gz of every finished stage of the cache (result.json, npz, npy; *.pt only on request)."""
    import tarfile

    names = []
    with tarfile.open(out, "w:gz") as tar:
        for res in sorted(cache.root.glob("*/result.json")):
            d = res.parent
            if d.name.endswith(".work") or d.name.startswith("."):
                continue
            for f in sorted(d.iterdir()):
                if f.suffix in PORTABLE or (with_checkpoints and f.suffix == ".pt"):
                    tar.add(f, arcname=f"{cache.params.name}/{d.name}/{f.name}")
            names.append(d.name)
    return names


def unpack(cache: Cache, archive: Path) -> list[str]:
    """Merge a ``pack`` archive into the cache; stages already present are kept (same key, same config)."""
    import tarfile
    import tempfile

    added = []
    cache.root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar, tempfile.TemporaryDirectory(dir=cache.root.parent) as tmp:
        members = [m for m in tar.getmembers() if m.isfile()]
        for m in members:
            parts = Path(m.name).parts
            if len(parts) != 3 or parts[0] != cache.params.name or ".." in parts or m.name.startswith("/"):
                raise ValueError(f"{archive}: unexpected member {m.name!r} (packed from set {parts[0]!r}?)")
        try:
            tar.extractall(tmp, members=members, filter="data")
        except TypeError:  # Python without extraction filters; the members were checked above
            tar.extractall(tmp, members=members)
        unpacked = Path(tmp) / cache.params.name
        for d in sorted(unpacked.iterdir()) if unpacked.exists() else []:
            if not (d / "result.json").exists() or (cache.root / d.name / "result.json").exists():
                continue
            os.rename(d, cache.root / d.name)
            added.append(d.name)
    return added


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m inversion.stages", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default="quick", help="parameter set name (params/<name>.yaml) or YAML path")
    common.add_argument("--only", nargs="*", default=None, metavar="SECTION[:DATASET]",
                        help="restrict to sections/datasets, e.g. layers:mnist background dynamics")
    common.add_argument("--cache", default=None, help=f"cache root (default ${CACHE_ENV} or <repo>/cache)")
    run = sub.add_parser("run", parents=[common], help="compute every missing stage of the parameter set")
    run.add_argument("--device", default=None, help="cpu / cuda (default: the set's device, auto = cuda if present)")
    run.add_argument("--progress", action="store_true", help="tqdm progress bars for training")
    run.add_argument("--skip-unavailable", action="store_true", default=True,
                     help="skip datasets that cannot be downloaded here (default)")
    sub.add_parser("list", parents=[common], help="list the stages of the set with their cache status")
    show = sub.add_parser("show", parents=[common], help="print the result.json of a stage (key or dirname)")
    show.add_argument("key")
    exp = sub.add_parser("export-json", parents=[common], help="write params/<set>.json for machines without PyYAML")
    exp.add_argument("--out", default=None)
    pk = sub.add_parser("pack", parents=[common], help="tar.gz the finished results (no checkpoints) to carry them")
    pk.add_argument("archive")
    pk.add_argument("--with-checkpoints", action="store_true")
    up = sub.add_parser("unpack", parents=[common], help="merge a pack archive into the cache")
    up.add_argument("archive")
    args = ap.parse_args(argv)
    P = load_params(args.params)

    if args.cmd == "export-json":
        out = Path(args.out) if args.out else Path(P.source).with_suffix(".json")
        _export_json(P, out)
        print(out)
        return 0
    cache = Cache(P, root=args.cache, device=getattr(args, "device", None), progress=getattr(args, "progress", False))
    the_plan = plan(P, args.only)
    if args.cmd == "list":
        rows = list(iter_refs(the_plan))
        for r in rows:
            print(f"{cache.status(r):22s} {r.describe()}")
        print(f"{sum(cache.has(r) for r in rows)}/{len(rows)} stages cached in {cache.root}")
        return 0
    if args.cmd == "pack":
        names = pack(cache, Path(args.archive), args.with_checkpoints)
        print(f"packed {len(names)} stage results of {cache.root} into {args.archive}")
        return 0
    if args.cmd == "unpack":
        added = unpack(cache, Path(args.archive))
        print(f"added {len(added)} stage results to {cache.root}")
        return 0
    if args.cmd == "show":
        matches = sorted(cache.root.glob(f"*{args.key}*/result.json"))
        if not matches:
            print(f"no result matching {args.key!r} in {cache.root}", file=sys.stderr)
            return 1
        for m in matches:
            print(m.read_text())
        return 0
    # run
    if "layers" in the_plan:
        for d in list(the_plan["layers"]):
            ok, why = available(d)
            if not ok:
                print(f"skipping {d}: {why}", file=sys.stderr)
                del the_plan["layers"][d]
    t0 = time.perf_counter()
    for r in iter_refs(the_plan):
        cache.result(r)
    print(f"{len(cache.computed)} stages computed, {len(list(iter_refs(the_plan))) - len(cache.computed)} cached; "
          f"{time.perf_counter() - t0:.0f} s; results in {cache.root}")
    return 0


if __name__ == "__main__":
    # Run the main of the importable module, not of this __main__ copy: modules that register stages (such as
    # inversion.estimator_stages) import inversion.stages, and their stages must land in the registry main reads.
    from inversion import stages as _importable

    sys.exit(_importable.main())
