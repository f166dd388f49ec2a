"""The stage graph on Dask (inversion.pipeline.engine): same results as a serial run, each stage computed
once however many runners share a cache, a killed worker's stage resumed, clear errors for what a user
can get wrong."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from inversion import pipeline
from inversion.pipeline import engine
from inversion.pipeline.__main__ import main
from inversion.pipeline.cache import Cache, iter_refs, ref
from inversion.pipeline.plans import plan

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(REPO / "tools"))
import parallel_fixtures  # noqa: E402  (workers import it by this name: it is on their sys.path too)
from compare_caches import compare as compare_caches  # noqa: E402

PY = sys.executable


def _cli(*args, cache: Path, timeout=900) -> subprocess.CompletedProcess:
    env = {**os.environ, "INVERSION_CACHE": str(cache), "PYTHONPATH": str(Path(__file__).parent)}
    return subprocess.run([PY, "-m", "inversion.pipeline", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def smoke():
    return pipeline.load_params("smoke")


def test_refs_travel_by_name(smoke):
    """A ref pickles as a stage name and a config: unpickled, it is the same stage with the same key."""
    refs = list(iter_refs(plan(smoke, ["layers:mnist"])))
    blob = pickle.dumps(refs)
    assert b"train_inversion" in blob and b"co_code" not in blob
    back = pickle.loads(blob)
    assert [r.key for r in back] == [r.key for r in refs]
    assert all(a.stage is b.stage for a, b in zip(back, refs))


@pytest.mark.slow
def test_two_workers_give_the_serial_results(tmp_path):
    """The smoke plan's MNIST §5.1 on two layers (its classifier, then 11 stages that can run side by side) on a
    2-worker local cluster: every result.json metric and every array equal to the serial run's (timings aside).
    Bitwise, because both use one torch thread per process: how a float sum is split among threads changes
    its last bits."""
    only = ["--params", str(parallel_fixtures.two_layer_smoke(tmp_path)), "--only", "layers:mnist", "--threads", "1"]
    serial = _cli("run", *only, cache=tmp_path / "serial")
    assert serial.returncode == 0, serial.stderr[-3000:]
    par = _cli("run", *only, "--workers", "2", cache=tmp_path / "parallel")
    assert par.returncode == 0, par.stderr[-3000:]
    assert "local cluster of 2 workers" in par.stdout
    n = len(list((tmp_path / "serial" / "smoke").glob("*/result.json")))
    assert n > 10 and f"{n} stages computed, 0 cached" in par.stdout
    assert compare_caches(tmp_path / "serial" / "smoke", tmp_path / "parallel" / "smoke") == []
    again = _cli("run", *only, "--workers", "2", cache=tmp_path / "parallel")
    assert f"0 stages computed, {n} cached" in again.stdout


@pytest.mark.slow
def test_two_runners_at_once_compute_each_stage_once(tmp_path):
    """Two runners started together on one cache directory: every stage is computed by exactly one of them."""
    env = {**os.environ, "INVERSION_CACHE": str(tmp_path)}
    cmd = [PY, "-m", "inversion.pipeline", "run", "--params", str(parallel_fixtures.two_layer_smoke(tmp_path)),
           "--only", "layers:mnist"]
    procs = [subprocess.Popen(cmd + extra, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for extra in ([], ["--workers", "2"])]
    outs = [p.communicate(timeout=900) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    computed = [line.split()[1] for _, err in outs for line in err.splitlines() if line.startswith("done ")]
    stages = sorted(p.parent.name for p in (tmp_path / "smoke").glob("*/result.json"))
    assert sorted(computed) == stages  # each stage once, and no stage left out
    assert not list((tmp_path / "smoke").glob(".tmp-*")) and not list((tmp_path / "smoke").glob("*.work"))


def test_a_killed_worker_resumes_its_stage(tmp_path, smoke):
    """SIGKILL the worker mid-training: the scheduler reruns the task on the restarted worker, training
    resumes from the stage's .work folder, and no half-written result is left."""
    job = engine.Job(smoke, root=str(tmp_path), device="cpu", threads=1)
    r = ref(parallel_fixtures.slow_fit, dict(steps=40, sleep=0.1))
    downstream = ref(parallel_fixtures.read_fit, {}, fit=r)
    client = engine.connect(None, "cpu", workers=1, threads=1)
    try:
        done = {}
        runner = threading.Thread(target=lambda: done.update(report=engine.run_parallel(job, [r, downstream], client)))
        runner.start()
        state = tmp_path / "smoke" / f"{r.dirname}.work" / "state.pt"
        deadline = time.time() + 120
        while not state.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert state.exists(), "the stage never started training"
        time.sleep(0.5)
        (pid,) = client.run(os.getpid).values()
        os.kill(pid, signal.SIGKILL)
        runner.join(timeout=300)
        assert not runner.is_alive()
    finally:
        client.close()
        client.cluster.close()
    report = done["report"]
    assert sorted(report.computed) == sorted([r.dirname, downstream.dirname])
    res = Cache(smoke, root=tmp_path).result(r)
    assert res.metrics["steps"] == 40 and 0 < res.metrics["resumed_from"] < 40
    assert not list((tmp_path / "smoke").glob(".tmp-*")) and not (tmp_path / "smoke" / f"{r.dirname}.work").exists()


