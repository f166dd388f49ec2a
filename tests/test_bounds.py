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


def test_seed_paired_difference_removes_what_the_seeds_share():
    """Common random numbers: when a seed moves both settings' NCE alike (same initialisation, batch order
    and dropout), the per-seed differences cancel it; treated as independent, it counts twice."""
    from inversion.bounds import seed_paired_difference

    g = torch.Generator().manual_seed(0)
    n, seeds = 400, range(5)
    image = torch.randn(n, generator=g, dtype=torch.float64) * 30  # per-image difficulty, shared by all
    shared = {s: 10 * torch.randn((), generator=g, dtype=torch.float64) for s in seeds}  # each seed's luck
    a = {s: -600 + image + shared[s] + 0.5 * torch.randn(n, generator=g, dtype=torch.float64) for s in seeds}
    b = {s: -603 + image + shared[s] + 0.5 * torch.randn(n, generator=g, dtype=torch.float64) for s in seeds}
    d = seed_paired_difference(a, b)
    assert d.n_seeds == 5 and abs(d.value - 3.0) < 0.2
    assert d.noise < 0.1 < 5 < d.independent_noise  # the seeds' 10-nat luck is gone from the paired noise
    # the noise is the spread of the per-seed differences and the test-set s.e., combined
    per_seed = torch.stack([(a[s] - b[s]).mean() for s in seeds])
    assert d.seed_sd == pytest.approx(per_seed.std().item())
    assert d.noise == pytest.approx((d.seed_sd**2 / 5 + d.test_se**2) ** 0.5)
    # only the seeds both sides have are paired; fewer than two is an error
    assert seed_paired_difference({**a, 9: a[0]}, b).n_seeds == 5
    with pytest.raises(ValueError, match="at least two seeds"):
        seed_paired_difference({0: a[0]}, b)
