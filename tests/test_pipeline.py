"""inversion.pipeline: keys, the cache (reuse, atomicity, resumption, import without checkpoints), parameter
sets and their validation, the explicit registry, the plans, the toy bound's exact entropies, and the
command line (including its alias ``python -m inversion.stages``)."""

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import yaml

from inversion import pipeline
from inversion.pipeline import plans
from inversion.pipeline.__main__ import main
from inversion.pipeline.background import toy_distribution, toy_exact_entropies
from inversion.pipeline.cache import Cache, CheckpointMismatch, StageMissing, iter_refs, pack, ref, stage, unpack
from inversion.pipeline.dynamics import SNAPSHOT
from inversion.pipeline.layers import CLASSIFIER, INVERSION, NCE, layers_plan
from inversion.pipeline.params import PARAMS_DIR, Params
from inversion.pipeline.schema import ConfigError

REPO = Path(__file__).resolve().parents[1]
CALLS = {"producer": 0, "consumer": 0, "flaky": 0}


@dataclass(frozen=True)
class ProducerConfig:
    value: int = 1
    scale: float = 2.0


@dataclass(frozen=True)
class ConsumerConfig:
    offset: int = 0


@dataclass(frozen=True)
class FlakyConfig:
    fail_until: int = 1


@stage("_test_producer", "1", ProducerConfig, checkpoints=("model.pt",))
def PRODUCER(ctx):
    CALLS["producer"] += 1
    (ctx.out / "model.pt").write_text(str(ctx.config.value * ctx.config.scale))
    np.save(ctx.out / "values.npy", np.arange(3) * ctx.config.value)
    return {"product": ctx.config.value * ctx.config.scale}


@stage("_test_consumer", "1", ConsumerConfig, deps=("producer",))
def CONSUMER(ctx):
    CALLS["consumer"] += 1
    model = ctx.dep("producer", need=("model.pt",))
    return {"total": float(model.path("model.pt").read_text()) + ctx.config.offset}


@stage("_test_flaky", "1", FlakyConfig)
def FLAKY(ctx):
    """Fails on its first ``fail_until`` calls, leaving work in the resumable work directory."""
    CALLS["flaky"] += 1
    ctx.work.mkdir(parents=True, exist_ok=True)
    marker = ctx.work / "progress.txt"
    done = int(marker.read_text()) if marker.exists() else 0
    marker.write_text(str(done + 1))
    if CALLS["flaky"] <= ctx.config.fail_until:
        raise RuntimeError("killed")
    return {"sessions": done + 1}


@pytest.fixture()
def cache(tmp_path):
    for k in CALLS:
        CALLS[k] = 0
    return Cache(Params("unit", {}), root=tmp_path, device="cpu", log=lambda m: None)


def test_keys_cover_config_dependencies_and_version():
    a = ref(PRODUCER, {"value": 1})
    assert a.key == ref(PRODUCER, {"value": 1, "scale": 2.0}).key  # defaults are part of the config
    assert a.key == ref(PRODUCER, {"value": 1, "scale": 2}).key  # a number is a number: 2 and 2.0 are one key
    assert a.config == {"value": 1, "scale": 2.0}
    assert a.key != ref(PRODUCER, {"value": 2}).key
    c1 = ref(CONSUMER, {}, producer=a)
    c2 = ref(CONSUMER, {}, producer=ref(PRODUCER, {"scale": 3.0}))
    assert c1.key != c2.key, "a changed upstream parameter must change every downstream key"
    bumped = dataclasses.replace(PRODUCER, version="2")
    assert ref(bumped, {"value": 1}).key != a.key, "bumping a stage's code version must change its key"


def test_keys_are_those_of_the_caches_made_before_the_layout_change():
    """Caches computed before the pipeline package (main at c0164d2) stay valid: the same configs give the
    same keys (measured over every stage of smoke, quick and paper; two are pinned here). The smoke set's §5.1
    classifier validated every 30 steps then (eval_every 0 since session 21), so the pins override that back."""
    smoke = pipeline.load_params("smoke", {"layers": {"classifier": {"eval_every": 30}}})
    assert plans.plan(smoke, ["background"])["background"]["toy"].dirname == "toy_bound-b1f731760b8e"
    assert layers_plan(smoke, "mnist")["classifier"].dirname == "classifier-f33d80b5ebe8"
    assert layers_plan(smoke, "mnist")["layers"]["conv1"]["inversion"].dirname == "inversion-7bf059c36649"


def test_ref_rejects_unknown_parameters_and_missing_dependencies():
    with pytest.raises(ConfigError, match="unknown key 'valeu' \\(did you mean 'value'\\?\\)"):
        ref(PRODUCER, {"valeu": 1})
    with pytest.raises(ConfigError, match="expected an integer, got the string"):
        ref(PRODUCER, {"value": "1"})
    with pytest.raises(KeyError, match="consumes"):
        ref(CONSUMER, {})
    with pytest.raises(ConfigError, match="missing required key 'layer'"):
        ref(INVERSION, {}, classifier=ref(CLASSIFIER, {"dataset": "mnist"}))
    with pytest.raises(ConfigError, match="unknown dataset 'mnsit'"):
        ref(CLASSIFIER, {"dataset": "mnsit"})
    with pytest.raises(ConfigError, match="steps must be an integer >= 0, got -3"):
        ref(CLASSIFIER, {"dataset": "mnist", "steps": -3})


