"""The stage cache: every heavy step of the book as a cached, resumable, provenance-stamped library call.

A *stage* is one heavy step (train a classifier, train an inversion model on one layer, evaluate its
NCE, draw samples, ...): a function of a ``Context``, declared with the ``stage`` decorator beside the
chapter that needs it (``inversion.pipeline.layers``, ``.background``, ``.dynamics``, ``.estimators``).
It is requested through a ``Ref``: the stage, its full configuration (a frozen dataclass, every default
filled in, validated) and the refs of the stages it consumes. The ref's key is

    sha256(canonical JSON of {stage name, stage version, full config, {dependency name: dependency key}})

cut to 12 hex digits, so a changed parameter anywhere upstream changes every key downstream, and a stage
whose code changes what it computes bumps its ``version``. Results live in

    <cache root>/<parameter set>/<stage>-<key>/        result.json + small files (npz, npy, json, *.pt)
    <cache root>/<parameter set>/<stage>-<key>.work/   resumable training workdir while a stage runs

with the cache root ``$INVERSION_CACHE`` or else ``<repo>/cache``. A result directory is written as a
temporary directory and renamed into place, so it either exists completely or not at all; a lock file per
stage keeps two processes from computing it at once; a killed training stage resumes from its ``.work``
directory (``inversion.training.fit``). ``result.json`` holds the stage's metrics and its provenance:
commit and dirty flag, device, torch and Python versions, wall seconds, date, parameter set (and, for a
stage computed by several processes, a killed training resumed, each process's commit and device:
``sessions``), full config and the keys of its inputs, the sha256 of each checkpoint it wrote
(``checksums``) and of each dependency file it opened (``opened``). Keys name what was asked for; the checksums name the bytes a result was
computed from, which differ between machines (a CPU's rounding), so models that must share one start (one
p(x), one classifier) can be checked to share it when they were trained in different sessions.

What must travel between machines. A stage whose ``result.json`` exists is reused as it is. Checkpoints
(``*.pt``) are only opened when a downstream stage has to be computed; if one is missing then (results
copied without their checkpoints, which git ignores), the stage that makes it is recomputed, with a
warning. ``pack`` / ``unpack`` carry the finished results (result.json, npz, npy) of a parameter set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
import tarfile
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from inversion import distributed
from inversion.atomic import atomic_write_text
from inversion.pipeline.params import REPO, Params
from inversion.pipeline.schema import ConfigError, to_plain, validate
from inversion.provenance import device_name, provenance

CACHE_ENV = "INVERSION_CACHE"
PORTABLE = (".json", ".npz", ".npy")  # what travels between machines: results, not checkpoints

__all__ = ["Stage", "stage", "Ref", "ref", "Result", "Context", "Cache", "StageMissing", "CheckpointMismatch",
           "file_sha256", "iter_refs", "pack", "unpack", "CACHE_ENV"]


# =========================================================================================================
# Stages and refs
# =========================================================================================================


@dataclass(frozen=True)
class Stage:
    """One kind of heavy step: its name, code version, config dataclass, the stages it consumes, its body."""

    name: str
    version: str  # bump when the stage's code changes what it computes
    config: type  # a frozen dataclass: every setting the stage reads, with its default
    compute: Callable[["Context"], dict]
    deps: tuple[str, ...] = ()  # names under which it receives the results it consumes
    checkpoints: tuple[str, ...] = ()  # git-ignored files a consumer may need (recomputed when missing)
    data_parallel: bool = False  # trains through inversion.training.fit: under torchrun every rank runs it

    @property
    def doc(self) -> str:
        return (self.compute.__doc__ or "").strip()

    def __repr__(self):
        return f"Stage({self.name!r}, v{self.version})"

    def __reduce__(self):
        # Pickled by reference, as the module attribute the decorator bound it to, so a Ref travels to a
        # worker process (inversion.pipeline.engine) as a name and a config, never as code.
        return (_stage_at, (self.compute.__module__, self.compute.__qualname__, self.name))


def _stage_at(module: str, qualname: str, name: str) -> Stage:
    import importlib

    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, Stage) or obj.name != name:
        raise ImportError(f"stage {name!r} is not at {module}.{qualname}: declare stages with @stage at the top "
                          "level of an importable module")
    return obj


def stage(name: str, version: str, config: type, deps: tuple[str, ...] = (), checkpoints: tuple[str, ...] = (),
          data_parallel: bool = False):
    """Declare a stage: ``@stage("nce", "1", NCEConfig, deps=("classifier", "inversion"))`` on a function of a
    Context returning a dict of metrics. The decorated name is bound to the ``Stage``; plans pass it to
    ``ref``, and ``inversion.pipeline.plans.STAGES`` lists every stage explicitly. ``data_parallel``: the
    stage trains a model through ``inversion.training.fit``, so under torchrun every rank runs it (any other
    stage is computed by rank 0 alone; see ``inversion.distributed``)."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"stage {name!r}: config must be a dataclass, got {config!r}")

    def declare(fn):
        return Stage(name, version, config, fn, tuple(deps), tuple(checkpoints), data_parallel)

    return declare


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _jsonable(obj):
    """Plain JSON types only (tuples -> lists, numpy scalars -> Python), so keys are stable."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = to_plain(obj)
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

    stage: Stage
    config: dict  # the full config as plain JSON data (what the key hashes)
    deps: dict = field(default_factory=dict)  # name -> Ref

    @property
    def settings(self):
        """The config as the stage's typed dataclass."""
        return validate(self.stage.config, self.config, f"stage {self.stage.name}")

    @property
    def key(self) -> str:
        payload = dict(stage=self.stage.name, version=self.stage.version, config=self.config,
                       deps={k: v.key for k, v in sorted(self.deps.items())})
        return hashlib.sha256(_canonical(payload).encode()).hexdigest()[:12]

    @property
    def dirname(self) -> str:
        return f"{self.stage.name}-{self.key}"

    def describe(self) -> str:
        short = {k: v for k, v in self.config.items() if k in ("dataset", "layer", "arch", "step", "steps", "n_images",
                                                                "n_samples", "n_test", "contexts")}
        return f"{self.dirname} {short}" if short else self.dirname

    def walk(self) -> Iterator["Ref"]:
        """This ref and everything upstream of it, dependencies first."""
        for d in self.deps.values():
            yield from d.walk()
        yield self


