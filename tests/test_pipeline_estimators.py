"""inversion.pipeline.estimators (the appendix on other estimators): the two stages on a tiny classifier, the
plan's wiring onto the training-dynamics plan, configuration errors, and its helpers."""

import math

import numpy as np
import pytest

from inversion import pipeline
from inversion.pipeline import estimators as ES
from inversion.pipeline.cache import Cache, iter_refs, ref
from inversion.pipeline.dynamics import dynamics_plan
from inversion.pipeline.layers import CLASSIFIER
from inversion.pipeline.params import Params
from inversion.pipeline.plans import plan as full_plan
from inversion.pipeline.schema import ConfigError

N_TEST = 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A cache with a 5-step MNIST classifier (untrained enough to be fast, trained enough to be a network)."""
    cache = Cache(Params("unit-estimators", {}), root=tmp_path_factory.mktemp("cache"), device="cpu",
                  log=lambda m: None)
    clf = ref(CLASSIFIER, {"dataset": "mnist", "steps": 5, "n_train": 256, "eval_every": 5, "patience": 0,
                             "batch_size": 32})
    return cache, clf


def test_estimates_stage_gives_every_estimator_within_its_bounds(tiny):
    cache, clf = tiny
    res = {l: cache.result(ref(ES.ESTIMATES, {"layer": l, "n_test": N_TEST}, classifier=clf))
           for l in ("conv1", "logits")}
    log_n = math.log(N_TEST)
    for layer, dims in (("conv1", 32 * 12 * 12), ("logits", 10)):
        m = res[layer].metrics
        assert m["n"] == N_TEST and m["dims"] == dims and m["log_n"] == pytest.approx(log_n)
        assert m["distinct"] == N_TEST, "64 distinct test images give 64 distinct activation rows"
        assert 0 <= m["binning_xt"] <= log_n + 1e-12
        assert 0 <= m["binning_ty"] <= m["label_entropy"] + 1e-12
        assert 0 <= m["kde_lower"] <= m["kde_upper"] <= log_n + 1e-12
        assert m["nn_sq_dist_median"] > 0 and math.isfinite(m["ksg_xt"])
        assert m["noise_entropy"] == pytest.approx(0.5 * dims * math.log(2 * math.pi * math.e * 0.1))
    # 4608 ReLU units cut into 30 bins tell 64 images apart: binning returns exactly log N
    assert res["conv1"].metrics["binning_xt"] == pytest.approx(log_n, abs=1e-12)


def test_sweep_stage_saturates_at_log_n_and_moves_with_its_knobs(tiny):
    cache, clf = tiny
    bins, variances, sizes = [1, 3, 30, 10000], [1e-3, 1e-1, 10.0, 1e3], [8, 16, 32, 64]
    r = cache.result(ref(ES.ESTIMATOR_SWEEP, {"layer": "conv1", "n_test": N_TEST, "bins": bins,
                                             "noise_vars": variances, "sizes": sizes}, classifier=clf))
    z = r.arrays("sweep.npz")
    assert list(z["bins"]) == bins and list(z["sizes"]) == sizes and np.allclose(z["noise_vars"], variances)
    for key, n in (("binning_xt_by_bins", 4), ("binning_ty_by_bins", 4), ("kde_upper_by_var", 4),
                   ("kde_lower_by_var", 4), ("kraskov_xt_by_var", 4), ("binning_xt_by_n", 4), ("kde_upper_by_n", 4),
                   ("kde_lower_by_n", 4), ("kraskov_xt_by_n", 4), ("ksg_xt_by_n", 4)):
        assert z[key].shape == (n,), key
    # one bin: every row the same symbol, nothing measured; 10000 bins: an injective map, exactly log N
    assert z["binning_xt_by_bins"][0] == 0.0
    assert z["binning_xt_by_bins"][-1] == pytest.approx(math.log(N_TEST), abs=1e-12)
    # ... and on the first n images, exactly log n at 30 bins
    assert np.allclose(z["binning_xt_by_n"], np.log(sizes), atol=1e-12)
    # the KDE bounds can only fall as the noise grows, from log N towards 0
    up, lo = z["kde_upper_by_var"], z["kde_lower_by_var"]
    assert np.all(np.diff(up) <= 1e-12) and np.all(lo <= up + 1e-12)
    assert up[0] == pytest.approx(math.log(N_TEST), rel=1e-3) and up[-1] < 0.1 * math.log(N_TEST)
    assert r.metrics["dims"] == 4608 and r.metrics["n"] == N_TEST


def test_plan_builds_on_the_dynamics_plan():
    P = pipeline.load_params("smoke")
    plan, dyn = ES.estimators_plan(P), dynamics_plan(P)
    assert plan["steps"] == dyn["steps"] and plan["nce_layers"] == dyn["layers"]
    assert plan["layers"] == list(P.section("estimators").layers)
    for regime, R in plan["regimes"].items():
        D = dyn["regimes"][regime]
        assert {s: r.key for s, r in R["snapshots"].items()} == {s: r.key for s, r in D["snapshots"].items()}
        assert {l: {s: r.key for s, r in v.items()} for l, v in R["nce"].items()} == \
               {l: {s: r.key for s, r in v.items()} for l, v in D["nce"].items()}, "the dynamics chapter's own NCEs"
        for layer, per_step in R["estimates"].items():
            for step, r in per_step.items():
                assert r.stage is ES.ESTIMATES and r.config["layer"] == layer
                assert r.deps["classifier"].key == D["snapshots"][step].key
    sweep = plan["sweep"]
    assert sweep["regime"] == "regular" and sweep["step"] == dyn["steps"][-1]  # step: null = the last checkpoint
    for layer, r in sweep["layers"].items():
        assert r.deps["classifier"].key == dyn["regimes"]["regular"]["snapshots"][sweep["step"]].key
        assert r.config["sizes"] == list(P.section("estimators").sweep.sizes)
    assert "estimators" in full_plan(P, ["estimators"])
    keys = [r.dirname for r in iter_refs(plan)]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("name", ["smoke", "quick", "paper"])
def test_every_parameter_set_plans_the_appendix(name):
    P = pipeline.load_params(name)
    plan = ES.estimators_plan(P)
    assert plan["layers"] == ["conv1", "conv2", "fc3", "logits"]
    assert max(plan["sweep"]["layers"]["conv1"].config["sizes"]) <= plan["sweep"]["layers"]["conv1"].config["n_test"]


@pytest.mark.parametrize("override,match", [
    ({"sweep": {"sizes": [10, 100000]}}, "sizes must be integers in"),
    ({"sweep": {"regime": "lazy"}}, "not a dynamics regime"),
    ({"sweep": {"step": 7}}, "not a dynamics checkpoint"),
    ({"sweep": {"noise_vars": [0.1, "1e-4"]}}, "noise_vars\\[1\\]: expected a number"),
    ({"sweep": {"bins": [0, 30]}}, "bins must be positive"),
    ({"sweep": {"widths": [1]}}, "unknown key"),
    ({"n_bin": 30}, "unknown key"),
    ({"k": 0}, "k \\(neighbours"),
])
def test_bad_configuration_raises_a_clear_error(override, match):
    with pytest.raises(ConfigError, match=match):
        pipeline.load_params("smoke", {"estimators": override})


def test_helpers():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 7)) * 3 + 5
    u = ES.unit_rms(a)
    d2 = ((u[:, None] - u[None]) ** 2).sum(-1)
    assert d2.mean() == pytest.approx(1.0)
    brute = ((a[:, None] - a[None]) ** 2).sum(-1)
    np.fill_diagonal(brute, np.inf)
    assert np.allclose(ES.nearest_sq_distances(a, chunk=7), brute.min(1))