def test_cache_computes_once_and_records_provenance(cache):
    r = ref(CONSUMER, {"offset": 1}, producer=ref(PRODUCER, {"value": 3}))
    res = cache.result(r)
    assert res.metrics == {"total": 7.0}
    again = Cache(cache.params, root=cache.root.parent, log=lambda m: None).result(r)  # a fresh process, same cache
    assert again.metrics == res.metrics and CALLS == {"producer": 1, "consumer": 1, "flaky": 0}
    info = json.loads((cache.root / r.dirname / "result.json").read_text())
    prov = info["provenance"]
    for field in ("commit", "dirty", "device", "torch", "python", "date", "wall_s", "param_set"):
        assert field in prov, field
    assert prov["param_set"] == "unit" and info["config"] == {"offset": 1}
    assert info["deps"] == {"producer": r.deps["producer"].dirname}
    # a changed parameter is a new result, never the stale one
    assert cache.result(ref(CONSUMER, {"offset": 2}, producer=r.deps["producer"])).metrics == {"total": 8.0}
    assert CALLS["consumer"] == 2 and CALLS["producer"] == 1


@stage("_test_execution", "1", ConsumerConfig)
def EXECUTION(ctx):
    if ctx.compile:  # as the PixelCNN++ stages do (inversion.pipeline.layers._fit_pixelcnn)
        ctx.execution["compiled"] = True
    return {"offset": ctx.config.offset}


def test_compile_is_how_a_stage_runs_not_what_it_is(tmp_path):
    """Cache(compile=True) reaches the stage body, does not change the key, and is recorded in the provenance;
    an eager run records nothing, as every result from before the option does."""
    r = ref(EXECUTION, {"offset": 4})
    eager = Cache(Params("unit", {}), root=tmp_path / "eager", device="cpu", log=lambda m: None).result(r)
    compiled = Cache(Params("unit", {}), root=tmp_path / "compiled", device="cpu", log=lambda m: None,
                     compile=True).result(r)
    assert eager.dir.name == compiled.dir.name == r.dirname
    prov = {name: json.loads((res.dir / "result.json").read_text())["provenance"] for name, res in
            (("eager", eager), ("compiled", compiled))}
    assert "compiled" not in prov["eager"] and prov["compiled"]["compiled"] is True


def test_compiled_bf16_on_cuda_is_refused_before_any_stage_runs(tmp_path, capsys):
    """`run --compile` on cuda with a bf16 PixelCNN++ still to train exits 2 naming the stages and the reason
    (inversion.training.check_compile), before computing anything."""
    data = yaml.safe_load((PARAMS_DIR / "smoke.yaml").read_text())
    data["name"] = "smoke-bf16"
    data["architectures"]["inversion"]["bf16"] = True
    params = tmp_path / "smoke-bf16.yaml"
    params.write_text(yaml.safe_dump(data))
    argv = ["run", "--params", str(params), "--only", "architectures", "--device", "cuda", "--cache", str(tmp_path / "c")]
    with mock.patch("torch.cuda.is_available", return_value=True):
        assert main(argv + ["--compile"]) == 2
    err = capsys.readouterr().err
    assert "--compile on cuda: " in err and "warm_inversion-" in err and "drop --compile" in err
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("result.json"))


@pytest.mark.parametrize("device,extra,why", [("cpu", [], "needs a CUDA device"),
                                               ("cuda", ["--compile"], "choose one")])
def test_cuda_graphs_where_they_cannot_run_are_refused_before_any_stage_runs(tmp_path, capsys, device, extra, why):
    """`run --cuda-graphs` on a CPU, or with --compile, exits 2 with the reason (inversion.training.check_cuda_graph)
    before computing anything."""
    argv = ["run", "--params", "smoke", "--only", "background", "--device", device, "--cache", str(tmp_path / "c"),
            "--cuda-graphs", *extra]
    with mock.patch("torch.cuda.is_available", return_value=True):
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--cuda-graphs: " in err and why in err
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("result.json"))


def test_failed_stage_leaves_no_result_and_resumes_from_its_work_dir(cache):
    r = ref(FLAKY, {"fail_until": 1})
    with pytest.raises(RuntimeError, match="killed"):
        cache.result(r)
    assert not (cache.root / r.dirname).exists(), "a killed stage must not leave a (partial) result directory"
    assert not list(cache.root.glob(".tmp-*")), "temporary directories are cleaned up"
    assert (cache.root / f"{r.dirname}.work" / "progress.txt").exists(), "the work directory survives the kill"
    res = cache.result(r)
    assert res.metrics == {"sessions": 2}, "the second session continued from the first one's work"
    assert not (cache.root / f"{r.dirname}.work").exists(), "the work directory goes once the stage is done"
    # both processes are in the provenance (a resumed training may span commits and machines)
    sessions = res.provenance["sessions"]
    assert len(sessions) == 2 and all(s["device"] == res.provenance["device"] for s in sessions)
    assert {"commit", "dirty", "torch", "started"} <= set(sessions[0])
    assert sessions[0]["started"] <= sessions[1]["started"]
    # computed by one process: no sessions list
    assert "sessions" not in cache.result(ref(FLAKY, {"fail_until": 0})).provenance


def test_a_work_folder_from_before_the_sessions_record_is_marked_unrecorded(cache):
    """A half-trained work folder left by a process that did not record itself (code older than the sessions
    record) must not pass as computed in one session: its first entry says it is unrecorded."""
    r = ref(FLAKY, {"fail_until": 0})
    work = cache.root / f"{r.dirname}.work"
    work.mkdir(parents=True)
    (work / "progress.txt").write_text("3")
    res = cache.result(r)
    assert res.metrics == {"sessions": 4}
    assert res.provenance["sessions"][0] == {"unrecorded": True} and len(res.provenance["sessions"]) == 2


