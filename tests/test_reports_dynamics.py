"""The §5.3 claims: rise-then-fall and "the overfitted network keeps more", judged against test-set error
and the inversion models' seed spread, on synthetic summaries."""

import numpy as np

from inversion.reports.common import Estimate, SeedSpread
from inversion.reports.dynamics import Accuracy, DynamicsSummary, dynamics_claims, rise_and_fall


def centred(x):
    return x - x.mean()


def summary(means_regular, means_overfit, seed_sd=0.0, n=400, noise=5.0, overfit_train=1.0):
    """A synthetic dynamics summary: per-image log-likelihoods = a shared per-image difficulty + a mean per
    snapshot + independent noise (centred, so every paired difference has exactly the stated mean and a
    standard error of about noise / 14)."""
    rng = np.random.default_rng(0)
    steps = [0, 100, 1000, 3000]
    difficulty = rng.normal(0, 50, n)
    nce, log_probs = {}, {}
    for g, means in (("regular", means_regular), ("overfit", means_overfit)):
        lp = {t: -700 + m + difficulty + centred(rng.normal(0, noise, n)) for t, m in zip(steps, means)}
        log_probs[g] = {"fc3": lp}
        nce[g] = {"fc3": {t: Estimate(float(v.mean()), float(v.std(ddof=1) / np.sqrt(n))) for t, v in lp.items()}}
    accuracy = {"regular": {t: Accuracy(test=0.98, train=0.99) for t in steps},
                "overfit": {t: Accuracy(test=0.74, train=overfit_train) for t in steps}}
    return DynamicsSummary(steps=steps, layers=["fc3"], regimes=["regular", "overfit"], nce=nce,
                           log_probs=log_probs, accuracy=accuracy, seed_spread={"fc3": SeedSpread(seed_sd, 3)})


def by_kind(claims):
    return {c.kind: c for c in claims}


def test_a_clear_rise_and_fall_is_shown_and_a_large_seed_spread_hides_it():
    s = summary([0, 20, 5, -10], [0, 25, 25, 25])
    r = rise_and_fall(s, "regular", "fc3")
    assert r.peak == 100 and r.shown
    assert r.rise.value > 15 and r.fall.value < -25
    c = by_kind(dynamics_claims(s))
    assert c["rise_and_fall"].reproduced is True and c["overfit_keeps_more"].reproduced is True
    assert c["overfit_generalises_worse"].reproduced is True
    assert c["rise_and_fall"].layer == "fc3"
    noisy = by_kind(dynamics_claims(summary([0, 20, 5, -10], [0, 25, 25, 25], seed_sd=15.0)))
    assert noisy["rise_and_fall"].reproduced is None and noisy["overfit_keeps_more"].reproduced is None
    assert "inside the noise" in noisy["rise_and_fall"].why


def test_monotone_curves_contradict_a_rise_and_fall():
    assert not rise_and_fall(summary([0, 5, 10, 15], [0, 0, 0, 0]), "regular", "fc3").shown
    assert not rise_and_fall(summary([0, -5, -10, -15], [0, 0, 0, 0]), "regular", "fc3").shown
    c = by_kind(dynamics_claims(summary([0, 5, 10, 15], [0, 0, 0, -20])))
    assert c["rise_and_fall"].reproduced is False and "highest at the last checkpoint" in c["rise_and_fall"].why
    assert c["overfit_keeps_more"].reproduced is False and "keeps less" in c["overfit_keeps_more"].why
    c = by_kind(dynamics_claims(summary([0, -5, -10, -15], [0, 0, 0, 0])))
    assert c["rise_and_fall"].reproduced is False and "only falls" in c["rise_and_fall"].why


def test_differences_inside_the_test_noise_are_undecided():
    # a 0.3-nat bump and a 0.3-nat lead, with paired standard errors of about 1.4 nats
    c = by_kind(dynamics_claims(summary([0, 0.3, 0.1, 0.0], [0, 0.3, 0.3, 0.3], noise=20.0)))
    assert c["rise_and_fall"].reproduced is None and c["overfit_keeps_more"].reproduced is None
    assert c["rise_and_fall"].status == "undecided" and "inside" in c["overfit_keeps_more"].why


def test_an_overfitted_network_that_does_not_memorise_is_not_overfitted():
    c = by_kind(dynamics_claims(summary([0, 20, 5, -10], [0, 25, 25, 25], overfit_train=0.95)))
    assert c["overfit_generalises_worse"].reproduced is False and "memorised" in c["overfit_generalises_worse"].why


def test_paired_seeds_cancel_what_a_seed_does_to_every_snapshot():
    """Three seeds whose luck (±15 nats) moves every snapshot's model alike: judged as independent models
    the rise and fall is inside the noise; paired per seed (common random numbers) it is decided."""
    from dataclasses import replace

    base = summary([0, 20, 5, -10], [0, 25, 25, 25], seed_sd=15.0)
    luck = {0: 0.0, 1: 15.0, 2: -15.0}
    by_seed = {g: {"fc3": {t: {seed: lp + shift for seed, shift in luck.items()} for t, lp in per.items()}}
               for g, per in ((g, base.log_probs[g]["fc3"]) for g in base.regimes)}
    paired = replace(base, by_seed=by_seed)
    independent, crn = by_kind(dynamics_claims(base)), by_kind(dynamics_claims(paired))
    assert independent["rise_and_fall"].reproduced is None
    assert crn["rise_and_fall"].reproduced is True and crn["overfit_keeps_more"].reproduced is True
    assert crn["rise_and_fall"].power.noise < independent["rise_and_fall"].power.noise / 10
    assert "common random numbers" in crn["rise_and_fall"].ours


def test_the_change_figure_draws_the_differences_the_claims_judge():
    """NCE(t) − NCE(step 0), paired over the test images: the synthetic means exactly (the noise is centred),
    0 ± 0 at step 0, both regimes from the regular network's step-0 models; the figure plots those values."""
    import matplotlib

    matplotlib.use("Agg")
    from inversion.reports.dynamics import figure_nce_change, nce_changes

    s = summary([0, 20, 5, -10], [3, 25, 25, 25])
    changes = nce_changes(s)
    assert [round(d.value, 9) for d in changes["regular"]["fc3"]] == [0, 20, 5, -10]
    assert [round(d.value, 9) for d in changes["overfit"]["fc3"]] == [3, 25, 25, 25]
    assert changes["regular"]["fc3"][0].noise == 0.0 and all(d.noise > 0 for d in changes["overfit"]["fc3"])
    fig = figure_nce_change(s)
    lines = [np.asarray(line.get_ydata(), float) for line in fig.axes[0].lines]
    plotted = [np.round(y, 9).tolist() for y in lines if len(y) == 4]
    assert [0, 20, 5, -10] in plotted and [3, 25, 25, 25] in plotted
