"""Run a plan's stages in parallel on Dask distributed: a local cluster of worker processes, or a running one.

    python -m inversion.pipeline run --params quick --workers 2            # a local cluster, 2 processes
    python -m inversion.pipeline run --params paper --scheduler tcp://host:8786 --device cuda

Why Dask (measured in bench/results/engine_choice.md): it installs in a few MB beside the pinned stack,
starts two local workers in about a second, schedules arbitrary Python functions with dependencies
between them, has per-task resources (a training stage asks for ``GPU=1``), and reaches SLURM/PBS clusters
through dask-jobqueue (README: "Running on a cluster").

Each stage of the plan becomes one task whose dependencies are the tasks of the stages it consumes (the
plan's refs). A task gets the ref itself -- a stage *name* and a config, pickled by reference
(``Stage.__reduce__``), never code -- and runs ``Cache.result(ref)`` in the worker. The stage cache stays
the single source of truth: a task returns only whether it computed the stage; its results are the files
the cache wrote atomically. So a stage is computed at most once at a time even when two runners, or two
clusters, share one cache directory (the cache's per-stage file lock), a worker killed mid-stage leaves no
half-written result, and the retried task resumes training from the stage's ``.work`` folder.

A local cluster gets ``workers`` single-threaded processes on CPU, each running torch with
``threads`` threads (default: the cores divided among the workers); on CUDA one worker per GPU, each stage
asking for one. Workers have no memory limit (a model's training is not spilled or killed by Dask), and
they start without the ``MALLOC_TRIM_THRESHOLD_`` that Dask's nanny gives a worker by default
(``WORKER_MALLOC_ENV``): with it a PyTorch training step on CPU took 2.6x as long in a worker as in a plain
process (bench/results/dask_worker_step.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from inversion.pipeline.cache import Cache, Ref
from inversion.pipeline.params import Params
from inversion.pipeline.schema import ConfigError

__all__ = ["Job", "RunReport", "StageFailed", "run_parallel", "connect", "run_stage", "nanny_environ",
           "WORKER_MALLOC_ENV", "DASK_MALLOC_DEFAULT"]

# Dask's nanny sets this in every worker it spawns (``distributed.nanny.pre-spawn-environ``), so that glibc
# hands freed memory back to the OS at once. PyTorch's CPU ops free and allocate large buffers every step, so
# each step then pays for fresh pages: a §5.1 training step took 1002 ms with it against 382 ms without
# (one thread, AMD EPYC family 25; bench/dask_worker_step.py). The engine's workers start without it.
WORKER_MALLOC_ENV = "MALLOC_TRIM_THRESHOLD_"
DASK_MALLOC_DEFAULT = 65536  # its value there (distributed.yaml; tests/test_engine.py checks it)


def nanny_environ() -> dict:
    """The environment a nanny gives the worker it spawns: Dask's default (one thread per BLAS library)
    less ``WORKER_MALLOC_ENV``. For workers started by hand or by a batch system, export it as
    ``DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON`` (tools/slurm_workers.py does)."""
    import dask

    return {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
            if k != WORKER_MALLOC_ENV}

CONNECT_TIMEOUT_S = 10


@dataclass(frozen=True)
class Job:
    """What a worker needs to open the same cache as the runner: the parameter set, cache root, device."""

    params: Params
    root: str  # the cache root (the parent of <root>/<param set>/), shared by runner and workers
    device: str
    progress: bool = False
    threads: int = 0  # torch threads per task; 0 leaves the worker's default
    compile: bool = False  # torch.compile the PixelCNN++ training (Cache's compile)
    cuda_graph: bool = False  # replay the PixelCNN++ training step as a CUDA graph (Cache's cuda_graph)


@dataclass
class RunReport:
    """What a parallel run did: the stages it computed and found cached, and those that failed."""

    computed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # dirname -> the error (a traceback's last lines)
    skipped: list[str] = field(default_factory=list)  # not run: something upstream failed
    seconds: float = 0.0
    workers: int = 0


class StageFailed(RuntimeError):
    """One or more stages of a parallel run raised; the others were computed."""

    def __init__(self, report: RunReport):
        self.report = report
        lines = [f"{len(report.failed)} stage(s) failed ({len(report.computed)} computed, {len(report.cached)} "
                 f"cached, {len(report.skipped)} not run because a stage they consume failed):"]
        for name, err in report.failed.items():
            lines.append(f"  {name}:\n    " + err.strip().replace("\n", "\n    "))
        super().__init__("\n".join(lines))


def run_stage(job: Job, r: Ref, *upstream) -> tuple[str, bool]:
    """The task a worker runs: the result of ``r`` in the job's cache (computed if missing).
    ``upstream`` are the dependencies' task results, passed only so that Dask runs them first.
    Returns (dirname, whether this task computed it)."""
    device = job.device
    if torch.device(device).type == "cuda" and torch.device(device).index is None and torch.cuda.device_count() > 1:
        from distributed import get_worker

        name = get_worker().name  # a local cluster numbers its workers 0..N-1: one GPU each
        if isinstance(name, int):
            device = f"cuda:{name % torch.cuda.device_count()}"
    if job.threads:
        torch.set_num_threads(job.threads)
    cache = Cache(job.params, root=job.root, device=device, progress=job.progress, compile=job.compile,
                  cuda_graph=job.cuda_graph)
    cache.result(r)
    return r.dirname, r.dirname in cache.computed


def _task_key(job: Job, r: Ref) -> str:
    # Unique per cache directory: two runners of the same plan on one scheduler share tasks instead of
    # racing; the same stage for two different caches does not collide.
    where = hashlib.sha256(f"{os.path.realpath(job.root)}/{job.params.name}".encode()).hexdigest()[:8]
    return f"{r.dirname}@{where}"


def connect(scheduler: str, device: str, workers: int, threads: int):
    """A Dask client: to the scheduler at ``scheduler``, or to a new local cluster of ``workers`` processes.
    Errors that a user can fix (unreachable address, a GPU run without GPUs) raise ConfigError."""
    import dask
    from distributed import Client, LocalCluster

    dask.config.set({"distributed.worker.daemon": False,  # a stage may start its own processes
                     "distributed.nanny.pre-spawn-environ": nanny_environ()})
    want_gpu = torch.device(device).type == "cuda"
    if scheduler:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as e:
            raise ConfigError(f"--scheduler: no Dask scheduler answered at {scheduler} within {CONNECT_TIMEOUT_S} s "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'timed out'}). Start "
                              "one with `dask scheduler` (it prints its address) and workers with `dask worker "
                              "ADDRESS`, or leave out --scheduler to start a local cluster (--workers N)") from None
        n = len(client.scheduler_info()["workers"])
        slow = [w for w, v in client.run(os.environ.get, WORKER_MALLOC_ENV).items() if v is not None]
        if slow:
            warnings.warn(f"{len(slow)} of the {n} workers of {scheduler} run with {WORKER_MALLOC_ENV} set (Dask's "
                          "nanny default), which made CPU training steps 2.6x slower (bench/results/"
                          "dask_worker_step.md): start them with DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON="
                          f"'{json.dumps(nanny_environ())}' in their environment", stacklevel=2)
        if want_gpu:
            with_gpu = [w for w in client.scheduler_info()["workers"].values() if w.get("resources", {}).get("GPU")]
            if not with_gpu:
                client.close()
                raise ConfigError(f"--device cuda asks for one GPU per stage, but none of the {n} workers of "
                                  f"{scheduler} offers one: start them with `dask worker {scheduler} "
                                  "--resources GPU=1` on machines with a GPU (one worker per GPU), or run on cpu")
        return client
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    resources = None
    if want_gpu:
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: torch sees no GPU on this machine; use --device cpu")
        workers = min(workers, torch.cuda.device_count())
        resources = {"GPU": 1}
    # A nanny writes its pre-spawn environment into this process's os.environ before it spawns a worker, so
    # a cluster started here earlier with Dask's default (a test, a bench) would pass the setting on through
    # inheritance: drop that value too (a value of the user's own is kept)
    if os.environ.get(WORKER_MALLOC_ENV) == str(DASK_MALLOC_DEFAULT):
        del os.environ[WORKER_MALLOC_ENV]
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit=0,
                           dashboard_address=None, resources=resources,
                           env={"OMP_NUM_THREADS": str(threads or 1)})
    return Client(cluster)


def _short_error(future) -> str:
    """The last frames of a failed task's traceback and its exception, for the run's summary."""
    import traceback

    exc, tb = future.exception(), future.traceback()
    frames = traceback.format_tb(tb)[-2:] if tb is not None else []
    return "".join(frames) + f"{type(exc).__name__}: {exc}"


def run_parallel(job: Job, refs: Iterable[Ref], client, log=print) -> RunReport:
    """Compute every ref (and what it consumes) on the cluster behind ``client``; each stage is one task.
    Raises StageFailed, after every stage that could run has run, if any stage raised."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    refs = list(refs)
    gpu = {"GPU": 1} if torch.device(job.device).type == "cuda" else None
    futures, by_key = {}, {}
    for r in refs:  # iter_refs order: every stage after the stages it consumes
        if r.dirname in futures:
            continue
        upstream = [futures[d.dirname] for d in r.deps.values()]
        f = client.submit(run_stage, job, r, *upstream, key=_task_key(job, r), pure=False, resources=gpu)
        futures[r.dirname], by_key[f.key] = f, r
    report = RunReport(workers=len(client.scheduler_info()["workers"]))
    failed_keys = set()
    bar = tqdm(total=len(futures), desc="stages", unit="stage", disable=not job.progress, leave=False)
    for f in as_completed(list(futures.values())):
        r = by_key[f.key]
        bar.update(1)
        if f.status == "finished":
            dirname, computed = f.result()
            (report.computed if computed else report.cached).append(dirname)
            continue
        failed_keys.add(f.key)
        upstream_failed = any(futures[d.dirname].status != "finished" for d in r.deps.values())
        if upstream_failed:
            report.skipped.append(r.dirname)
        else:
            report.failed[r.dirname] = _short_error(f)
            log(f"stage {r.dirname} failed: {type(f.exception()).__name__}: {f.exception()}")
    bar.close()
    report.seconds = time.perf_counter() - t0
    if report.failed:
        raise StageFailed(report)
    return report