def test_results_import_without_checkpoints(cache, tmp_path):
    prod = ref(PRODUCER, {"value": 5})
    cons = ref(CONSUMER, {}, producer=prod)
    cache.result(cons)
    # copy the cache the way git would carry it: result.json and arrays, no *.pt
    other = tmp_path / "elsewhere"
    for d in cache.root.iterdir():
        if d.is_dir() and not d.name.endswith(".work"):
            (other / "unit" / d.name).mkdir(parents=True)
            for f in d.iterdir():
                if f.suffix != ".pt":
                    (other / "unit" / d.name / f.name).write_bytes(f.read_bytes())
    imported = Cache(cache.params, root=other, log=lambda m: None)
    assert imported.status(prod) == "cached (no checkpoint)"
    assert imported.result(cons).metrics == {"total": 10.0}
    assert imported.result(prod).metrics == {"product": 10.0}
    assert CALLS["producer"] == 1, "results whose consumers are done are reused without their checkpoints"
    # a new consumer needs the checkpoint: the producer is recomputed (and only then)
    assert imported.result(ref(CONSUMER, {"offset": 1}, producer=prod)).metrics == {"total": 11.0}
    assert CALLS["producer"] == 2 and (other / "unit" / prod.dirname / "model.pt").exists()


def test_a_result_records_the_checkpoints_it_made_and_opened_and_refuses_a_foreign_one(cache):
    """The producer's result.json records its checkpoint's sha256, the consumer's the sha256 of the checkpoint
    it opened (so results computed in different sessions can be checked to share one start); a checkpoint
    that is not the one its result.json describes is refused, not silently used."""
    prod = ref(PRODUCER, {"value": 5})
    cache.result(ref(CONSUMER, {}, producer=prod))
    made = json.loads((cache.root / prod.dirname / "result.json").read_text())
    sha = hashlib.sha256((cache.root / prod.dirname / "model.pt").read_bytes()).hexdigest()
    assert made["checksums"] == {"model.pt": sha}, "only checkpoints are hashed; arrays keep their sizes"
    consumer = json.loads((cache.root / ref(CONSUMER, {}, producer=prod).dirname / "result.json").read_text())
    assert consumer["opened"] == {f"{prod.dirname}/model.pt": sha} and made["opened"] == {}
    # another run's checkpoint beside this result.json (as when a result.json is restored from git)
    (cache.root / prod.dirname / "model.pt").write_text("12.5")
    with pytest.raises(CheckpointMismatch, match=f"{prod.dirname}/model.pt has sha256 .* restored from git"):
        cache.result(ref(CONSUMER, {"offset": 1}, producer=prod))
    assert not (cache.root / ref(CONSUMER, {"offset": 1}, producer=prod).dirname).exists()
    # a result written before checksums were recorded is opened as before
    del made["checksums"]
    (cache.root / prod.dirname / "result.json").write_text(json.dumps(made))
    assert cache.result(ref(CONSUMER, {"offset": 1}, producer=prod)).metrics == {"total": 13.5}


def test_a_resumed_stage_refuses_a_dependency_recomputed_since_it_started(cache):
    """A half-trained stage keeps the sha256 of the dependency files it opened first (``opened.json`` in its
    work folder); if a later session finds other bytes there (the classifier recomputed on another CPU), it
    refuses to resume rather than continue the training on other inputs."""
    prod = ref(PRODUCER, {"value": 5})
    cons = ref(CONSUMER, {}, producer=prod)
    cache.result(prod)
    work = cache.root / f"{cons.dirname}.work"
    work.mkdir(parents=True)
    sha = hashlib.sha256((cache.root / prod.dirname / "model.pt").read_bytes()).hexdigest()
    (work / "opened.json").write_text(json.dumps({f"{prod.dirname}/model.pt": "0" * 64}))  # a foreign start
    # nothing of the stage's own to resume: it starts afresh on today's bytes
    assert cache.result(cons).info["opened"] == {f"{prod.dirname}/model.pt": sha}
    shutil.rmtree(cache.root / cons.dirname)
    work.mkdir(parents=True)
    (work / "state.pt").write_text("half-trained")  # a training's state, begun on a foreign start
    (work / "opened.json").write_text(json.dumps({f"{prod.dirname}/model.pt": "0" * 64}))
    with pytest.raises(CheckpointMismatch, match=f"started from {prod.dirname}/model.pt with sha256 0000.*delete"):
        cache.result(cons)
    assert not (cache.root / cons.dirname).exists()
    (work / "opened.json").write_text(json.dumps({f"{prod.dirname}/model.pt": sha}))  # its own start
    res = cache.result(cons)
    assert res.metrics == {"total": 10.0} and res.info["opened"] == {f"{prod.dirname}/model.pt": sha}
    # the hand-made work folder (no process recorded it), the process that refused, the one that finished
    assert [s.get("unrecorded", False) for s in res.provenance["sessions"]] == [True, False, False]


def test_a_refused_resume_names_the_machines_that_trained_it(cache):
    """The usual cause of a recomputed dependency is another CPU (the FC classifier's bytes differ between an
    Intel Xeon and an AMD EPYC): the refusal names the devices the work folder's sessions ran on, so the reader
    knows where it can resume."""
    prod = ref(PRODUCER, {"value": 6})
    cons = ref(CONSUMER, {}, producer=prod)
    cache.result(prod)
    work = cache.root / f"{cons.dirname}.work"
    work.mkdir(parents=True)
    (work / "state.pt").write_text("half-trained")
    (work / "opened.json").write_text(json.dumps({f"{prod.dirname}/model.pt": "0" * 64}))
    (work / "sessions.json").write_text(json.dumps([{"commit": "0" * 40, "dirty": False, "torch": torch.__version__,
                                                      "device": "cpu: Another CPU, 2 threads",
                                                      "started": "2026-12-03T00:00:00+00:00"}]))
    with pytest.raises(CheckpointMismatch, match=r"trained on cpu: Another CPU, 2 threads, this process runs on "
                                                 r"cpu: .*new lineage"):
        cache.result(cons)


def test_compute_false_reads_only(cache):
    r = ref(PRODUCER, {"value": 9})
    ro = Cache(cache.params, root=cache.root.parent, compute=False, log=lambda m: None)
    with pytest.raises(StageMissing, match="python -m inversion.pipeline run"):
        ro.result(r)
    cache.result(r)
    assert ro.result(r).metrics == {"product": 18.0}


