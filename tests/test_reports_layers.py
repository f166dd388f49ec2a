"""The §5.1 claims on synthetic layer summaries (a run that reproduces, one that does not, and differences
inside their noise), and the paired statistics behind them."""

import math

import numpy as np
import pytest

from inversion import paper
from inversion.reports.common import Estimate
from inversion.reports.layers import (Figure2Summary, LayerStep, LayerSummary, OwnVsSameClass, Table1Distances,
                                      biggest_drop, layer_claims, own_vs_same_class, ratio_stderr)

LAYERS = ["conv1", "conv2", "fc3", "logits"]


def summary(dataset="mnist", accuracy=0.994, drops=(-300.0, -50.0, -10.0), drop_se=2.0, table1=None,
            mse=(0.01, 0.02, 0.03, 0.04), pixel=(0.05, 0.1, 0.2, 0.25), style=(0.8, 50, -0.02, 0.005),
            figure2=(0.01, 0.02)):
    """A synthetic §5.1 summary; by default every claim reproduces on MNIST."""
    nce = np.cumsum([-500.0, *drops])
    table1 = table1 or {l: Table1Distances(nn1=p.nn1, im_s=p.im_s, im_nn=p.im_nn)
                        for l, p in paper.TABLE1.distances["mnist"].items()}
    return LayerSummary(
        dataset=dataset, layers=LAYERS, accuracy=accuracy,
        nce={l: Estimate(float(v), 1.0) for l, v in zip(LAYERS, nce)},
        bits_per_dim={l: 1.0 for l in LAYERS}, relative={l: Estimate(1.0, 0.01) for l in LAYERS},
        steps=[LayerStep(a, b, d, drop_se) for a, b, d in zip(LAYERS, LAYERS[1:], drops)],
        mse=dict(zip(LAYERS, mse)), mse_train=dict(zip(LAYERS, mse)), table1=table1, nn_of=10, agreement={l: 0.9 for l in LAYERS},
        pixel_l1=dict(zip(LAYERS, pixel)), own_vs_same_class={l: OwnVsSameClass(*style) for l in LAYERS},
        figure2=Figure2Summary("fc3", 64, 4, *figure2, 3) if figure2 else None)


def verdicts(s):
    return {c.claim.split(": ", 1)[1]: c.reproduced for c in layer_claims(s)}


def test_a_run_like_the_paper_reproduces_every_claim():
    got = verdicts(summary())
    assert len(got) == 9 and all(v is True for v in got.values()), got


def test_a_run_unlike_the_paper_does_not_reproduce():
    swapped = {l: Table1Distances(nn1=d.nn1, im_s=d.nn1 * 2, im_nn=d.nn1 * 2)  # samples farther than 1NN
               for l, d in paper.TABLE1.distances["mnist"].items()}
    got = verdicts(summary(accuracy=0.97, drops=(-10.0, -300.0, 5.0), table1=swapped, mse=(0.03, 0.02, 0.04, 0.05),
                           pixel=(0.2, 0.1, 0.2, 0.25), style=(1.01, 50, 0.001, 0.005), figure2=(0.03, 0.02)))
    assert not any(got.values()), got
    for c in layer_claims(summary(accuracy=0.97, drops=(-10.0, -300.0, 5.0), mse=(0.03, 0.02, 0.04, 0.05))):
        assert (c.why is None) == (c.reproduced is True), c  # every row not reproduced says why


def test_differences_inside_their_noise_are_undecided_and_beyond_it_the_other_way_contradicted():
    claims = {c.claim.split(": ", 1)[1]: c for c in layer_claims(summary(drops=(-300.0, -50.0, -3.0), drop_se=2.0))}
    nce = claims["the NCE decreases through successive layers (Fig. 5a)"]  # last drop 1.5 s.e.: undecided
    assert nce.reproduced is None and nce.status == "undecided" and "FC3 → LOGITS" in nce.why
    assert claims["the biggest drop is CONV1 → CONV2"].reproduced is True
    rise = {c.claim.split(": ", 1)[1]: c for c in layer_claims(summary(drops=(-300.0, 5.0, -3.0), drop_se=2.0))}
    nce = rise["the NCE decreases through successive layers (Fig. 5a)"]  # a rise of 2.5 s.e.: contradicted
    assert nce.reproduced is False and "rises" in nce.why and "CONV2 → FC3" in nce.why
    close = verdicts(summary(drops=(-60.0, -55.0, -3.0), drop_se=2.0))  # 5 nats apart, noise 2.8: undecided
    assert close["the biggest drop is CONV1 → CONV2"] is None
    assert verdicts(summary(drops=(-40.0, -60.0, -3.0)))["the biggest drop is CONV1 → CONV2"] is False
    got = verdicts(summary(style=(0.98, 50, -0.009, 0.005)))  # 1.8 s.e. closer to the own input
    assert got["LOGITS samples keep the input's style, not just its class"] is None
    got = verdicts(summary(style=(1.02, 50, 0.011, 0.005)))  # 2.2 s.e. closer to other inputs of the class
    assert got["LOGITS samples keep the input's style, not just its class"] is False
    got = verdicts(summary(style=(float("nan"), 1, float("nan"), float("nan"))))
    assert got["LOGITS samples keep the input's style, not just its class"] is None
    assert verdicts(summary(accuracy=0.9861))["classifier test accuracy"] is True   # 0.99 pp below 99.6 %
    assert verdicts(summary(accuracy=0.9859))["classifier test accuracy"] is False  # 1.01 pp below


def test_datasets_outside_the_paper_are_checked_against_its_mnist_pattern_without_an_accuracy():
    claims = {c.claim.split(": ", 1)[1]: c for c in layer_claims(summary(dataset="fashion_mnist"))}
    assert claims["classifier test accuracy"].reproduced is None
    assert "(paper's MNIST pattern)" in claims["IM-S (one sample) vs the nearest training image, in representation "
                                               "space (Table 1)"].paper


def test_paired_statistics():
    rng = np.random.default_rng(1)
    b = rng.normal(-500, 30, 200)
    a = b + rng.normal(-100, 5, 200)
    r = ratio_stderr(a, b)
    assert r.value == pytest.approx(a.mean() / abs(b.mean()))
    assert 0 < r.stderr < 0.01  # paired: far below the unpaired spread of either
    d = np.array([[0.1, 0.3, 0.5], [0.3, 0.1, 0.5], [0.5, 0.5, 0.2]])  # [i, j]: samples of i to input j
    st = own_vs_same_class(d, np.array([1, 1, 2]))
    assert st.n_inputs == 2 and st.ratio == pytest.approx(1 / 3) and st.diff == pytest.approx(-0.2)
    assert math.isnan(own_vs_same_class(d, np.array([0, 1, 2])).ratio)
    assert biggest_drop(summary()).deeper == "conv2"
