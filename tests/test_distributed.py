"""Data-parallel training (inversion.distributed, inversion.training.fit under torchrun) with gloo on CPU,
and checkpoints that load as data (weights_only), never as code."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from inversion import distributed, pipeline
from inversion.pipeline.cache import Cache, ref
from inversion.training import TrainConfig, UnsafeCheckpoint, fit, load_checkpoint, load_weights

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import parallel_fixtures as pf  # noqa: E402  (the spawned ranks import it by this name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp(tmp_path, steps: list[int]) -> dict:
    out = tmp_path / "rank0.pt"
    mp.spawn(pf.ddp_rank, args=(2, _free_port(), str(tmp_path / "ddp"), steps, str(out)), nprocs=2, join=True)
    return torch.load(out, weights_only=True)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel())


def test_two_gloo_processes_train_like_one(tmp_path):
    """2 ranks x 4 images = the single-process batch of 8: after 6 steps the weights agree to float rounding."""
    single, _ = pf.train_tiny_pixelcnn(tmp_path / "single", 6)
    ddp = _ddp(tmp_path, [6])
    assert ddp["step"] == 6
    worst = _max_diff(ddp["state"], single)
    initial, _ = pf.train_tiny_pixelcnn(tmp_path / "initial", 0)
    moved = _max_diff(ddp["state"], initial)
    assert worst < 1e-5 and moved > 1e-3, (worst, moved)  # equal, and not because nothing trained


def test_data_parallel_training_resumes(tmp_path):
    """3 steps, then the same workdir to 6 steps (as after a kill): the weights of an uninterrupted 6-step run."""
    single, _ = pf.train_tiny_pixelcnn(tmp_path / "single", 6)
    ddp = _ddp(tmp_path, [3, 6])
    assert ddp["resumed_from"] == 3
    assert _max_diff(ddp["state"], single) < 1e-5


def test_ranked_cache_writes_once_and_matches_serial(tmp_path):
    """Two ranks through the stage cache: a data-parallel stage trained by both, a plain one by rank 0
    alone, one result directory each, no leftovers; metrics equal to the serial run's."""
    mp.spawn(pf.ranked_cache, args=(2, _free_port(), str(tmp_path / "ranked")), nprocs=2, join=True)
    smoke = pipeline.load_params("smoke")
    serial = Cache(smoke, root=tmp_path / "serial", log=lambda m: None)
    fit_ref = ref(pf.slow_fit, dict(steps=12))
    down = ref(pf.read_fit, {}, fit=fit_ref)
    root = tmp_path / "ranked" / "smoke"
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == sorted([fit_ref.dirname,
                                                                                            down.dirname])
    assert not list(root.glob(".tmp-*"))
    info = json.loads((root / fit_ref.dirname / "result.json").read_text())
    assert info["provenance"]["processes"] == 2
    want = serial.result(fit_ref).metrics
    assert info["metrics"]["steps"] == want["steps"] == 12
    assert info["metrics"]["weight"] == pytest.approx(want["weight"], abs=1e-5)
    got_down = json.loads((root / down.dirname / "result.json").read_text())["metrics"]["weight_sum"]
    assert got_down == pytest.approx(serial.result(down).metrics["weight_sum"], abs=1e-5)


def test_a_global_batch_must_split_evenly():
    g = distributed.Group(rank=1, world_size=3, local_rank=1, backend="gloo")
    assert distributed.shard(torch.arange(9), g).tolist() == [3, 4, 5]
    with pytest.raises(ValueError, match="does not split into 3 equal shards"):
        distributed.shard(torch.arange(8), g)


def test_torchrun_variables_half_set_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="torchrun --nproc_per_node"):
        distributed.from_environment("cpu")


@pytest.mark.slow
def test_torchrun_runs_the_pipeline(tmp_path):
    """`torchrun --nproc_per_node=2 -m inversion.pipeline run` on the smoke set's MNIST §5.1 (two layers): it
    completes, training stages record 2 processes, every stage is written once."""
    env = {**os.environ, "INVERSION_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
           "-m", "inversion.pipeline", "run", "--params", str(pf.two_layer_smoke(tmp_path)), "--only", "layers:mnist"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "processes (torchrun)" in proc.stdout
    results = [json.loads(p.read_text()) for p in (tmp_path / "smoke").glob("*/result.json")]
    trained = [r for r in results if r["stage"] in ("classifier", "inversion", "decoder")]
    assert trained and all(r["provenance"]["processes"] == 2 for r in trained)
    assert proc.stderr.count("computing ") == len(results)  # rank 0 alone logs, once per stage
    assert not list((tmp_path / "smoke").glob(".tmp-*")) and not list((tmp_path / "smoke").glob("*.work"))


# ---------------------------------------------------------------------------------------------------------
# Checkpoints are data
# ---------------------------------------------------------------------------------------------------------


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted(path: Path, marker: Path, wrap=lambda payload: payload) -> Path:
    with open(path, "wb") as f:
        pickle.dump(wrap(_RunsCode(marker)), f, protocol=2)  # what a hostile "checkpoint" looks like
    return path


def test_a_crafted_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    bad = _crafted(tmp_path / "model.pt", marker)
    with pytest.raises(UnsafeCheckpoint, match=str(bad)) as e:
        load_checkpoint(bad)
    assert "not a tensor or plain value" in str(e.value)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpoint):
        load_weights(torch.nn.Linear(2, 1), bad)
    assert not marker.exists()


def test_fit_refuses_to_resume_from_a_crafted_state(tmp_path):
    marker = tmp_path / "pwned"
    work = tmp_path / "work"
    work.mkdir()
    _crafted(work / "state.pt", marker, wrap=lambda p: {"model": p})
    x = torch.randn(16, 2)
    with pytest.raises(UnsafeCheckpoint, match="state.pt"):
        fit(torch.nn.Linear(2, 1), lambda m, b: m(b[0]).pow(2).mean(), (x,),
            TrainConfig(steps=2, batch_size=4, lr=0.1, progress=False), work)
    assert not marker.exists()


def test_every_checkpoint_fit_writes_loads_as_data(tmp_path):
    """state.pt (optimiser, scheduler, history), best.pt and snapshots all load with weights_only=True."""
    x = torch.randn(32, 2)
    cfg = TrainConfig(steps=4, batch_size=4, lr=0.1, eval_every=2, snapshot_steps=(0, 2), progress=False)
    fit(torch.nn.Linear(2, 1), lambda m, b: m(b[0]).pow(2).mean(), (x,), cfg, tmp_path,
        eval_fn=lambda m: {"score": -m(x).pow(2).mean().item()})
    names = sorted(p.name for p in tmp_path.glob("*.pt"))
    assert names == ["best.pt", "state.pt", "step_0.pt", "step_2.pt"]
    for name in names:
        load_checkpoint(tmp_path / name)
