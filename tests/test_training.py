"""The shared training loop: exact resume, snapshots, early stopping, clear failures."""

import json
import warnings
from unittest import mock

import pytest
import torch

from inversion.training import (TrainConfig, _keep_lr_tensors, batch_indices, check_compile, check_cuda_graph, fit,
                                load_weights, write_run_config)

X = torch.randn(500, 5, generator=torch.Generator().manual_seed(0))
Y = (X[:, 0] > 0).long()


def model():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 2))


def loss(m, batch):
    return torch.nn.functional.cross_entropy(m(batch[0]), batch[1])


def accuracy(m):
    return {"score": (m(X).argmax(1) == Y).float().mean().item()}


def cfg(**kw):
    base = dict(steps=100, batch_size=32, lr=1e-3, eval_every=20, checkpoint_every=10, snapshot_steps=(0, 50), progress=False)
    return TrainConfig(**(base | kw))


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    a = model()
    ra = fit(a, loss, [X, Y], cfg(), tmp_path / "a", accuracy)
    calls = 0

    def killed_at_step_57(m, batch):
        nonlocal calls
        calls += 1
        if calls == 58:
            raise KeyboardInterrupt  # what a kill looks like from inside; the last checkpoint is step 50
        return loss(m, batch)

    with pytest.raises(KeyboardInterrupt):
        fit(model(), killed_at_step_57, [X, Y], cfg(), tmp_path / "b", accuracy)
    b = model()  # a new process starts from fresh weights; everything else comes from disk
    rb = fit(b, loss, [X, Y], cfg(), tmp_path / "b", accuracy)
    assert ra.step == rb.step == 100
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(p, q)
    assert [r["step"] for r in rb.history] == [20, 40, 60, 80, 100]
    assert ra.best_score == rb.best_score > 0.8  # it learned something


def test_snapshots_and_best_weights(tmp_path):
    m = model()
    initial = {k: v.clone() for k, v in m.state_dict().items()}
    r = fit(m, loss, [X, Y], cfg(), tmp_path, accuracy)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["best.pt", "state.pt", "step_0.pt", "step_50.pt"]
    step0 = load_weights(model(), tmp_path / "step_0.pt").state_dict()
    assert all(torch.equal(initial[k], step0[k]) for k in initial)
    best = load_weights(model(), tmp_path / "best.pt")
    best.eval()
    assert accuracy(best)["score"] == pytest.approx(r.best_score)


def test_early_stopping(tmp_path):
    constant = lambda m: {"score": 0.5}  # noqa: E731  never improves after the first evaluation
    r = fit(model(), loss, [X, Y], cfg(eval_every=10, patience=2), tmp_path, constant)
    assert r.stopped_early and r.step == 30 and r.best_step == 10


def test_batches_are_a_pure_function_of_seed_and_step():
    assert torch.equal(batch_indices(500, 32, 37, seed=3), batch_indices(500, 32, 37, seed=3))
    assert not torch.equal(batch_indices(500, 32, 37, seed=3), batch_indices(500, 32, 37, seed=4))
    epoch = torch.cat([batch_indices(500, 50, s, seed=0) for s in range(10)])
    assert sorted(epoch.tolist()) == list(range(500))  # one epoch visits every example once


def test_bad_inputs_and_non_finite_loss(tmp_path):
    with pytest.raises(ValueError, match="first dimension"):
        fit(model(), loss, [X, Y[:10]], cfg(), tmp_path / "a")
    with pytest.raises(ValueError, match="steps"):
        fit(model(), loss, [X, Y], cfg(steps=-1), tmp_path / "b")
    nan_loss = lambda m, b: loss(m, b) * float("nan")  # noqa: E731
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        fit(model(), nan_loss, [X, Y], cfg(), tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="train first"):
        load_weights(model(), tmp_path / "missing.pt")


def test_loop_settings_have_no_model_defaults():
    """What to train for how long at which rate belongs to each model's config: the loop has no opinion."""
    for missing in ("steps", "batch_size", "lr"):
        with pytest.raises(TypeError, match=missing):
            TrainConfig(**{k: v for k, v in dict(steps=1, batch_size=2, lr=0.1).items() if k != missing})