def ref(stage: Stage, config=None, **deps: Ref) -> Ref:
    """A ``Ref`` to ``stage`` with its config validated (defaults filled in; unknown keys, wrong types and
    out-of-range values raise ConfigError) and its dependencies checked."""
    if not isinstance(stage, Stage):
        raise TypeError(f"ref() takes a Stage (declared with @stage), got {stage!r}")
    if set(deps) != set(stage.deps):
        raise KeyError(f"stage {stage.name!r} consumes {list(stage.deps)}, got {sorted(deps)}")
    settings = validate(stage.config, to_plain(config) if config is not None else {}, f"stage {stage.name}")
    return Ref(stage, _jsonable(settings), dict(deps))


def iter_refs(refs) -> Iterator[Ref]:
    """Every ref in a nested plan (dicts, lists, refs), upstream first, each once."""
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
# Results and the cache
# =========================================================================================================


class StageMissing(RuntimeError):
    """A stage is not in the cache and computing was switched off (``compute=False``)."""


class CheckpointMismatch(RuntimeError):
    """A stage's checkpoint is not the one its result.json describes (its sha256 differs from the recorded
    one): the two come from different runs, e.g. a result.json restored from git beside a checkpoint that
    this checkout recomputed."""


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verified_sha256(res: "Result", name: str) -> str:
    """The sha256 of ``res``'s file ``name``, checked against the one its result.json recorded (results
    written before checksums were recorded have none to check)."""
    sha = file_sha256(res.path(name))
    recorded = res.info.get("checksums", {}).get(name)
    if recorded is not None and recorded != sha:
        raise CheckpointMismatch(
            f"{res.dir}/{name} has sha256 {sha[:16]}..., but its result.json was written for {recorded[:16]}...: "
            "the checkpoint and the result come from different runs (a result.json restored from git beside a "
            "recomputed checkpoint?). Restore the result.json that came with the checkpoint, or delete the "
            "checkpoint so that the stage is recomputed.")
    return sha


class Result:
    """A finished stage: ``metrics``, ``config``, ``provenance`` and the files in its directory."""

    def __init__(self, directory: str | os.PathLike):
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


SESSIONS_FILE = "sessions.json"  # in a stage's .work directory: the processes that have worked on it
OPENED_FILE = "opened.json"  # in a stage's .work directory: the dependency files it opened first, by sha256
CACHE_RECORDS = (SESSIONS_FILE, OPENED_FILE)  # what the cache itself keeps in a .work directory


