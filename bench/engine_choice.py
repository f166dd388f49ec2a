#!/usr/bin/env python3
"""Measure Dask distributed vs Ray as the engine for a graph of heavy "stages".

Standalone: no project imports; run it with the interpreter of a venv that has
the engine installed (psutil is optional, used for the RSS numbers):

    /tmp/eng-dask/bin/python bench/engine_choice.py --engine dask
    /tmp/eng-ray/bin/python  bench/engine_choice.py --engine ray

Each measurement runs in a fresh child process (so start-up is always a cold
start of the cluster) and is repeated --reps times; the median is reported.
Output: one JSON line per measurement (prefix-free, parseable with `jq`), then
a short human summary.  Nothing here can hang: every child has a timeout and
every wait on a possibly unschedulable task uses a 10 s timeout.

Measured:
  (a) import time of the engine package (fresh interpreter each time);
  (b) start-up of a local cluster with 2 worker processes x 1 thread, and
      shutdown;
  (c) per-task overhead: 200 independent no-op tasks submitted then gathered,
      and a chain of 100 dependent no-op tasks (each takes the previous
      result); plus the time for the first task after start-up;
  (d) peak RSS (and PSS, which does not double-count shared pages) of the
      whole process tree during (c);
  (e) resource scheduling: a "GPU" resource on the workers, tasks asking for
      one GPU each, and what happens when a task asks for a GPU nobody has.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.abspath(__file__)
N_WORKERS = 2
RESULT_TAG = "@@RESULT@@"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home


# ----------------------------------------------------------------- task bodies
def noop(x=None):
    return x


def inc(x):
    return x + 1


def sleep_and_report(seconds=1.0):
    t0 = time.time()
    time.sleep(seconds)
    return {
        "pid": os.getpid(),
        "start": t0,
        "end": time.time(),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


# ------------------------------------------------------------ memory sampling
class TreeSampler:
    """Samples RSS/PSS summed over this process and all its descendants."""

    def __init__(self, interval=0.05):
        self.interval = interval
        self.peak_rss = 0
        self.peak_pss = 0
        self.max_procs = 0
        self.available = True
        try:
            import psutil  # noqa: F401
        except ImportError:
            self.available = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample_once(self, with_pss=False):
        import psutil

        me = psutil.Process()
        procs = [me] + me.children(recursive=True)
        rss = pss = 0
        n = 0
        for p in procs:
            try:
                if with_pss:
                    mi = p.memory_full_info()
                    pss += mi.pss
                    rss += mi.rss
                else:
                    rss += p.memory_info().rss
                n += 1
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return rss, pss, n

    def _run(self):
        i = 0
        while not self._stop.is_set():
            with_pss = i % 4 == 0  # PSS reads smaps: do it every 4th sample
            rss, pss, n = self.sample_once(with_pss)
            self.peak_rss = max(self.peak_rss, rss)
            if with_pss:
                self.peak_pss = max(self.peak_pss, pss)
            self.max_procs = max(self.max_procs, n)
            i += 1
            self._stop.wait(self.interval)

    def __enter__(self):
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.available:
            self._stop.set()
            self._thread.join()
            rss, pss, n = self.sample_once(True)
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self.max_procs = max(self.max_procs, n)


def live_descendants():
    try:
        import psutil
    except ImportError:
        return None
    return [
        f"{p.pid}:{' '.join(p.cmdline())[:120]}"
        for p in psutil.Process().children(recursive=True)
        if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    ]


# --------------------------------------------------------------- engine shims
class DaskEngine:
    name = "dask"

    def import_stmt(self):
        return "import dask, distributed"

    def version(self):
        import dask
        import distributed

        return {"dask": dask.__version__, "distributed": distributed.__version__}

    def start(self, resources=None):
        import logging

        from distributed import Client, LocalCluster

        kw = {}
        if resources:
            kw["resources"] = resources
        self.cluster = LocalCluster(
            n_workers=N_WORKERS,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,  # like Ray's include_dashboard=False
            silence_logs=logging.ERROR,
            **kw,
        )
        self.client = Client(self.cluster)
        self.client.wait_for_workers(N_WORKERS)

    def stop(self):
        self.client.close()
        self.cluster.close()

    def run_one(self, f, *args):
        return self.client.submit(f, *args, pure=False).result()

    def independent(self, n):
        futs = [self.client.submit(noop, i, pure=False) for i in range(n)]
        return self.client.gather(futs)

    def chain(self, n):
        x = self.client.submit(inc, 0, pure=False)
        for _ in range(n - 1):
            x = self.client.submit(inc, x, pure=False)
        return x.result()


class RayEngine:
    name = "ray"

    def import_stmt(self):
        return "import ray"

    def version(self):
        import ray

        return {"ray": ray.__version__}

    def start(self, **kw):
        import ray

        self.ray = ray
        ray.init(num_cpus=N_WORKERS, include_dashboard=False, **kw)
        self._noop = ray.remote(noop)
        self._inc = ray.remote(inc)

    def stop(self):
        self.ray.shutdown()

    def run_one(self, f, *args):
        return self.ray.get(self.ray.remote(f).remote(*args))

    def independent(self, n):
        refs = [self._noop.remote(i) for i in range(n)]
        return self.ray.get(refs)

    def chain(self, n):
        x = self._inc.remote(0)
        for _ in range(n - 1):
            x = self._inc.remote(x)
        return self.ray.get(x)


ENGINES = {"dask": DaskEngine, "ray": RayEngine}


# ----------------------------------------------------------------- child jobs
def child_cluster(engine, n_indep, n_chain):
    out = {}
    eng = ENGINES[engine]()
    t = time.perf_counter()
    exec(eng.import_stmt(), {})
    out["import_in_child_s"] = time.perf_counter() - t
    out["versions"] = eng.version()

    t = time.perf_counter()
    eng.start()
    out["startup_s"] = time.perf_counter() - t

    with TreeSampler() as s:
        t = time.perf_counter()
        assert eng.run_one(noop, 1) == 1
        out["first_task_s"] = time.perf_counter() - t
        # one small warm-up round so both engines have their workers ready
        eng.independent(4)

        t = time.perf_counter()
        res = eng.independent(n_indep)
        dt = time.perf_counter() - t
        assert res == list(range(n_indep))
        out["independent_total_s"] = dt
        out["independent_per_task_s"] = dt / n_indep

        t = time.perf_counter()
        res = eng.chain(n_chain)
        dt = time.perf_counter() - t
        assert res == n_chain
        out["chain_total_s"] = dt
        out["chain_per_task_s"] = dt / n_chain
    if s.available:
        out["peak_rss_mib"] = s.peak_rss / 2**20
        out["peak_pss_mib"] = s.peak_pss / 2**20
        out["n_processes"] = s.max_procs

    t = time.perf_counter()
    eng.stop()
    out["shutdown_s"] = time.perf_counter() - t
    time.sleep(1.0)
    left = live_descendants()
    if left is not None:
        out["processes_left_1s_after_shutdown"] = left
    return out


def _concurrency(reports):
    """Max number of the given task intervals that overlapped in time."""
    events = sorted([(r["start"], 1) for r in reports] + [(r["end"], -1) for r in reports])
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def child_resources_dask():
    from distributed import Client, LocalCluster  # noqa: F401

    out = {}
    eng = DaskEngine()
    eng.start(resources={"GPU": 1})  # every worker advertises one "GPU"
    c = eng.client
    out["worker_resources"] = {
        w: info.get("resources") for w, info in c.scheduler_info()["workers"].items()
    }
    # four 1-s "training stages" each needing one GPU, on 2 workers with 1 GPU each
    t = time.perf_counter()
    futs = [c.submit(sleep_and_report, 1.0, resources={"GPU": 1}, pure=False) for _ in range(4)]
    reps = c.gather(futs)
    out["gpu1_x4_wall_s"] = time.perf_counter() - t
    out["gpu1_x4_max_concurrent"] = _concurrency(reps)
    out["gpu1_x4_distinct_pids"] = len({r["pid"] for r in reps})
    out["gpu1_CUDA_VISIBLE_DEVICES_in_task"] = reps[0]["CUDA_VISIBLE_DEVICES"]

    # a task asking for more than any worker has: what happens?
    for label, res in (("gpu2_on_gpu1_workers", {"GPU": 2}), ("unknown_resource_TPU", {"TPU": 1})):
        f = c.submit(sleep_and_report, 0.1, resources=res, pure=False)
        t = time.perf_counter()
        try:
            f.result(timeout=10)
            out[label] = "ran"
        except Exception as e:  # noqa: BLE001
            state = c.run_on_scheduler(
                lambda dask_scheduler, k=f.key: dask_scheduler.tasks[k].state)
            out[label] = (f"{type(e).__name__} after {time.perf_counter() - t:.1f}s "
                          f"(future.status={f.status!r}, scheduler task state={state!r})")
        f.cancel()
    eng.stop()
    return out


def child_resources_ray():
    import ray

    out = {}
    # 1) a machine with no GPU: a task asking num_gpus=1
    eng = RayEngine()
    eng.start()
    out["cluster_resources_default"] = {
        k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")
    }
    ref = ray.remote(num_gpus=1)(sleep_and_report).remote(0.1)
    t = time.perf_counter()
    try:
        ray.get(ref, timeout=10)
        out["num_gpus1_without_gpu"] = "ran"
    except Exception as e:  # noqa: BLE001
        out["num_gpus1_without_gpu"] = f"{type(e).__name__} after {time.perf_counter() - t:.1f}s"
    ray.cancel(ref, force=True)
    eng.stop()

    # 2) declare one (fake) GPU: num_gpus=1 tasks are serialised and get a GPU id
    eng.start(num_gpus=1)
    out["cluster_resources_num_gpus1"] = {
        k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")
    }
    t = time.perf_counter()
    f = ray.remote(num_gpus=1)(sleep_and_report)
    reps = ray.get([f.remote(1.0) for _ in range(4)], timeout=60)
    out["gpu1_x4_wall_s"] = time.perf_counter() - t
    out["gpu1_x4_max_concurrent"] = _concurrency(reps)
    out["gpu1_CUDA_VISIBLE_DEVICES_in_task"] = reps[0]["CUDA_VISIBLE_DEVICES"]
    # fractional GPUs: two 0.5-GPU tasks may share the one GPU
    f = ray.remote(num_gpus=0.5)(sleep_and_report)
    reps = ray.get([f.remote(1.0) for _ in range(4)], timeout=60)
    out["gpu0.5_x4_max_concurrent"] = _concurrency(reps)
    eng.stop()

    # 3) a custom resource literally named "GPU" (Dask style)
    try:
        eng.start(resources={"GPU": 1})
        out["custom_resource_named_GPU"] = "accepted"
        eng.stop()
    except Exception as e:  # noqa: BLE001
        out["custom_resource_named_GPU"] = f"{type(e).__name__}: {str(e)[:160]}"
        try:
            ray.shutdown()
        except Exception:  # noqa: BLE001
            pass
    # 4) a custom resource with another name: works like Dask's
    eng.start(resources={"gpu_slot": 2})
    f = ray.remote(resources={"gpu_slot": 1})(sleep_and_report)
    t = time.perf_counter()
    reps = ray.get([f.remote(1.0) for _ in range(4)], timeout=60)
    out["custom_gpu_slot2_x4_wall_s"] = time.perf_counter() - t
    out["custom_gpu_slot2_x4_max_concurrent"] = _concurrency(reps)
    eng.stop()
    return out


# --------------------------------------------------------------------- parent
def run_child(args, which, timeout):
    cmd = [sys.executable, HERE, "--engine", args.engine, "--child", which,
           "--n-indep", str(args.n_indep), "--n-chain", str(args.n_chain)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return {"error": f"child timed out after {timeout}s"}, str(e.stderr or "")
    other = "\n".join(ln for ln in p.stdout.splitlines() if not ln.startswith(RESULT_TAG))
    for line in p.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):]), other + "\n" + p.stderr
    return ({"error": f"child rc={p.returncode}", "stderr_tail": p.stderr[-2000:]},
            other + "\n" + p.stderr)


def emit(rec):
    print(json.dumps(rec, sort_keys=True), flush=True)


def parent(args):
    eng = ENGINES[args.engine]()
    base = {"engine": args.engine}
    meds = {}

    # (a) import time, fresh interpreter each time
    code = ("import time; t=time.perf_counter(); " + eng.import_stmt()
            + "; print(time.perf_counter()-t)")
    vals = []
    for rep in range(args.reps):
        v = float(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                 text=True, check=True).stdout.strip().splitlines()[-1])
        vals.append(v)
        emit({**base, "metric": "import_s", "rep": rep, "value": v})
    meds["import_s"] = statistics.median(vals)

    # (b)-(d) cluster life cycle, fresh child per repetition
    keys = ["startup_s", "first_task_s", "independent_per_task_s", "chain_per_task_s",
            "independent_total_s", "chain_total_s", "shutdown_s",
            "peak_rss_mib", "peak_pss_mib", "n_processes"]
    per_key = {k: [] for k in keys}
    versions = None
    for rep in range(args.reps):
        res, _ = run_child(args, "cluster", timeout=300)
        if "error" in res:
            emit({**base, "metric": "cluster_error", "rep": rep, "value": res})
            continue
        versions = res.get("versions")
        for k in keys:
            if k in res:
                per_key[k].append(res[k])
                emit({**base, "metric": k, "rep": rep, "value": res[k]})
        if "processes_left_1s_after_shutdown" in res:
            emit({**base, "metric": "processes_left_1s_after_shutdown", "rep": rep,
                  "value": res["processes_left_1s_after_shutdown"]})
    for k, v in per_key.items():
        if v:
            meds[k] = statistics.median(v)

    # (e) resources / GPU scheduling
    res, err = run_child(args, "resources", timeout=240)
    warn = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in err.splitlines()
            if any(w in ln.lower() for w in ("infeasible", "cannot be scheduled", "no-worker",
                                              "resource"))]
    emit({**base, "metric": "resources", "value": res, "child_output_about_resources": warn[:5]})

    emit({**base, "metric": "median", "reps": args.reps, "versions": versions,
          "python": sys.version.split()[0], "cpus": os.cpu_count(), "value": meds})

    # short human summary
    print()
    print(f"== {args.engine} {versions}  (python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, median of {args.reps}) ==")
    fmt = {
        "import_s": "import                      {:.3f} s",
        "startup_s": "cluster start-up            {:.3f} s",
        "first_task_s": "first task after start-up   {:.3f} s",
        "independent_per_task_s": "per task, 200 independent   {:.2e} s",
        "chain_per_task_s": "per task, chain of 100      {:.2e} s",
        "shutdown_s": "shutdown                    {:.3f} s",
        "peak_rss_mib": "peak RSS of process tree    {:.0f} MiB",
        "peak_pss_mib": "peak PSS of process tree    {:.0f} MiB",
        "n_processes": "processes in tree           {:.0f}",
    }
    for k, f in fmt.items():
        if k in meds:
            print("  " + f.format(meds[k]))
    print("  resources:", json.dumps(res, sort_keys=True))
    if warn:
        print("  child output about resources:", warn[0][:200])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engine", choices=sorted(ENGINES), required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n-indep", type=int, default=200)
    ap.add_argument("--n-chain", type=int, default=100)
    ap.add_argument("--child", choices=["cluster", "resources"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "cluster":
        out = child_cluster(args.engine, args.n_indep, args.n_chain)
    elif args.child == "resources":
        out = child_resources_dask() if args.engine == "dask" else child_resources_ray()
    else:
        parent(args)
        return
    print(RESULT_TAG + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