@pytest.mark.parametrize("name", ["smoke", "quick", "paper"])
def test_parameter_sets_plan_every_stage(name):
    P = pipeline.load_params(name)
    assert P.name == name
    header = [l for l in (REPO / "params" / f"{name}.yaml").read_text().splitlines() if l.startswith("#")]
    assert len(header) >= 3, "each parameter set says in a comment what it scales down"
    plan = plans.plan(P)
    assert {"background", "layers", "architectures", "dynamics"} <= set(plan)
    refs = list(iter_refs(plan))
    kinds = {r.stage.name for r in refs}
    assert {"toy_bound", "classifier", "snapshot", "inversion", "nce", "decoder", "samples", "neighbours"} <= kinds
    for ds, p in plan["layers"].items():
        assert list(p["layers"]) == ["conv1", "conv2", "fc3", "logits"]
        assert p["figure2"].config["keep_topk"] and p["figure2"].deps["inversion"] is p["layers"]["fc3"]["inversion"]
    assert len({r.dirname for r in refs}) == len(refs), "no two distinct stages share a key"


def test_sets_differ_and_overrides_apply():
    smoke, quick, paper = (pipeline.load_params(n) for n in ("smoke", "quick", "paper"))
    assert layers_plan(smoke, "mnist")["classifier"].key != layers_plan(quick, "mnist")["classifier"].key
    assert {"mnist", "fashion_mnist"} <= set(quick.section("layers").datasets)
    assert {"svhn", "cifar10"} <= set(paper.section("layers").datasets)
    cifar = layers_plan(paper, "cifar10")["layers"]
    assert cifar["conv1"]["inversion"].config["dropout"] == 0.1  # per_layer "cifar10/conv1"
    assert cifar["fc3"]["inversion"].config["context_dropout"] == 0.2
    assert cifar["fc3"]["inversion"].config["likelihood"] == "logistic_mixture"  # per_dataset
    assert layers_plan(paper, "mnist")["layers"]["conv1"]["inversion"].config["dropout"] == 0.5
    # overrides: a changed parameter changes exactly the keys downstream of it
    base = layers_plan(quick, "mnist")
    changed = layers_plan(pipeline.load_params("quick", {"layers": {"inversion": {"lr": 5.0e-4}}}), "mnist")
    assert changed["classifier"].key == base["classifier"].key
    assert changed["layers"]["fc3"]["decoder"].key == base["layers"]["fc3"]["decoder"].key
    assert changed["layers"]["fc3"]["inversion"].key != base["layers"]["fc3"]["inversion"].key
    assert changed["layers"]["fc3"]["samples"].key != base["layers"]["fc3"]["samples"].key
    # a per_dataset entry wins over the section's value, overridden or not (quick trains Fashion-MNIST's
    # models in fp32, MNIST's in bf16)
    fm = layers_plan(quick, "fashion_mnist")["layers"]["fc3"]["inversion"]
    assert fm.config["bf16"] is False and base["layers"]["fc3"]["inversion"].config["bf16"] is True
    fp32 = pipeline.load_params("quick", {"layers": {"inversion": {"bf16": False}}})
    assert layers_plan(fp32, "fashion_mnist")["layers"]["fc3"]["inversion"].key == fm.key
    assert layers_plan(fp32, "mnist")["layers"]["fc3"]["inversion"].config["bf16"] is False
    shorter = pipeline.load_params("quick", {"layers": {"inversion": {"steps": 351, "bf16": True}}})
    assert layers_plan(shorter, "fashion_mnist")["layers"]["fc3"]["inversion"].config["bf16"] is False
    assert layers_plan(shorter, "fashion_mnist")["layers"]["fc3"]["inversion"].config["steps"] == 351


def test_toy_entropies_are_exact():
    states, p = toy_distribution(0.1)
    assert states.shape == (512, 3, 3) and abs(p.sum() - 1) < 1e-12 and (p > 0).all()
    ex = toy_exact_entropies(0.1, ["none", "count", "rows", "image"])
    hx = -(p * np.log(p)).sum()
    assert ex["H(x)"] == pytest.approx(hx) and ex["none"] == pytest.approx(hx)
    assert ex["image"] == pytest.approx(0.0, abs=1e-12)
    # brute force H(x | count) = sum_c p(c) H(x | c)
    counts = states.reshape(512, -1).sum(1)
    h = 0.0
    for c in np.unique(counts):
        q = p[counts == c] / p[counts == c].sum()
        h += p[counts == c].sum() * -(q * np.log(q)).sum()
    assert ex["count"] == pytest.approx(h)
    assert ex["image"] < ex["rows"] < ex["count"] < ex["none"], "more informative h, lower H(x | h)"


def test_command_line_runs_lists_and_shows(tmp_path):
    env = {**os.environ, "INVERSION_CACHE": str(tmp_path)}
    run = lambda *a: subprocess.run([sys.executable, "-m", "inversion.pipeline", *a], env=env, capture_output=True,  # noqa: E731
                                    text=True, timeout=600)
    out = run("list", "--params", "smoke", "--only", "background")
    assert out.returncode == 0 and "missing" in out.stdout and "0/1 stages cached" in out.stdout
    out = run("run", "--params", "smoke", "--only", "background")
    assert out.returncode == 0, out.stderr
    assert "1 stages computed" in out.stdout
    out = run("list", "--params", "smoke", "--only", "background")
    assert "1/1 stages cached" in out.stdout
    out = run("costs", "--params", "smoke", "--only", "background")
    assert out.returncode == 0 and re.search(r"^  toy_bound +\d+\.\d min +1 stages$", out.stdout, re.M), out.stdout
    assert "1/1 stages cached" in out.stdout
    key = plans.plan(pipeline.load_params("smoke"), ["background"])["background"]["toy"].key
    out = run("show", "--params", "smoke", key)
    info = json.loads(out.stdout)
    assert info["stage"] == "toy_bound" and info["provenance"]["param_set"] == "smoke"
    final = info["metrics"]["final"]
    assert set(final) == {"none", "count", "image"}
    assert all(v["gap"] >= -1e-6 for v in final.values()), "the exact cross-entropy never beats H(x | h)"


