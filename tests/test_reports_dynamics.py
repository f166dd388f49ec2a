"""The §5.3 claims: rise-then-fall and "the overfitted network keeps more", judged against test-set error
and the inversion models' seed spread."""

import numpy as np

from inversion.dynamics_figures import dynamics_claims, rise_and_fall


def summary(means_regular, means_overfit, seed_sd=0.0, n=400, noise=5.0):
    """A synthetic dynamics summary: per-image log-likelihoods = a shared per-image difficulty + a mean per
    snapshot + a little independent noise, so paired differences have a small standard error."""
    rng = np.random.default_rng(0)
    steps = [0, 100, 1000, 3000]
    difficulty = rng.normal(0, 50, n)
    s = {"steps": steps, "layers": ["fc3"], "regimes": ["regular", "overfit"], "nce": {}, "log_probs": {},
         "accuracy": {"regular": {t: (0.98, 0.99) for t in steps}, "overfit": {t: (0.74, 1.0) for t in steps}},
         "seed_sd": {"fc3": (seed_sd, 3)}}
    for g, means in (("regular", means_regular), ("overfit", means_overfit)):
        lp = {t: -700 + m + difficulty + rng.normal(0, noise, n) for t, m in zip(steps, means)}
        s["log_probs"][g] = {"fc3": lp}
        s["nce"][g] = {"fc3": {t: (float(v.mean()), float(v.std(ddof=1) / np.sqrt(n))) for t, v in lp.items()}}
    return s


def by_kind(claims):
    return {c["kind"]: c for c in claims}


def test_a_clear_rise_and_fall_is_shown_and_a_large_seed_spread_hides_it():
    s = summary([0, 20, 5, -10], [0, 25, 25, 25])
    r = rise_and_fall(s, "regular", "fc3")
    assert r["peak"] == 100 and r["shown"]
    c = by_kind(dynamics_claims(s))
    assert c["rise_and_fall"]["reproduced"] and c["overfit_keeps_more"]["reproduced"]
    assert c["overfit_generalises_worse"]["reproduced"]
    noisy = by_kind(dynamics_claims(summary([0, 20, 5, -10], [0, 25, 25, 25], seed_sd=15.0)))
    assert not noisy["rise_and_fall"]["reproduced"] and not noisy["overfit_keeps_more"]["reproduced"]


def test_monotone_curves_are_not_a_rise_and_fall():
    assert not rise_and_fall(summary([0, 5, 10, 15], [0, 0, 0, 0]), "regular", "fc3")["shown"]
    assert not rise_and_fall(summary([0, -5, -10, -15], [0, 0, 0, 0]), "regular", "fc3")["shown"]
    c = by_kind(dynamics_claims(summary([0, 5, 10, 15], [0, 0, 0, -20])))
    assert not c["overfit_keeps_more"]["reproduced"]