def test_a_failing_stage_is_reported_and_the_rest_runs(tmp_path, smoke):
    job = engine.Job(smoke, root=str(tmp_path), device="cpu", threads=1)
    bad = ref(parallel_fixtures.slow_fit, dict(fail=True))
    good = ref(parallel_fixtures.slow_fit, dict(steps=3))
    refs = [bad, ref(parallel_fixtures.read_fit, {}, fit=bad), good]
    client = engine.connect(None, "cpu", workers=1, threads=1)
    try:
        with pytest.raises(engine.StageFailed) as e:
            engine.run_parallel(job, refs, client, log=lambda m: None)
        # the worker started without the nanny's MALLOC_TRIM_THRESHOLD_ (2.6x slower CPU training steps)
        assert set(client.run(os.environ.get, engine.WORKER_MALLOC_ENV).values()) == {None}
    finally:
        client.close()
        client.cluster.close()
    rep = e.value.report
    assert list(rep.failed) == [bad.dirname] and "fails on purpose" in rep.failed[bad.dirname]
    assert rep.skipped == [refs[1].dirname] and rep.computed == [good.dirname]
    assert "1 stage(s) failed" in str(e.value)


def test_unreachable_scheduler_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setattr(engine, "CONNECT_TIMEOUT_S", 2)
    code = main(["run", "--params", "smoke", "--only", "background", "--scheduler", "tcp://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2 and "no Dask scheduler answered at tcp://127.0.0.1:9" in err and "dask scheduler" in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the machine without a GPU")
def test_workers_with_the_nannys_malloc_setting_are_warned_about():
    import dask
    from distributed import LocalCluster

    slow = {"distributed.nanny.pre-spawn-environ": {"OMP_NUM_THREADS": 1, engine.WORKER_MALLOC_ENV: 65536}}
    with dask.config.set(slow), LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                             dashboard_address=None) as cluster:
        with pytest.warns(UserWarning, match="""DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON='{"OMP_NUM_THREADS": 1"""):
            client = engine.connect(cluster.scheduler_address, "cpu", workers=0, threads=0)
        client.close()
    assert engine.WORKER_MALLOC_ENV not in engine.nanny_environ()
    # the value the engine recognises as Dask's (left in this process's environment by such a cluster) is
    # the installed distributed's default
    import distributed
    import yaml

    defaults = yaml.safe_load((Path(distributed.__file__).parent / "distributed.yaml").read_text())
    assert defaults["distributed"]["nanny"]["pre-spawn-environ"][engine.WORKER_MALLOC_ENV] == engine.DASK_MALLOC_DEFAULT


def test_gpu_request_without_gpu_is_a_clear_error(capsys):
    code = main(["run", "--params", "smoke", "--only", "background", "--workers", "2", "--device", "cuda"])
    assert code == 2 and "torch sees no GPU" in capsys.readouterr().err
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        code = main(["run", "--params", "smoke", "--only", "background", "--scheduler", cluster.scheduler_address,
                     "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and "none of the 1 workers" in err and "--resources GPU=1" in err


@pytest.mark.parametrize("args, message", [
    (["--workers", "-1"], "--workers must be >= 1"),
    (["--workers", "2", "--threads", "-3"], "--threads must be >= 0"),
])
def test_bad_worker_counts(args, message, capsys):
    code = main(["run", "--params", "smoke", "--only", "background", *args])
    assert code == 2 and message in capsys.readouterr().err


def test_result_records_nothing_of_the_engine(tmp_path, smoke):
    """A stage computed by a worker is the same file as one computed serially: no engine trace in its key or
    config (only its provenance says where it ran)."""
    job = engine.Job(smoke, root=str(tmp_path / "a"), device="cpu", threads=1)
    r = ref(parallel_fixtures.slow_fit, dict(steps=2))
    assert engine.run_stage(job, r) == (r.dirname, True)
    assert engine.run_stage(job, r) == (r.dirname, False)
    info = json.loads((tmp_path / "a" / "smoke" / r.dirname / "result.json").read_text())
    serial = Cache(smoke, root=tmp_path / "b", log=lambda m: None).result(r)
    assert info["key"] == serial.key and info["metrics"] == serial.metrics


def test_the_slurm_recipe_writes_a_gpu_worker_job():
    """tools/slurm_workers.py --dry-run: the sbatch script of one worker, one GPU, the shared cache, the venv."""
    env = {**os.environ, "INVERSION_CACHE": ""}
    proc = subprocess.run([PY, "tools/slurm_workers.py", "--dry-run", "--jobs", "2", "--gpus-per-job", "1",
                           "--partition", "gpu", "--cache", "/shared/cache"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    script = proc.stdout
    for want in ("#SBATCH -p gpu", "#SBATCH --gres=gpu:1", "export INVERSION_CACHE=/shared/cache",
                 f"{PY} -m distributed.cli.dask_worker", "--nthreads 1", "--resources GPU=1",
                 """export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON='{"OMP_NUM_THREADS": 4"""):
        assert want in script, want
    assert "MALLOC_TRIM_THRESHOLD_" not in script
    missing = subprocess.run([PY, "tools/slurm_workers.py", "--dry-run", "--jobs", "2"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "--cache" in missing.stderr