def test_pack_and_unpack_carry_results_but_not_checkpoints(cache, tmp_path):
    cons = ref(CONSUMER, {"offset": 2}, producer=ref(PRODUCER, {"value": 4}))
    cache.result(cons)
    archive = tmp_path / "results.tgz"
    assert sorted(pack(cache, archive)) == sorted([cons.dirname, cons.deps["producer"].dirname])
    other = Cache(cache.params, root=tmp_path / "other", log=lambda m: None)
    assert sorted(unpack(other, archive)) == sorted([cons.dirname, cons.deps["producer"].dirname])
    assert not list(other.root.rglob("*.pt")), "checkpoints stay behind"
    assert (other.root / cons.deps["producer"].dirname / "values.npy").exists()
    before = dict(CALLS)
    assert other.result(cons).metrics == {"total": 10.0} and CALLS == before
    assert unpack(other, archive) == [], "results already present are kept"


def test_wall_time_excludes_dependencies_computed_on_the_way(cache):
    import time as _time

    @dataclass(frozen=True)
    class SlowConfig:
        seconds: float = 0.3

    @dataclass(frozen=True)
    class NoConfig:
        pass

    @stage("_test_slow", "1", SlowConfig)
    def slow(ctx):
        _time.sleep(ctx.config.seconds)
        return {}

    @stage("_test_after_slow", "1", NoConfig, deps=("slow",))
    def after(ctx):
        ctx.dep("slow")
        return {}

    r = ref(after, {}, slow=ref(slow, {}))
    res = cache.result(r)  # computes the slow dependency from inside
    assert res.provenance["wall_s"] < 0.2
    assert cache.result(r.deps["slow"]).provenance["wall_s"] >= 0.3


def test_plan_costs_count_each_stage_once_in_the_first_part_that_needs_it(cache):
    shared = ref(PRODUCER, {"value": 4})
    a, b = ref(CONSUMER, {"offset": 1}, producer=shared), ref(CONSUMER, {"offset": 2}, producer=shared)
    missing = ref(CONSUMER, {"offset": 3}, producer=ref(PRODUCER, {"value": 5}))
    cache.result(a)
    cache.result(b)
    the_plan = {"background": {"a": a}, "layers": {"mnist": {"b": b, "m": missing}}}
    costs = {(c.part, c.stage): c for c in plans.plan_costs(the_plan, cache)}
    assert set(costs) == {("background", "_test_producer"), ("background", "_test_consumer"),
                          ("layers:mnist", "_test_consumer"), ("layers:mnist", "_test_producer")}
    assert (costs["background", "_test_producer"].n, costs["background", "_test_producer"].cached) == (1, 1)
    # b's producer is a's: counted in background only; the missing chain counts, cached 0 of it
    assert (costs["layers:mnist", "_test_consumer"].n, costs["layers:mnist", "_test_consumer"].cached) == (2, 1)
    assert (costs["layers:mnist", "_test_producer"].n, costs["layers:mnist", "_test_producer"].cached) == (1, 0)
    wall = cache.result(b).provenance["wall_s"]
    assert costs["layers:mnist", "_test_consumer"].seconds == pytest.approx(wall)
    assert costs["layers:mnist", "_test_producer"].seconds == 0.0


def test_plan_costs_count_a_resumed_training_by_its_training_time_over_all_sessions(cache):
    import time as _time

    @dataclass(frozen=True)
    class ResumedConfig:
        seconds: float = 1000.0

    @stage("_test_resumed", "1", ResumedConfig)
    def resumed(ctx):  # as a model whose earlier sessions trained it, the checkpoint carrying their time
        _time.sleep(0.05)
        return {"train_seconds": ctx.config.seconds}

    r, short = ref(resumed, {}), ref(resumed, {"seconds": 0.01})
    assert cache.result(r).provenance["wall_s"] < 1.0
    costs = plans.plan_costs({"background": {"r": r}}, cache)
    assert [c.seconds for c in costs] == [1000.0]
    # when the training time is the smaller (this run did it all, plus start-up), the wall time counts
    assert plans.stage_seconds(cache.result(short)) == cache.result(short).provenance["wall_s"] >= 0.05

@pytest.mark.parametrize("name", ["smoke", "quick", "paper"])
def test_architectures_and_dynamics_plans(name):
    P = pipeline.load_params(name)
    arch = plans.plan(P, ["architectures"])["architectures"]
    assert list(arch) == ["fc", "conv", "conv_gmp"]
    for a, r in arch.items():
        assert r["classifier"].config["arch"] == a and r["classifier"].config["dataset"] == "affnist"
        assert r["inversion"].config["layer"] == "fc3" and r["nce"].deps["inversion"] is r["inversion"]
        assert r["samples"].deps["classifier"] is r["classifier"]
    dyn = plans.plan(P, ["dynamics"])["dynamics"]
    steps = dyn["steps"]
    assert steps[0] == 0 and steps == sorted(steps) and set(dyn["regimes"]) == {"regular", "overfit"}
    reg, ovf = dyn["regimes"]["regular"], dyn["regimes"]["overfit"]
    for R in (reg, ovf):
        c = R["classifier"].config
        assert c["patience"] == 0 and c["steps"] == max(steps) and c["snapshot_steps"] == steps
        for layer in dyn["layers"]:
            for t in steps:
                inv = R["inversion"][layer][t]
                assert inv.deps["classifier"] is R["snapshots"][t] and inv.config["layer"] == layer
                assert R["nce"][layer][t].deps["inversion"] is inv
    assert ovf["classifier"].config["overfit_n"] == 100 and ovf["classifier"].config["dropout"] == [0.0] * 3
    # both start from the same random network, so the step-0 snapshot (and its inversion models) is shared;
    # every later snapshot is the regime's own
    assert ovf["snapshots"][0] is reg["snapshots"][0]
    assert all(ovf["snapshots"][t].key != reg["snapshots"][t].key for t in steps[1:])
    seeds = list(P.section("dynamics").replicate_seeds)
    for layer in dyn["layers"]:
        assert sorted(dyn["replicates"][layer]) == sorted(seeds)
        for seed, nce in dyn["replicates"][layer].items():
            inv = nce.deps["inversion"]
            assert inv.config["seed"] == seed != reg["inversion"][layer][steps[-1]].config["seed"]
            assert {**inv.config, "seed": 0} == reg["inversion"][layer][steps[-1]].config, "only the seed differs"
            assert inv.deps["classifier"] is reg["snapshots"][steps[-1]]
    other_seed = plans.plan(pipeline.load_params(name, {"dynamics": {"regimes": {"overfit": {"seed": 1}}}}), ["dynamics"])["dynamics"]
    assert other_seed["regimes"]["overfit"]["snapshots"][0].key != reg["snapshots"][0].key


