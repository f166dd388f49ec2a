"""The other inverters' report: diversity measured right, and each claim's verdict on synthetic summaries
that reproduce it, contradict it, or leave it inside the noise."""

from __future__ import annotations

import numpy as np
import pytest

from inversion.reports import inverters as IR
from inversion.reports.common import Difference, Estimate


def test_diversity_of_identical_samples_is_zero_and_of_opposite_ones_is_one():
    same = np.full((3, 4, 1, 2, 2), 7, dtype=np.uint8)
    assert np.allclose(IR.per_image_diversity(same), 0)
    half = np.zeros((1, 2, 1, 2, 2), dtype=np.uint8)
    half[0, 1] = 255
    assert np.allclose(IR.per_image_diversity(half), 1.0)
    assert np.isnan(IR.per_image_diversity(same[:, :1])).all()


def _row(family, layer, bound=None, im_s=0.1, se=0.01, diversity=0.2):
    return IR.InverterRow(family, layer, None if bound is None else Estimate(bound, 1.0), None, None, 100, im_s, se,
                          im_s, 0.9, diversity, 1.0, 10.0)


def _summary(tight: Difference, diversity: Difference, nn1: float, flow_im_s: float):
    layer = "fc3"
    rows = {(f, layer): _row(f, layer, None if f == "gan" else -100.0, im_s=flow_im_s if f == "flow" else 0.1)
            for f in ("pixelcnn", "flow", "vae", "gan")}
    return IR.InvertersSummary(dataset="mnist", layers=[layer], families=["pixelcnn", "flow", "vae", "gan"],
                               rows=rows, tightest={layer: tight}, best_other={layer: "vae"},
                               diversity_gap={layer: diversity}, nn1={layer: nn1}, classifier_accuracy=0.99,
                               supervised_accuracy=0.95, supervised_elbo=Estimate(-90.0, 1.0), n_images=10,
                               n_samples=5)


@pytest.mark.parametrize("tight, diversity, nn1, im_s, verdicts", [
    (Difference(12.0, 2.0), Difference(-0.1, 0.01), 0.5, 0.1, [True, True, True]),      # all reproduced
    (Difference(-12.0, 2.0), Difference(0.1, 0.01), 0.05, 0.1, [False, False, False]),  # all contradicted
    (Difference(1.0, 2.0), Difference(-0.005, 0.01), 0.105, 0.1, [None, None, None]),   # inside the noise
])
def test_claim_verdicts(tight, diversity, nn1, im_s, verdicts):
    claims = IR.inverter_claims(_summary(tight, diversity, nn1, im_s))
    assert [c.kind for c in claims] == ["bound", "diversity", "flow"]
    assert [c.reproduced for c in claims] == verdicts
    assert "PixelCNN++ − conditional VAE" in claims[0].ours


def test_table_says_the_gan_has_no_likelihood():
    s = _summary(Difference(1.0, 1.0), Difference(0.0, 1.0), 0.5, 0.1)
    rows = {r[1]: r for r in IR.table_rows(s)}
    assert rows["feedforward GAN"][2] == "none (no likelihood)"
    assert rows["PixelCNN++"][2] == "-100.0 ± 1.0"
