"""The appendix's claims and findings on synthetic estimator summaries: saturated estimators beside an NCE
that moves (the appendix's argument reproduces), estimators that track the layer (it does not), NCE
movements inside their noise (undecided), and the NCE on nested subsets of its test images."""

import dataclasses
import math

import numpy as np
import pytest

from inversion.reports.common import Estimate
from inversion.reports.estimators import (NCECurve, NCESubsets, EstimatorSummary, estimator_claims, findings,
                                          nce_on_subsets, slope_direction)

N = 100
LOG_N = math.log(N)
STEPS = [0, 100, 1000]
DIMS = {"conv1": 500, "logits": 10}
SIZES = np.array([25, 50, 100])


def summary(saturated=True, nce_means=(-700.0, -650.0, -690.0), nce_se=2.0, subset_shift=0.0):
    """Estimates pinned at log N with a moving NCE (``saturated``), or estimates that follow the checkpoint."""
    def over_training(base):
        return np.full(3, base) if saturated else np.array([0.3, 0.6, 0.9]) * base

    estimates = {rg: {l: {"binning_xt": over_training(LOG_N), "binning_ty": np.full(3, 2.3),
                          "kde_upper": over_training(LOG_N), "kde_lower": over_training(LOG_N) - 0.5,
                          "kraskov_xt": np.full(3, 900.0 if d > 100 else 3.0), "ksg_xt": np.full(3, 3.0 if d > 100 else 2.0),
                          "distinct": np.full(3, N), "dims": np.full(3, d), "nn_sq_dist_median": np.array([1.0, 2.0, 3.0])}
                      for l, d in DIMS.items()} for rg in ("regular", "overfit")}
    sweep = {}
    for l, d in DIMS.items():
        fine = LOG_N if saturated else 0.5 * LOG_N
        coarse = (LOG_N if d > 100 else 1.0) if saturated else fine
        sweep[l] = {"bins": np.array([2, 10, 100]), "binning_xt_by_bins": np.array([coarse, fine, fine]),
                    "binning_ty_by_bins": np.full(3, 2.3), "noise_vars": np.array([1e-3, 1e-1, 10.0]),
                    "kde_upper_by_var": np.array([LOG_N, 2.0, 0.1]) if saturated else np.full(3, 2.0),
                    "kde_lower_by_var": np.array([LOG_N - 0.5, 1.5, 0.05]), "kraskov_xt_by_var": np.full(3, 800.0),
                    "sizes": SIZES, "binning_xt_by_n": np.log(SIZES) if saturated else np.full(3, 2.0),
                    "kde_upper_by_n": np.log(SIZES) if saturated else np.full(3, 2.0),
                    "kde_lower_by_n": np.log(SIZES) - 0.5, "ksg_xt_by_n": np.log(SIZES) - 1.0,
                    "kraskov_xt_by_n": np.full(3, 800.0), "dims": d, "nn_sq_dist_median": 2.0, "n": N, "log_n": LOG_N}
    nce = {rg: {"logits": NCECurve(np.array(nce_means), np.full(3, nce_se))} for rg in ("regular", "overfit")}
    subsets = NCESubsets(sizes=np.array([30, 60, 100]), mean=np.array([-690.0 + subset_shift, -690.0, -690.0]),
                         stderr=np.array([4.0, 3.0, 2.0]), full=Estimate(-690.0, 2.0), n_full=100)
    return EstimatorSummary(
        steps=STEPS, layers=list(DIMS), nce_layers=["logits"], regimes=["regular", "overfit"], sweep_regime="regular",
        sweep_step=1000, n=N, log_n=LOG_N, n_bins=30, noise_var=0.1, k=3, label_entropy=2.3, estimates=estimates,
        nce=nce, seed_sd={"logits": 0.0}, sweep=sweep, sweep_config={}, nce_sweep={"logits": subsets})


def verdicts(s):
    return [c.reproduced for c in estimator_claims(s, findings(s))]