def record_session(work: Path, device) -> list[dict]:
    """Add this process to the sessions that have computed the stage whose work directory is ``work``; all of
    them, oldest first.

    A training longer than a session is killed and resumed, maybe at another commit or on another machine
    (its ``.work`` folder committed half-trained, README "Committed results"), while ``result.json``'s
    provenance is read when the stage ends. So each process that starts the stage appends its commit, dirty
    flag, device, torch version and start date to ``work/sessions.json``, and a result computed by more than
    one process records them all (``provenance["sessions"]``). A work directory that holds files but no
    sessions file was left by a process that did not record itself (before this record existed): its entry
    is ``{"unrecorded": true}``."""
    path = work / SESSIONS_FILE
    if path.exists():
        past = json.loads(path.read_text())
    elif work.is_dir() and any(work.iterdir()):
        past = [{"unrecorded": True}]
    else:
        past = []
    p = provenance(device)
    sessions = past + [{"commit": p["commit"], "dirty": p["dirty"], "device": p["device"], "torch": p["torch"],
                        "started": p["date"]}]
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(sessions, indent=1) + "\n")
    return sessions


class Context:
    """What a stage's body sees: its typed config, its dependencies, output and work directories, device, and
    and how to run its PixelCNN++ training (``Cache``'s ``compile`` and ``cuda_graph``)."""

    def __init__(self, cache: "Cache", r: Ref, out: Path, work: Path):
        self.cache, self.ref, self.out, self.work = cache, r, out, work
        self.config = r.settings
        self.device = torch.device(cache.device)
        self.compile = cache.compile
        self.cuda_graph = cache.cuda_graph
        self.execution: dict = {}  # how the body ran, beyond the device (e.g. compiled): into the provenance
        self.opened: dict[str, str] = {}  # "<dependency dir>/<file>": sha256 of each dependency file opened
        self.progress = cache.progress and (cache.group is None or cache.group.is_main)

    def dep(self, name: str, need: tuple[str, ...] = ()) -> Result:
        """The result of the dependency ``name``, with the files in ``need`` present (recomputed if not).

        Each needed file is checked against the sha256 its result.json recorded (``CheckpointMismatch`` if
        it differs) and its sha256 goes into this stage's ``opened``: a result says which exact checkpoints
        it was computed from, so models that must share a start (one p(x), one classifier) can be checked to
        share it, across sessions and machines. A resumed stage must find the bytes its first session opened
        (``_same_start``)."""
        res = self.cache.result(self.ref.deps[name], need=need)
        for n in need:
            opened, sha = f"{res.dir.name}/{n}", verified_sha256(res, n)
            self._same_start(opened, sha)
            self.opened[opened] = sha
        return res

    def _same_start(self, opened: str, sha: str) -> None:
        """A resumed stage must open the dependency bytes its first session opened: the work directory keeps
        them (``opened.json``), and a half-trained model whose classifier or p(x) was recomputed since (other
        bytes: another CPU's rounding, a checkout that lacked the checkpoint) is refused, not silently
        continued on other inputs. (A work directory with nothing of the stage's own in it pins nothing:
        ``Cache._compute`` forgets its opened.json.)"""
        path = self.work / OPENED_FILE
        first = json.loads(path.read_text()) if path.exists() else {}
        if opened not in first:
            self.work.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps({**first, opened: sha}, indent=1) + "\n")
        elif first[opened] != sha:
            sessions_path = self.work / SESSIONS_FILE
            sessions = json.loads(sessions_path.read_text()) if sessions_path.exists() else []
            here = device_name(self.device)
            where = sorted({s["device"] for s in sessions if "device" in s} - {here})
            raise CheckpointMismatch(
                f"{self.work.name} was started from {opened} with sha256 {first[opened][:16]}..., but that file is "
                f"now {sha[:16]}... (recomputed since, e.g. in a checkout without it or on another CPU"
                + (f": it was trained on {'; '.join(where)}, this process runs on {here}" if where else "") + "). "
                f"Resuming would continue the training on other inputs. Restore the original checkpoint (or resume "
                f"where it can be recomputed to the same bytes), or delete {self.work} to train the stage from its "
                f"start on the new bytes: a new lineage, which does not pair with results committed from the old one "
                f"(tests/test_committed_results.py refuses committing both).")

    def log(self, msg: str) -> None:
        self.cache.log(f"  [{self.ref.dirname}] {msg}")

    def save_npz(self, name: str, **arrays) -> None:
        np.savez_compressed(self.out / name, **{k: np.asarray(v) for k, v in arrays.items()})


