"""The NCE bound: per-image log-likelihoods, their mean, standard error and bits/dim."""

import math

import pytest
import torch

from inversion import bounds
from inversion.models.pixelcnn import PixelCNNpp


def test_summarize_and_bits_per_dim():
    lp = torch.tensor([-10.0, -12.0, -14.0, -16.0])
    s = bounds.summarize(lp, dims=4)
    assert s.nats == -13.0
    assert s.stderr == pytest.approx(math.sqrt(20 / 3) / 2)
    assert s.bits_per_dim == pytest.approx(13 / (4 * math.log(2)))
    assert s.as_dict()["n"] == 4


def test_paired_difference_cancels_shared_difficulty():
    difficulty = torch.linspace(-800, -500, 50)
    a, b = difficulty + 3.0 + 0.1 * torch.randn(50), difficulty
    mean, se = bounds.paired_difference(a, b)
    assert mean == pytest.approx(3.0, abs=0.1)
    assert se < 0.05 < bounds.summarize(a, 1).stderr  # far tighter than either mean alone


def test_nce_matches_direct_log_prob_in_batches():
    torch.manual_seed(0)
    m = PixelCNNpp((1, 5, 5), (3,), n_filters=8, n_resnet=1)
    m.train()
    x = torch.randint(0, 256, (13, 1, 5, 5), dtype=torch.uint8)
    h = torch.randn(13, 3)
    r = bounds.nce(m, x, h, batch_size=4, progress=False)  # batches of 4, 4, 4, 1; dropout off inside
    m.eval()
    with torch.no_grad():
        direct = m.log_prob(x, h).double()
    assert r.nats == pytest.approx(direct.mean().item(), rel=1e-6)
    assert r.n == 13 and r.dims == 25
    m.train()
    bounds.per_image_log_prob(m, x, h, progress=False)
    assert m.training


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 2"):
        bounds.summarize(torch.tensor([1.0]), 1)
    with pytest.raises(ValueError, match="NaN"):
        bounds.summarize(torch.tensor([1.0, float("nan")]), 1)
    with pytest.raises(ValueError, match="same"):
        bounds.paired_difference(torch.zeros(3), torch.zeros(4))
    m = PixelCNNpp((1, 5, 5), (3,), n_filters=8, n_resnet=1)
    with pytest.raises(ValueError, match="pair up"):
        bounds.per_image_log_prob(m, torch.zeros(3, 1, 5, 5, dtype=torch.uint8), torch.zeros(2, 3))


def test_difference_noise_adds_the_seed_spread_of_both_models():
    from inversion.bounds import difference_noise

    assert difference_noise(3.0, 0.0) == 3.0
    assert difference_noise(0.0, 1.0) == pytest.approx(math.sqrt(2))
    assert difference_noise(3.0, 2.0) == pytest.approx(math.sqrt(9 + 8))
    with pytest.raises(ValueError):
        difference_noise(-1.0, 0.0)