def test_snapshot_is_the_classifier_after_exactly_that_many_updates(tmp_path):
    import torch

    from inversion.models.classifier import load_classifier

    P = Params("unit", {})
    cache = Cache(P, root=tmp_path, device="cpu", log=lambda m: None)
    clf = ref(CLASSIFIER, {"dataset": "mnist", "steps": 6, "snapshot_steps": [0, 3, 6], "patience": 0,
                             "eval_every": 3, "n_train": 256, "overfit_n": 50, "dropout": [0.0] * 3})
    snaps = {t: ref(SNAPSHOT, {"dataset": "mnist", "step": t, "n_eval": 100}, classifier=clf) for t in (0, 3, 6)}
    res = {t: cache.result(r) for t, r in snaps.items()}
    weights = {t: load_classifier(res[t].dir, "model.pt").state_dict() for t in res}
    assert not torch.equal(weights[0]["fc3.weight"], weights[3]["fc3.weight"])
    clf_dir = cache.result(clf).dir
    for t in res:
        ref_w = load_classifier(clf_dir, f"step_{t}.pt").state_dict()
        assert all(torch.equal(ref_w[k], weights[t][k]) for k in ref_w)
        m = res[t].metrics
        assert m["step"] == t and 0 <= m["test_accuracy"] <= 1 and m["n_train_eval"] == 50  # the overfit set
    # a snapshot stands in for a classifier downstream
    inv = ref(INVERSION, {"layer": "fc3", "n_filters": 4, "n_resnet": 1, "n_resolutions": 2, "steps": 2,
                            "batch_size": 8, "n_train": 64, "dropout": 0.0}, classifier=snaps[3])
    nce = cache.result(ref(NCE, {"n_test": 16}, classifier=snaps[3], inversion=inv))
    assert nce.metrics["n"] == 16 and np.isfinite(nce.metrics["nats"])
    with pytest.raises(ValueError, match="snapshot of a mnist classifier"):
        cache.result(ref(SNAPSHOT, {"dataset": "fashion_mnist", "step": 3}, classifier=clf))


# ---- bad configuration: a clear error, never a silently different run ------------------------------------


@pytest.mark.parametrize("override,match", [
    ({"layers": {"inversion": {"stpes": 10}}}, r"^override: layers\.inversion\.stpes: unknown key 'stpes' \(did you mean 'steps'\?\)"),
    ({"layers": {"figure1": {"n_imgs": 3}}}, r"^override: layers\.figure1\.n_imgs: unknown key 'n_imgs' \(did you mean 'n_images'\?\)"),
    ({"layers": {"widget": {"images": 3}}}, r"layers\.widget\.images: unknown key .*did you mean 'n_images'"),
    ({"layerz": {}}, r"^override: layerz: unknown section or key 'layerz' \(did you mean 'layers'\?\)"),
    ({"layers": {"inversion": {"steps": -1}}}, r"^override: layers\.inversion\.steps must be an integer >= 0, got -1"),
    ({"layers": {"inversion": {"steps": 2.5}}}, r"layers\.inversion\.steps: expected an integer, got float 2\.5"),
    ({"layers": {"inversion": {"bf16": "yes"}}}, r"layers\.inversion\.bf16: expected true or false, got the string 'yes'"),
    ({"layers": {"inversion": {"lr": "1e-3"}}}, r"layers\.inversion\.lr: expected a number, got the string '1e-3' \(YAML reads"),
    ({"layers": {"inversion": {"likelihood": "softmx"}}}, r"likelihood"),
    ({"layers": {"layers": ["conv1", "fc4"]}}, r"^override: layers\.layers\[1\]: 'fc4' is not a layer of the conv classifier \(conv1, conv2, fc3, logits\) \(did you mean 'fc3'\?\)"),
    ({"layers": {"datasets": ["mnist", "cifar"]}}, r"layers\.datasets\[1\]: unknown dataset 'cifar'"),
    ({"layers": {"sampling": {"method": "fast"}}}, r"layers\.sampling\.method: 'fast' is not one of \['naive', 'fixed_point', 'cached'\]"),
    ({"layers": {"per_dataset": {"mnist": {"inversion": {"dropuot": 0.1}}}}}, r"unknown key 'dropuot' \(did you mean 'dropout'\?\)"),
    ({"layers": {"per_layer": {"conv7": {"inversion": {"dropout": 0.1}}}}}, r"layers\.per_layer\.conv7: 'conv7' is not a layer"),
    ({"architectures": {"archs": ["fc", "gmp"]}}, r"architectures\.archs\[1\]: unknown network 'gmp' \(did you mean 'conv_gmp'\?\)"),
    ({"architectures": {"classifier": {"arch": "fc"}}}, r"architectures\.classifier\.arch: set per network"),
    ({"dynamics": {"regimes": {"overfit": {"overfit_m": 3}}}}, r"dynamics\.regimes\.overfit\.overfit_m: unknown key 'overfit_m' \(did you mean 'overfit_n'\?\)"),
    ({"dynamics": {"classifier": {"steps": 5}}}, r"dynamics\.classifier\.steps: set by the plan"),
    ({"dynamics": {"layers": ["fc3", "fc1"]}}, r"dynamics\.layers\[1\]: 'fc1' is not a layer"),
    ({"estimators": {"sweep": {"step": 7}}}, r"^override: estimators\.sweep\.step: 7 is not a dynamics checkpoint"),
    ({"estimators": {"sweep": {"regime": "lazy"}}}, r"estimators\.sweep\.regime: 'lazy' is not a dynamics regime"),
    ({"estimators": {"sweep": {"sizes": [2, 100000]}}}, r"sweep sizes must be integers in \(k, n_test\]"),
    ({"estimators": {"k": 0}}, r"k \(neighbours"),
    ({"device": "gpu"}, r"device: 'gpu' is not one of auto, cpu, cuda"),
    ({"scope": ["a", "list"]}, r"^override: scope: expected a string, got \['a', 'list'\]"),
])
def test_bad_overrides_are_errors_that_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        pipeline.load_params("smoke", override)