def _default_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _finite(obj):
    """NaN/inf -> None, so result.json stays strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def _locked(path: Path):
    """Hold the stage's lock: against other threads of this process, then against other processes.

    ``flock`` excludes other processes on this machine and, on NFS (where Linux implements it with POSIX
    byte-range locks through the NFS lock manager), on other machines sharing the cache; the kernel drops
    it when its holder dies, so a killed worker never leaves a stage locked. On a shared file system
    without working locks (Lustre mounted without ``-o flock``) two runners may compute the same stage at
    once; each still writes its result atomically, so the cache stays consistent.
    """
    with _THREAD_LOCKS_GUARD:
        in_process = _THREAD_LOCKS.setdefault(str(path), threading.Lock())
    with in_process, open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Cache:
    """Stage results of one parameter set under ``root/<param set>/``; computes what is missing.

    compute: False makes a missing stage raise ``StageMissing`` (with the command that fills it) instead of
    running it: a chapter built with ``compute=False`` only reads results.
    group: the torchrun process group (``inversion.distributed.from_environment``) when this process is one
    rank of a data-parallel run: rank 0 decides what to compute and writes; see ``result``.
    compile: train the PixelCNN++ inversion models (inversion, unconditional, warm_inversion) with
    ``torch.compile`` (``TrainConfig.compile``): the same stages, equal up to float rounding, faster from a
    few thousand steps. Like the device it is not part of any key; a stage trained so records
    ``"compiled": true`` in its provenance (through ``Context.execution``).
    cuda_graph: train them with each step replayed as one recorded CUDA graph (``TrainConfig.cuda_graph``;
    CUDA only): the same updates, launched by the GPU; recorded as ``"cuda_graph": true`` in the provenance.
    """

    def __init__(self, params: Params, root: str | os.PathLike | None = None, device: str | None = None,
                 compute: bool = True, progress: bool = False, log: Callable[[str], None] = _default_log,
                 group: distributed.Group | None = None, compile: bool = False,
                 cuda_graph: bool = False):
        if not isinstance(params, Params):
            raise TypeError("Cache takes a loaded parameter set: inversion.pipeline.load_params(name)")
        self.params = params
        base = Path(root or os.environ.get(CACHE_ENV) or REPO / "cache")
        self.root = base / self.params.name
        self.device = device or self.params.device
        self.compute, self.progress = compute, progress
        self.compile = compile
        self.cuda_graph = cuda_graph
        self.group = group
        self.log = log if group is None or group.is_main else (lambda msg: None)
        self.computed: list[str] = []  # dirnames computed by this Cache object, in order
        self._compute_seconds = 0.0  # own wall time of every stage computed so far (for nested computes)
        self._alone = False  # rank 0 is computing a stage the other ranks do not run

    def status(self, r: Ref) -> str:
        d = self.root / r.dirname
        if not (d / "result.json").exists():
            return "missing"
        lacking = [c for c in r.stage.checkpoints if not (d / c).exists()]
        return "cached" if not lacking else "cached (no checkpoint)"

    def has(self, r: Ref) -> bool:
        return (self.root / r.dirname / "result.json").exists()

    def _missing(self, r: Ref) -> StageMissing:
        return StageMissing(
            f"stage {r.describe()} is not in the cache {self.root} and computing is off. Fill it with\n"
            f"  python -m inversion.pipeline run --params {self.params.source or self.params.name}")

    def result(self, r: Ref, need: tuple[str, ...] = ()) -> Result:
        """The result of ``r``; computed (dependencies first, as needed) if absent or lacking a needed file."""
        if self.group is not None and not self._alone:
            return self._result_ranked(r, need)
        d = self.root / r.dirname
        if self._complete(d, need):
            return Result(d)
        if not self.compute:
            raise self._missing(r)
        self.root.mkdir(parents=True, exist_ok=True)
        with _locked(self.root / f".{r.dirname}.lock"):
            if self._complete(d, need):  # another process finished it while we waited
                return Result(d)
            self._note_recompute(d, need)
            return self._compute(r, d)

    def _result_ranked(self, r: Ref, need) -> Result:
        """``result`` on one rank of a torchrun job. Every rank calls it for the same refs in the same order.
        Rank 0 takes the stage's lock and decides (cached, missing, compute) for all; a data-parallel stage
        is then computed by every rank (rank 0's output is kept, the others' thrown away), any other stage
        by rank 0 alone; a barrier ends the call, so every rank sees the result directory afterwards."""
        g, d = self.group, self.root / r.dirname
        if g.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
        with _locked(self.root / f".{r.dirname}.lock") if g.is_main else contextlib.nullcontext():
            decision = None
            if g.is_main:
                decision = "cached" if self._complete(d, need) else "compute" if self.compute else "missing"
            decision = distributed.broadcast(decision, g)
            if decision == "cached":
                return Result(d)
            if decision == "missing":
                raise self._missing(r)
            if g.is_main:
                self._note_recompute(d, need)
            if r.stage.data_parallel:
                with distributed.data_parallel(g):
                    self._compute(r, d, publish=g.is_main, clear_work=False)
            elif g.is_main:
                self._alone = True
                try:
                    self._compute(r, d, clear_work=False)
                finally:
                    self._alone = False
            distributed.barrier(g)
            if g.is_main:
                shutil.rmtree(self.root / f"{r.dirname}.work", ignore_errors=True)
            return Result(d)

    def _note_recompute(self, d: Path, need) -> None:
        if d.exists():
            lacking = [n for n in need if not (d / n).exists()]
            self.log(f"{d.name}: result exists but {lacking} is missing (imported without checkpoints?); "
                     "recomputing the stage")

    @staticmethod
    def _complete(d: Path, need) -> bool:
        return (d / "result.json").exists() and all((d / n).exists() for n in need)

    def _compute(self, r: Ref, final: Path, publish: bool = True, clear_work: bool = True) -> Result | None:
        """Run the stage into a temporary directory and rename it to ``final`` (``publish``: else throw it
        away, as a rank other than 0 does). Called with the stage's lock held."""
        if publish:
            # Leftovers of a process that died inside this stage (we hold the lock: nobody else writes them).
            for stale in self.root.glob(f".tmp-{r.dirname}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp = self.root / f".tmp-{r.dirname}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir(parents=True)
        else:  # a rank other than 0 (no lock held): its output is thrown away, so it goes elsewhere
            tmp = Path(tempfile.mkdtemp(prefix=f"{r.dirname}-rank-"))
        work = self.root / f"{r.dirname}.work"
        if publish and work.is_dir() and not any(p.name not in CACHE_RECORDS for p in work.iterdir()):
            # an earlier attempt left nothing to resume (a stage that does not train, or one killed before
            # its first file): it starts afresh, from whatever its dependencies are now
            (work / OPENED_FILE).unlink(missing_ok=True)
        sessions = record_session(work, self.device) if publish else []
        ctx = Context(self, r, tmp, work)
        self.log(f"computing {r.describe()} on {self.device}")
        t0, before = time.perf_counter(), self._compute_seconds
        try:
            torch.manual_seed(0)
            metrics = r.stage.compute(ctx)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # the .work directory stays, so training can resume
            raise
        if not publish:
            shutil.rmtree(tmp, ignore_errors=True)
            return None
        # this stage's own time: dependencies it had to compute first record theirs
        wall = time.perf_counter() - t0 - (self._compute_seconds - before)
        self._compute_seconds += wall
        extra = {} if self.group is None else {"processes": self.group.world_size}
        extra.update(ctx.execution)
        if len(sessions) > 1:  # computed by more than one process: each one's commit and device
            extra["sessions"] = sessions
        info = dict(
            stage=r.stage.name, key=r.key, version=r.stage.version, config=r.config,
            deps={k: v.dirname for k, v in r.deps.items()},
            metrics=_jsonable(_finite(metrics)),
            files={p.name: p.stat().st_size for p in sorted(tmp.iterdir())},
            checksums={p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.suffix == ".pt"},
            opened=dict(sorted(ctx.opened.items())),
            provenance=provenance(self.device, wall_s=round(wall, 2), param_set=self.params.name, **extra),
        )
        atomic_write_text(tmp / "result.json", json.dumps(info, indent=1) + "\n")
        trash = None
        if final.exists():
            trash = self.root / f".old-{tmp.name[5:]}"
            os.rename(final, trash)
        os.rename(tmp, final)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        if clear_work:
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


# =========================================================================================================
# Carrying results between machines
# =========================================================================================================


def pack(cache: Cache, out: Path, with_checkpoints: bool = False) -> list[str]:
    """A .tar.gz of every finished stage of the cache (result.json, npz, npy; *.pt only on request)."""
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
    added = []
    cache.root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar, tempfile.TemporaryDirectory(dir=cache.root.parent) as tmp:
        members = [m for m in tar.getmembers() if m.isfile()]
        for m in members:
            parts = Path(m.name).parts
            if len(parts) != 3 or parts[0] != cache.params.name or ".." in parts or m.name.startswith("/"):
                raise ConfigError(f"{archive}: unexpected member {m.name!r} (packed from set {parts[0]!r}?)")
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