def test_run_config_written_atomically_and_guarded(tmp_path):
    write_run_config(tmp_path, dict(model=dict(a=(1, 2)), lr=0.1))
    assert json.loads((tmp_path / "config.json").read_text()) == dict(model=dict(a=[1, 2]), lr=0.1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # no temporary file left behind
    write_run_config(tmp_path, dict(model=dict(a=[1, 2]), lr=0.2))  # no checkpoint yet: a new run may replace it
    (tmp_path / "state.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="different run"):
        write_run_config(tmp_path, dict(model=dict(a=[1, 2]), lr=0.3))


def test_compiled_training_equals_eager_up_to_rounding_and_resumes(tmp_path):
    """TrainConfig.compile runs the same loss through torch.compile: the weights after 30 steps agree with the
    eager run's up to float rounding, and a compiled run resumes from a checkpoint an eager run wrote (the
    model has no dropout: compiled masks come from inductor's generator, not eager's)."""
    def mlp():
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))

    compiled_calls = []

    def counting_compile(obj, *args, **kw):
        compiled_calls.append(obj)
        return real_compile(obj, *args, **kw)

    real_compile = torch.compile
    settings = dict(eval_every=0, snapshot_steps=(), steps=30)
    eager, compiled, mixed = mlp(), mlp(), mlp()
    with mock.patch("torch.compile", counting_compile):
        fit(eager, loss, [X, Y], cfg(**settings), tmp_path / "eager")
        assert not compiled_calls
        fit(compiled, loss, [X, Y], cfg(**settings, compile=True), tmp_path / "compiled")
        assert len(compiled_calls) == 1
    fit(mixed, loss, [X, Y], cfg(**(settings | dict(steps=10))), tmp_path / "mixed")
    r = fit(mixed, loss, [X, Y], cfg(**settings, compile=True), tmp_path / "mixed")
    assert r.resumed_from == 10 and r.step == 30
    for a, b, c in zip(eager.state_dict().values(), compiled.state_dict().values(), mixed.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(c, a, rtol=1e-4, atol=1e-5)
    assert not torch.equal(eager[0].weight, mlp()[0].weight)  # it trained


@pytest.mark.parametrize("device,bf16,compile", [(d, b, c) for d in ("cpu", "cuda") for b in (False, True)
                                                  for c in (False, True)])
def test_compiled_bf16_on_cuda_is_refused_before_training(tmp_path, device, bf16, compile):
    """torch.compile + bf16 autocast on CUDA diverged on an H200 (bench/results/compile_autocast-cuda.md), with
    finite losses: fit refuses that one combination before moving the model, whether or not a GPU is here;
    every other combination passes the check."""
    refused = device == "cuda" and bf16 and compile
    if refused:
        with pytest.raises(ValueError, match="compile with bf16 autocast on CUDA.*drop --compile"):
            check_compile(torch.device(device), bf16, compile)
        m = model()
        before = [p.clone() for p in m.parameters()]
        with pytest.raises(ValueError, match="compile with bf16 autocast on CUDA"):
            fit(m, loss, [X, Y], cfg(steps=3, eval_every=0, snapshot_steps=(), bf16=bf16, compile=compile), tmp_path,
                device=device)
        assert all(torch.equal(a, b) and b.device.type == "cpu" for a, b in zip(before, m.parameters()))
        assert not (tmp_path / "state.pt").exists()
    else:
        check_compile(torch.device(device), bf16, compile)


@pytest.mark.parametrize("flags,slow", [({"avx", "avx2", "fma"}, True), ({"avx2", "avx512f"}, False),
                                        ({"avx2", "avx512f", "avx512_bf16"}, False), (set(), False)])
def test_bf16_on_a_cpu_without_avx512_warns_and_still_trains_in_bf16(tmp_path, flags, slow):
    """On an AVX2-only CPU bf16 is emulated (3.6x slower than fp32, bench/results/train_step_cpu-amd-family23.md):
    fit says so, and trains as asked (bf16 is part of the recipe). Unknown flags (not Linux): no guess."""
    with mock.patch("inversion.training.cpu_flags", return_value=frozenset(flags)), \
            mock.patch("torch.autocast", wraps=torch.autocast) as autocast, warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fit(model(), loss, [X, Y], cfg(steps=3, eval_every=0, snapshot_steps=(), bf16=True), tmp_path)
    slow_warnings = [w for w in seen if "without AVX-512" in str(w.message)]
    assert len(slow_warnings) == int(slow)
    assert all(call.kwargs.get("dtype") is torch.bfloat16 and call.kwargs.get("enabled") for call in autocast.call_args_list)
    assert autocast.call_count == 3


@pytest.mark.parametrize("device,compile,distributed_run,why", [
    ("cpu", False, False, "needs a CUDA device"),
    ("cuda", True, False, "choose one"),
    ("cuda", False, True, "torchrun"),
    ("cuda", False, False, None)])
def test_cuda_graph_is_refused_where_a_recorded_step_would_not_be_the_run_asked_for(tmp_path, device, compile,
                                                                                   distributed_run, why):
    """A recorded step needs CUDA, is a second way to run a step beside torch.compile, and is not measured under
    torchrun: each refusal names its reason, and fit refuses before moving the model or writing anything."""
    c = cfg(steps=3, eval_every=0, snapshot_steps=(), cuda_graph=True, compile=compile)
    if why is None:
        check_cuda_graph(torch.device(device), True, compile, distributed_run)
        return
    with pytest.raises(ValueError, match=why):
        check_cuda_graph(torch.device(device), True, compile, distributed_run)
    if device == "cpu":
        m = model()
        before = [p.clone() for p in m.parameters()]
        with pytest.raises(ValueError, match=why):
            fit(m, loss, [X, Y], c, tmp_path)
        assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
        assert not (tmp_path / "state.pt").exists()
    check_cuda_graph(torch.device(device), False, compile, distributed_run)  # off: no check


def test_recorded_adam_keeps_reading_the_decayed_learning_rate():
    """A recorded Adam step reads its learning rate from a tensor. Whatever the scheduler or load_state_dict put
    in the group (a float, in some torch versions), the recorded tensor gets the value and goes back in the
    group; the learning rate after k scheduler steps is lr * decay**k, as in an eager run."""
    w = torch.nn.Parameter(torch.zeros(3))
    lr = torch.tensor(1e-3)
    opt = torch.optim.Adam([w], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s)
    for k in range(1, 4):
        opt.step()
        sched.step()
        _keep_lr_tensors(opt, [lr])
        assert opt.param_groups[0]["lr"] is lr
        assert lr.item() == pytest.approx(1e-3 * 0.5**k)
    opt.param_groups[0]["lr"] = 2e-4  # as a float-holding state dict would leave it
    _keep_lr_tensors(opt, [lr])
    assert opt.param_groups[0]["lr"] is lr and lr.item() == pytest.approx(2e-4)