def test_saturated_estimators_beside_a_moving_nce_reproduce_every_claim():
    s = summary()
    f = findings(s)
    assert verdicts(s) == [True] * 8
    assert f.binning_pinned == {"conv1": True, "logits": True} and f.wide_layers == ["conv1"]
    assert f.saturated_at_coarsest == ["conv1"] and f.unsaturated_at_coarsest == ["logits"]
    assert f.slope_binning["conv1"] == pytest.approx(1.0) and slope_direction(f.slope_binning["conv1"]) == 1
    assert [m.layer for m in f.moving] == ["logits", "logits"] and f.binning_still_where_nce_moves is True
    assert f.low_dim_kraskov.layer == "logits" and f.low_dim_kraskov.above_log_n is False
    assert f.kraskov_at_max_noise.above_log_n is True and f.ksg_decreases is True
    assert f.kde_scale is None and f.nce_stable is True


def test_estimators_that_follow_the_checkpoint_do_not_reproduce():
    s = summary(saturated=False)
    f = findings(s)
    got = verdicts(s)
    assert got[:4] == [False, False, False, False]  # fine bins, bin span, KDE vs σ², KDE pinned
    assert got[5] is False  # no one-for-one rise with log N
    assert got[7] is False  # binning moves where the NCE moves
    assert f.kde_scale.layer == "conv1" and f.kde_scale.distance_grows and f.kde_scale.bound_rises
    assert f.binning_still_where_nce_moves is False
    for c in estimator_claims(s, f):  # every row not reproduced says why
        assert (c.why is None) == (c.reproduced is True), c


def test_nce_movements_inside_their_noise_leave_the_dynamics_claim_undecided():
    s = summary(nce_means=(-700.0, -695.0, -698.0), nce_se=2.0)  # range 5 nats, noise 2.8: 1.8 × the noise
    f = findings(s)
    assert f.moving == [] and f.binning_still_where_nce_moves is None
    assert verdicts(s)[7] is None
    # a subset 2.5 of its standard errors off is inside the 3-s.e. criterion; 3.5 is not
    assert verdicts(summary(subset_shift=2.5 * 4.0))[6] is True
    assert verdicts(summary(subset_shift=3.5 * 4.0))[6] is False
    assert findings(summary(subset_shift=3.5 * 4.0)).nce_stable is False


def test_paired_seeds_decide_a_move_that_independent_noise_cannot():
    """The same 1-nat rise, inside the noise of independent models (test-set s.e. 5 nats), is decided when every
    checkpoint's inversion models share their seeds: each seed gives one paired difference."""
    rng = np.random.default_rng(0)
    per_image = rng.normal(-700.0, 50.0, size=200)  # what each test image costs, the same at every checkpoint
    offsets = {0: 0.0, 100: 1.0, 1000: 0.0}
    by_seed = {rg: {"logits": {t: {seed: per_image + off + rng.normal(0.0, 0.05) + rng.normal(0.0, 0.01, size=200)
                                   for seed in (0, 1, 2)} for t, off in offsets.items()}}
               for rg in ("regular", "overfit")}
    independent = summary(nce_means=(-700.0, -699.0, -700.0), nce_se=5.0)
    assert findings(independent).moving == [] and "seed spread" in independent.noise_kind
    paired = dataclasses.replace(independent, nce_by_seed=by_seed)
    moves = findings(paired).moving
    assert [m.layer for m in moves] == ["logits", "logits"]
    assert all(m.nce_range == pytest.approx(1.0, abs=0.1) and m.nce_z > 5 for m in moves)
    assert "per-seed paired differences" in paired.noise_kind
    assert "per-seed paired differences" in estimator_claims(paired, findings(paired))[7].criterion


def test_nce_on_subsets():
    rng = np.random.default_rng(0)
    lp = rng.normal(-100, 10, size=40)
    q = nce_on_subsets(lp, [10, 40])
    assert q.mean[1] == pytest.approx(lp.mean())
    assert q.stderr[0] == pytest.approx(lp[:10].std(ddof=1) / math.sqrt(10))
    with pytest.raises(ValueError, match="subset sizes"):
        nce_on_subsets(lp, [41])
    assert [slope_direction(v) for v in (0.5, 0.05, -0.5)] == [1, 0, -1]
