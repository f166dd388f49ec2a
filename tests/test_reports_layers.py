"""The §5.1 claims on synthetic layer summaries (a run that reproduces, one that does not, and differences
inside their noise), and the paired statistics behind them."""

import math

import numpy as np
import pytest

from inversion import paper
from inversion.reports.common import Estimate
from inversion.reports.layers import (Figure2Summary, LayerStep, LayerSummary, OwnVsSameClass, Table1Distances,
                                      biggest_drop, layer_claims, own_vs_same_class, ratio_stderr, table1_distances)

LAYERS = ["conv1", "conv2", "fc3", "logits"]


def table1_row(nn1, im_s, im_nn, se=1e-4):
    """A Table 1 row whose paired gaps are the differences of the means, with standard error ``se``."""
    return Table1Distances(nn1=nn1, im_s=im_s, im_nn=im_nn, im_s_minus_nn1=Estimate(im_s - nn1, se),
                           im_nn_minus_nn1=Estimate(im_nn - nn1, se))


def summary(dataset="mnist", accuracy=0.994, drops=(-300.0, -50.0, -10.0), drop_se=2.0, table1=None,
            mse=(0.01, 0.02, 0.03, 0.04), pixel=(0.05, 0.1, 0.2, 0.25), style=(0.8, 50, -0.02, 0.005),
            figure2=(0.01, 0.02)):
    """A synthetic §5.1 summary; by default every claim reproduces on MNIST."""
    nce = np.cumsum([-500.0, *drops])
    table1 = table1 or {l: table1_row(p.nn1, p.im_s, p.im_nn) for l, p in paper.TABLE1.distances["mnist"].items()}
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
    swapped = {l: table1_row(d.nn1, d.nn1 * 2, d.nn1 * 2)  # samples farther than 1NN
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



def test_table1_sides_of_1nn_are_decided_against_the_paired_noise():
    rows = {l: table1_row(p.nn1, p.im_s, p.im_nn) for l, p in paper.TABLE1.distances["mnist"].items()}
    fc3 = rows["fc3"]  # the paper's IM-S is farther than 1NN at FC3 by 0.013; with s.e. 0.01 that is 1.3 s.e.
    noisy = dict(rows, fc3=table1_row(fc3.nn1, fc3.im_s, fc3.im_nn, se=0.01))
    claims = {c.claim.split(": ", 1)[1].split(" (")[0]: c for c in layer_claims(summary(table1=noisy))}
    ims, imnn = claims["IM-S"], claims["IM-NN"]
    assert ims.reproduced is None and "inside the noise at FC3" in ims.why and "0.02 or more" in ims.why
    assert imnn.reproduced is True  # the paper's IM-NN gap at FC3, -0.027, is 2.7 s.e.: decided
    assert ims.power.noise == 0.01 and "FC3 +0.013 ± 0.010" in ims.ours
    closer = dict(rows, fc3=table1_row(fc3.nn1, fc3.nn1 - 0.01, fc3.im_nn, se=0.001))  # 10 s.e. on the wrong side
    c = {c.claim.split(": ", 1)[1].split(" (")[0]: c for c in layer_claims(summary(table1=closer))}["IM-S"]
    assert c.reproduced is False and "beyond the noise at FC3" in c.why and "farther from h" not in c.why


def test_table1_distances_pair_each_sample_with_its_own_test_image():
    rng = np.random.default_rng(0)
    nn_dist = rng.uniform(1, 2, size=(8, 3))
    dist = rng.uniform(0, 3, size=(4, 5))
    index = np.array([6, 2, 7, 3])  # samples of four test images, not the first four
    row = table1_distances(dist, index, nn_dist, nn_of=3)
    gap = dist[:, :3].min(1) - nn_dist[index, 0]
    assert row.nn1 == pytest.approx(nn_dist[index, 0].mean())
    assert row.im_nn == pytest.approx(dist[:, :3].min(1).mean()) and row.im_s == pytest.approx(dist[:, 0].mean())
    assert row.im_nn_minus_nn1.value == pytest.approx(gap.mean())
    assert row.im_nn_minus_nn1.stderr == pytest.approx(gap.std(ddof=1) / 2.0)
    with pytest.raises(ValueError, match="n_test of at least 8"):
        table1_distances(dist, index, nn_dist[:7], nn_of=3)

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
