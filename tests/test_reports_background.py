"""The worked example's claims (§3–4) on synthetic toy summaries: a bound that holds and tightens, one that
is crossed, a wrong ordering of contexts, and a test estimate inside and outside its noise."""

import pytest

from inversion.reports.background import ToyFinal, ToySummary, toy_claims

H = {"none": 2.0, "count": 1.2, "image": 0.0}  # H(x | h), exact


def toy(curves, nce_test_offset=0.0, stderr=0.05):
    final = {k: ToyFinal(nce_exact=-c[-1], gap=c[-1] - H[k], nce_test=-c[-1] + nce_test_offset,
                         nce_test_stderr=stderr) for k, c in curves.items()}
    return ToySummary(contexts=list(curves), flip=0.1, n_train=1000, n_test=500, steps=[0, 100, 1000],
                      entropy_x=2.0, conditional_entropy=dict(H), curves=curves, final=final)


GOOD = {"none": [49.9, 3.0, 2.05], "count": [49.9, 2.0, 1.25], "image": [49.9, 1.0, 0.05]}


def claims(s):
    return {c.claim.split(" (")[0]: c.reproduced for c in toy_claims(s)}


def test_a_tight_ordered_bound_reproduces_every_claim():
    assert all(c.reproduced is True for c in toy_claims(toy(GOOD)))


def test_a_crossed_bound_and_a_wrong_order_do_not_reproduce():
    crossed = dict(GOOD, count=[49.9, 2.0, 1.1])  # below H(x | h) = 1.2 at the last checkpoint
    got = claims(toy(crossed))
    assert got["the cross-entropy upper-bounds H(x | h) at every checkpoint"] is False
    untrained = dict(GOOD, image=[49.9, 30.0, 20.0])  # h = x ends with a lower NCE than h = count
    got = claims(toy(untrained))
    assert got["a more informative h gives a higher NCE"] is False
    assert got["training tightens the bound towards H(x | h)"] is False
    for c in toy_claims(toy(untrained)) + toy_claims(toy(crossed)):  # every row not reproduced says why
        assert (c.why is None) == (c.reproduced is True), c
    assert "image" in next(c for c in toy_claims(toy(untrained)) if c.claim.startswith("training tightens")).why


def test_rounding_and_test_noise_are_tolerated_but_a_biased_estimate_is_not():
    rounding = dict(GOOD, count=[49.9, 2.0, 1.2 - 5e-7])  # a gap of −5e-7: rounding, not a crossing
    assert claims(toy(rounding))["the cross-entropy upper-bounds H(x | h) at every checkpoint"] is True
    within = claims(toy(GOOD, nce_test_offset=2.9 * 0.05))
    assert within["the test-set NCE estimates the exact NCE"] is True
    outside = claims(toy(GOOD, nce_test_offset=3.1 * 0.05))
    assert outside["the test-set NCE estimates the exact NCE"] is False


def test_claim_records_are_typed():
    c = toy_claims(toy(GOOD))[0]
    assert c.reproduced is True and c.kind is None
    with pytest.raises(AttributeError):
        c.reproduced = False