def test_errors_in_a_file_name_the_file(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("name: mine\nlayers:\n  datasets: [mnist]\n  layers: [conv1]\n  inversion: {stpes: 3}\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: layers\.inversion\.stpes: unknown key 'stpes' \(did you mean"):
        pipeline.load_params(str(bad))
    with pytest.raises(ConfigError, match=r"no parameter set 'smok' .*\(did you mean 'smoke'\?\); known sets: paper, quick, smoke"):
        pipeline.load_params("smok")
    good = tmp_path / "good.yaml"
    good.write_text("name: good\nlayers:\n  datasets: [mnist]\n  layers: [conv1, fc3]\n  inversion: {steps: 3}\n")
    P = pipeline.load_params(str(good))
    assert P.section("layers").inversion.steps == 3 and P.section("layers").layers == ("conv1", "fc3")
    assert P.section("layers").inversion.n_filters == 64, "what the file leaves out is the stage's default"


def test_an_override_that_is_valid_changes_the_run():
    P = pipeline.load_params("smoke", {"layers": {"inversion": {"steps": 7}, "layers": ["conv1", "logits"]}})
    plan = layers_plan(P, "mnist")
    assert list(plan["layers"]) == ["conv1", "logits"] and "figure2" not in plan  # figure2.layer fc3 not run
    assert {p["inversion"].config["steps"] for p in plan["layers"].values()} == {7}


def test_the_registry_is_explicit_and_complete():
    stages = plans.STAGES
    assert set(stages) == {"toy_bound", "classifier", "snapshot", "inversion", "nce", "decoder", "samples",
                           "neighbours", "estimates", "estimator_sweep", "flow_inversion", "vae_inversion",
                           "gan_inversion", "supervised_vae", "inverter_eval", "unconditional", "warm_inversion",
                           "unconditional_nce"}
    assert all(s.name == name for name, s in stages.items())
    for name in ("smoke", "quick", "paper"):
        for r in iter_refs(plans.plan(pipeline.load_params(name))):
            assert stages[r.stage.name] is r.stage, f"{r.stage.name} is planned but not registered"
    # declaring a stage registers nothing anywhere: the test stages of this file are in no registry
    assert "_test_producer" not in stages
    assert list(plans.SECTIONS) == ["background", "layers", "architectures", "dynamics", "estimators", "inverters"]


def _cli(*args, module="inversion.pipeline", env=None):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args,match", [
    (("list", "--params", "smoke", "--only", "bogus"), r"--only 'bogus': not a section of parameter set 'smoke'; valid: background, layers, architectures, dynamics, estimators, inverters, layers:mnist, layers:fashion_mnist, inverters:mnist"),
    (("list", "--params", "smoke", "--only", "layers:svhn"), r"--only 'layers:svhn'"),
    (("list", "--params", "nosuchset"), r"no parameter set 'nosuchset'"),
    (("show", "--params", "smoke", "ffffffffffff"), r"show: no result matching 'ffffffffffff'"),
])
def test_command_line_user_errors_print_one_line_and_exit_2(args, match, tmp_path):
    out = _cli(*args, env={"INVERSION_CACHE": str(tmp_path)})
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    import re

    assert re.search(match, out.stderr), out.stderr


def test_the_old_command_name_is_an_alias(tmp_path):
    out = _cli("list", "--params", "smoke", "--only", "background", module="inversion.stages",
               env={"INVERSION_CACHE": str(tmp_path)})
    assert out.returncode == 0 and "0/1 stages cached" in out.stdout, out.stderr
    out = _cli("stages")
    assert out.returncode == 0 and "inversion (v1) <- classifier" in out.stdout and "layer=<required>" in out.stdout


@pytest.mark.parametrize("name", ["smoke", "quick", "paper"])
def test_every_shipped_set_says_what_it_can_test(name):
    scope = pipeline.load_params(name).scope
    assert len(scope.split()) >= 20 and "\n" not in scope  # one paragraph: the introduction opens with it


# ---- warm start: inversion models started from the dataset's unconditional PixelCNN++ ---------------------


