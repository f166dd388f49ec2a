"""inversion.stages: keys, the cache (reuse, atomicity, resumption, import without checkpoints), parameter
sets, the toy bound's exact entropies, and the command line."""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from inversion import stages
from inversion.stages import Cache, Params, StageMissing, ref

REPO = Path(__file__).resolve().parents[1]
CALLS = {"producer": 0, "consumer": 0, "flaky": 0}


@stages._stage("_test_producer", "1", checkpoints=("model.pt",), defaults=dict(value=1, scale=2.0))
def _producer(ctx):
    CALLS["producer"] += 1
    (ctx.out / "model.pt").write_text(str(ctx.config["value"] * ctx.config["scale"]))
    np.save(ctx.out / "values.npy", np.arange(3) * ctx.config["value"])
    return {"product": ctx.config["value"] * ctx.config["scale"]}


@stages._stage("_test_consumer", "1", deps=("producer",), defaults=dict(offset=0))
def _consumer(ctx):
    CALLS["consumer"] += 1
    model = ctx.dep("producer", need=("model.pt",))
    return {"total": float(model.path("model.pt").read_text()) + ctx.config["offset"]}


@stages._stage("_test_flaky", "1", defaults=dict(fail_until=1))
def _flaky(ctx):
    """Fails on its first ``fail_until`` calls, leaving work in the resumable work directory."""
    CALLS["flaky"] += 1
    ctx.work.mkdir(parents=True, exist_ok=True)
    marker = ctx.work / "progress.txt"
    done = int(marker.read_text()) if marker.exists() else 0
    marker.write_text(str(done + 1))
    if CALLS["flaky"] <= ctx.config["fail_until"]:
        raise RuntimeError("killed")
    return {"sessions": done + 1}


@pytest.fixture()
def cache(tmp_path):
    for k in CALLS:
        CALLS[k] = 0
    return Cache(Params("unit", {}), root=tmp_path, device="cpu", log=lambda m: None)


def test_keys_cover_config_dependencies_and_version(monkeypatch):
    a = ref("_test_producer", {"value": 1})
    assert a.key == ref("_test_producer", {"value": 1, "scale": 2.0}).key  # defaults are part of the config
    assert a.config == {"value": 1, "scale": 2.0}
    assert a.key != ref("_test_producer", {"value": 2}).key
    c1 = ref("_test_consumer", {}, producer=a)
    c2 = ref("_test_consumer", {}, producer=ref("_test_producer", {"scale": 3.0}))
    assert c1.key != c2.key, "a changed upstream parameter must change every downstream key"
    before = a.key
    monkeypatch.setitem(stages.STAGES, "_test_producer",
                        stages.STAGES["_test_producer"].__class__(**{**stages.STAGES["_test_producer"].__dict__,
                                                                    "version": "2"}))
    assert ref("_test_producer", {"value": 1}).key != before, "bumping a stage's code version must change its key"


def test_ref_rejects_unknown_parameters_and_missing_dependencies():
    with pytest.raises(KeyError, match="no parameter"):
        ref("_test_producer", {"valeu": 1})
    with pytest.raises(KeyError, match="consumes"):
        ref("_test_consumer", {})
    with pytest.raises(KeyError, match="needs"):
        ref("inversion", {}, classifier=ref("classifier", {"dataset": "mnist"}))  # layer is required


def test_cache_computes_once_and_records_provenance(cache):
    r = ref("_test_consumer", {"offset": 1}, producer=ref("_test_producer", {"value": 3}))
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
    assert cache.result(ref("_test_consumer", {"offset": 2}, producer=r.deps["producer"])).metrics == {"total": 8.0}
    assert CALLS["consumer"] == 2 and CALLS["producer"] == 1


def test_failed_stage_leaves_no_result_and_resumes_from_its_work_dir(cache):
    r = ref("_test_flaky", {"fail_until": 1})
    with pytest.raises(RuntimeError, match="killed"):
        cache.result(r)
    assert not (cache.root / r.dirname).exists(), "a killed stage must not leave a (partial) result directory"
    assert not list(cache.root.glob(".tmp-*")), "temporary directories are cleaned up"
    assert (cache.root / f"{r.dirname}.work" / "progress.txt").exists(), "the work directory survives the kill"
    res = cache.result(r)
    assert res.metrics == {"sessions": 2}, "the second session continued from the first one's work"
    assert not (cache.root / f"{r.dirname}.work").exists(), "the work directory goes once the stage is done"