def test_warm_start_plans_share_one_unconditional_model_and_leave_from_scratch_keys_alone():
    from inversion.pipeline.layers import UNCONDITIONAL_NCE, WARM_INVERSION, unconditional_nce_ref

    cold = plans.plan(pipeline.load_params("smoke"), ["layers", "architectures", "dynamics"])
    warm_p = pipeline.load_params("smoke", {"layers": {"inversion": {"warm_start_steps": 7}},
                                            "dynamics": {"inversion": {"warm_start_steps": 7}}})
    warm = plans.plan(warm_p, ["layers", "architectures", "dynamics"])
    lay_cold, lay_warm = cold["layers"]["mnist"]["layers"], warm["layers"]["mnist"]["layers"]
    priors = set()
    for layer in lay_warm:
        inv_c, inv_w = lay_cold[layer]["inversion"], lay_warm[layer]["inversion"]
        assert inv_c.stage is INVERSION and "warm_start_steps" not in inv_c.config
        assert inv_w.stage is WARM_INVERSION and inv_w.config == inv_c.config  # the same model, another start
        prior = inv_w.deps["unconditional"]
        assert prior.config["steps"] == 7 and prior.config["seed"] == 0 and prior.config["dataset"] == "mnist"
        priors.add(prior.key)
    assert len(priors) == 1, "one unconditional model per dataset and settings"
    # architectures were not asked to warm start: their keys are those of the cold plan
    assert {a: r["nce"].key for a, r in warm["architectures"].items()} == \
           {a: r["nce"].key for a, r in cold["architectures"].items()}
    # §5.3 replicates keep the warm start and its unconditional model; only the seed differs
    dyn = warm["dynamics"]
    for layer, reps in dyn["replicates"].items():
        main = dyn["regimes"]["regular"]["inversion"][layer][dyn["steps"][-1]]
        for seed, nce in reps.items():
            inv = nce.deps["inversion"]
            assert inv.stage is WARM_INVERSION and inv.deps["unconditional"].key == main.deps["unconditional"].key
            assert {**inv.config, "seed": main.config["seed"]} == main.config
    S = warm_p.section("layers", "mnist")
    u = unconditional_nce_ref(S.inversion, "mnist", 32)
    assert u.stage is UNCONDITIONAL_NCE and u.deps["unconditional"].key in priors
    assert unconditional_nce_ref(pipeline.load_params("smoke").section("layers", "mnist").inversion, "mnist", 32) is None
    with pytest.raises(ConfigError, match="warm_start_steps"):
        pipeline.load_params("smoke", {"layers": {"inversion": {"warm_start_steps": -1}}}).section("layers", "mnist")
    # a learning rate of its own for the conditional phase: the warm models change, their start does not
    slow = plans.plan(pipeline.load_params("smoke", {"layers": {"inversion": {"warm_start_steps": 7,
                                                                             "warm_start_lr": 1e-4}}}), ["layers"])
    inv_slow, inv_w = slow["layers"]["mnist"]["layers"]["fc3"]["inversion"], lay_warm["fc3"]["inversion"]
    assert inv_slow.config["lr"] == 1e-4 and inv_w.config["lr"] == inv_w.deps["unconditional"].config["lr"] != 1e-4
    assert inv_slow.deps["unconditional"].key == inv_w.deps["unconditional"].key
    with pytest.raises(ConfigError, match="warm_start_lr"):
        pipeline.load_params("smoke", {"layers": {"inversion": {"warm_start_lr": 0}}}).section("layers", "mnist")


def test_a_warm_started_model_is_the_unconditional_one_until_it_trains(tmp_path):
    from inversion.pipeline.layers import InversionSettings, inversion_ref, unconditional_nce_ref

    cache = Cache(Params("unit", {}), root=tmp_path, device="cpu", log=lambda m: None)
    clf = ref(CLASSIFIER, {"dataset": "mnist", "steps": 3, "patience": 0, "n_train": 128})
    settings = dict(n_filters=4, n_resnet=1, n_resolutions=2, batch_size=8, n_train=64, dropout=0.0,
                    warm_start_steps=3)
    u_nce = cache.result(unconditional_nce_ref(InversionSettings(**settings, steps=0), "mnist", 16))
    u_lp = u_nce.arrays("log_probs.npy")["array"]
    for steps in (0, 2):
        inv = inversion_ref(InversionSettings(**settings, steps=steps), "fc3", clf, "mnist")
        lp = cache.result(ref(NCE, {"n_test": 16}, classifier=clf, inversion=inv)).arrays("log_probs.npy")["array"]
        if steps == 0:
            np.testing.assert_array_equal(lp, u_lp)  # exactly p(x): the conditioning starts at zero
        else:
            assert np.isfinite(lp).all() and not np.array_equal(lp, u_lp)
    res = cache.result(inv)
    assert res.stage == "warm_inversion" and res.metrics["steps"] == 2


def test_paired_seeds_train_every_compared_model_with_every_seed():
    P = pipeline.load_params("smoke", {"dynamics": {"paired_seeds": True}})
    dyn = plans.plan(P, ["dynamics"])["dynamics"]
    seeds = sorted(P.section("dynamics").replicate_seeds)
    assert seeds and set(dyn["paired"]) == set(dyn["regimes"])
    for g, per_layer in dyn["paired"].items():
        for layer, per_step in per_layer.items():
            assert sorted(per_step) == dyn["steps"]
            for t, reps in per_step.items():
                main = dyn["regimes"][g]["inversion"][layer][t]
                assert sorted(reps) == seeds
                assert all({**r.deps["inversion"].config, "seed": main.config["seed"]} == main.config for r in reps.values())
    last = dyn["steps"][-1]
    first = next(iter(dyn["regimes"]))
    assert {s: r.key for s, r in dyn["paired"][first][dyn["layers"][0]][last].items()} == \
           {s: r.key for s, r in dyn["replicates"][dyn["layers"][0]].items()}, "the spread's models are reused"
    unpaired = pipeline.load_params("smoke", {"dynamics": {"paired_seeds": False}})
    assert plans.plan(unpaired, ["dynamics"])["dynamics"]["paired"] == {}
    with pytest.raises(ConfigError, match="paired_seeds: true needs replicate_seeds"):
        pipeline.load_params("smoke", {"dynamics": {"paired_seeds": True, "replicate_seeds": []}}).section("dynamics")
    with pytest.raises(ConfigError, match="a replicate needs a seed of its own"):
        pipeline.load_params("smoke", {"dynamics": {"replicate_seeds": [0, 1]}}).section("dynamics")