def test_results_import_without_checkpoints(cache, tmp_path):
    prod = ref("_test_producer", {"value": 5})
    cons = ref("_test_consumer", {}, producer=prod)
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
    assert imported.result(ref("_test_consumer", {"offset": 1}, producer=prod)).metrics == {"total": 11.0}
    assert CALLS["producer"] == 2 and (other / "unit" / prod.dirname / "model.pt").exists()


def test_compute_false_reads_only(cache):
    r = ref("_test_producer", {"value": 9})
    ro = Cache(cache.params, root=cache.root.parent, compute=False, log=lambda m: None)
    with pytest.raises(StageMissing, match="python -m inversion.stages run"):
        ro.result(r)
    cache.result(r)
    assert ro.result(r).metrics == {"product": 18.0}


@pytest.mark.parametrize("name", ["smoke", "quick", "paper"])
def test_parameter_sets_plan_every_stage(name):
    P = stages.load_params(name)
    assert P.name == name
    header = [l for l in (REPO / "params" / f"{name}.yaml").read_text().splitlines() if l.startswith("#")]
    assert len(header) >= 3, "each parameter set says in a comment what it scales down"
    plan = stages.plan(P)
    assert {"background", "layers", "architectures", "dynamics"} <= set(plan)
    refs = list(stages.iter_refs(plan))
    kinds = {r.stage for r in refs}
    assert {"toy_bound", "classifier", "snapshot", "inversion", "nce", "decoder", "samples", "neighbours"} <= kinds
    for ds, p in plan["layers"].items():
        assert list(p["layers"]) == ["conv1", "conv2", "fc3", "logits"]
        assert p["figure2"].config["keep_topk"] and p["figure2"].deps["inversion"] is p["layers"]["fc3"]["inversion"]
    assert len({r.dirname for r in refs}) == len(refs), "no two distinct stages share a key"


def test_sets_differ_and_overrides_apply():
    smoke, quick, paper = (stages.load_params(n) for n in ("smoke", "quick", "paper"))
    assert stages.layers_plan(smoke, "mnist")["classifier"].key != stages.layers_plan(quick, "mnist")["classifier"].key
    assert {"mnist", "fashion_mnist"} <= set(stages.layers_datasets(quick))
    assert {"svhn", "cifar10"} <= set(stages.layers_datasets(paper))
    cifar = stages.layers_plan(paper, "cifar10")["layers"]
    assert cifar["conv1"]["inversion"].config["dropout"] == 0.1  # per_layer "cifar10/conv1"
    assert cifar["fc3"]["inversion"].config["context_dropout"] == 0.2
    assert cifar["fc3"]["inversion"].config["likelihood"] == "logistic_mixture"  # per_dataset
    assert stages.layers_plan(paper, "mnist")["layers"]["conv1"]["inversion"].config["dropout"] == 0.5
    # overrides: a changed parameter changes exactly the keys downstream of it
    base = stages.layers_plan(quick, "mnist")
    changed = stages.layers_plan(stages.load_params("quick", {"layers": {"inversion": {"steps": 351}}}), "mnist")
    assert changed["classifier"].key == base["classifier"].key
    assert changed["layers"]["fc3"]["decoder"].key == base["layers"]["fc3"]["decoder"].key
    assert changed["layers"]["fc3"]["inversion"].key != base["layers"]["fc3"]["inversion"].key
    assert changed["layers"]["fc3"]["samples"].key != base["layers"]["fc3"]["samples"].key


def test_toy_entropies_are_exact():
    states, p = stages.toy_distribution(0.1)
    assert states.shape == (512, 3, 3) and abs(p.sum() - 1) < 1e-12 and (p > 0).all()
    ex = stages.toy_exact_entropies(0.1, ["none", "count", "rows", "image"])
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
    run = lambda *a: subprocess.run([sys.executable, "-m", "inversion.stages", *a], env=env, capture_output=True,  # noqa: E731
                                    text=True, timeout=600)
    out = run("list", "--params", "smoke", "--only", "background")
    assert out.returncode == 0 and "missing" in out.stdout and "0/1 stages cached" in out.stdout
    out = run("run", "--params", "smoke", "--only", "background")
    assert out.returncode == 0, out.stderr
    assert "1 stages computed" in out.stdout
    out = run("list", "--params", "smoke", "--only", "background")
    assert "1/1 stages cached" in out.stdout
    key = stages.background_plan(stages.load_params("smoke"))["toy"].key
    out = run("show", "--params", "smoke", key)
    info = json.loads(out.stdout)
    assert info["stage"] == "toy_bound" and info["provenance"]["param_set"] == "smoke"
    final = info["metrics"]["final"]
    assert set(final) == {"none", "count", "image"}
    assert all(v["gap"] >= -1e-6 for v in final.values()), "the exact cross-entropy never beats H(x | h)"


def test_pack_and_unpack_carry_results_but_not_checkpoints(cache, tmp_path):
    cons = ref("_test_consumer", {"offset": 2}, producer=ref("_test_producer", {"value": 4}))
    cache.result(cons)
    archive = tmp_path / "results.tgz"
    assert sorted(stages.pack(cache, archive)) == sorted([cons.dirname, cons.deps["producer"].dirname])
    other = Cache(cache.params, root=tmp_path / "other", log=lambda m: None)
    assert sorted(stages.unpack(other, archive)) == sorted([cons.dirname, cons.deps["producer"].dirname])
    assert not list(other.root.rglob("*.pt")), "checkpoints stay behind"
    assert (other.root / cons.deps["producer"].dirname / "values.npy").exists()
    before = dict(CALLS)
    assert other.result(cons).metrics == {"total": 10.0} and CALLS == before
    assert stages.unpack(other, archive) == [], "results already present are kept"


def test_wall_time_excludes_dependencies_computed_on_the_way(cache):
    import time as _time

    @stages._stage("_test_slow", "1", defaults=dict(seconds=0.3))
    def _slow(ctx):
        _time.sleep(ctx.config["seconds"])
        return {}

    @stages._stage("_test_after_slow", "1", deps=("slow",), defaults=dict())
    def _after(ctx):
        ctx.dep("slow")
        return {}

    r = ref("_test_after_slow", {}, slow=ref("_test_slow", {}))
    res = cache.result(r)  # computes the slow dependency from inside
    assert res.provenance["wall_s"] < 0.2
    assert cache.result(r.deps["slow"]).provenance["wall_s"] >= 0.3


@pytest.mark.parametrize("name", ["smoke", "quick", "paper"])
def test_architectures_and_dynamics_plans(name):
    P = stages.load_params(name)
    arch = stages.architectures_plan(P)
    assert list(arch) == ["fc", "conv", "conv_gmp"]
    for a, r in arch.items():
        assert r["classifier"].config["arch"] == a and r["classifier"].config["dataset"] == "affnist"
        assert r["inversion"].config["layer"] == "fc3" and r["nce"].deps["inversion"] is r["inversion"]
        assert r["samples"].deps["classifier"] is r["classifier"]
    dyn = stages.dynamics_plan(P)
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
    seeds = P.section("dynamics").get("replicate_seeds") or []
    for layer in dyn["layers"]:
        assert sorted(dyn["replicates"][layer]) == sorted(seeds)
        for seed, nce in dyn["replicates"][layer].items():
            inv = nce.deps["inversion"]
            assert inv.config["seed"] == seed != reg["inversion"][layer][steps[-1]].config["seed"]
            assert {**inv.config, "seed": 0} == reg["inversion"][layer][steps[-1]].config, "only the seed differs"
            assert inv.deps["classifier"] is reg["snapshots"][steps[-1]]
    other_seed = stages.dynamics_plan(stages.load_params(name, {"dynamics": {"regimes": {"overfit": {"seed": 1}}}}))
    assert other_seed["regimes"]["overfit"]["snapshots"][0].key != reg["snapshots"][0].key


def test_snapshot_is_the_classifier_after_exactly_that_many_updates(tmp_path):
    import torch

    from inversion.classifier import load_classifier

    P = Params("unit", {})
    cache = Cache(P, root=tmp_path, device="cpu", log=lambda m: None)
    clf = ref("classifier", {"dataset": "mnist", "steps": 6, "snapshot_steps": [0, 3, 6], "patience": 0,
                             "eval_every": 3, "n_train": 256, "overfit_n": 50, "dropout": [0.0] * 3})
    snaps = {t: ref("snapshot", {"dataset": "mnist", "step": t, "n_eval": 100}, classifier=clf) for t in (0, 3, 6)}
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
    inv = ref("inversion", {"layer": "fc3", "n_filters": 4, "n_resnet": 1, "n_resolutions": 2, "steps": 2,
                            "batch_size": 8, "n_train": 64, "dropout": 0.0}, classifier=snaps[3])
    nce = cache.result(ref("nce", {"n_test": 16}, classifier=snaps[3], inversion=inv))
    assert nce.metrics["n"] == 16 and np.isfinite(nce.metrics["nats"])
    with pytest.raises(ValueError, match="snapshot of a mnist classifier"):
        cache.result(ref("snapshot", {"dataset": "fashion_mnist", "step": 3}, classifier=clf))
