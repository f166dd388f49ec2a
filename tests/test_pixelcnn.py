"""Conditional PixelCNN++: causality, normalisation, sampling, conditioning, numerics, input checks, config."""

import functools
import inspect
import itertools
import json
import math
import re

import numpy as np
import pytest
import torch
from scipy import stats

from inversion.models.pixelcnn import Dropout, PixelCNNConfig, PixelCNNpp, _WeightNormed, train_pixelcnn
from inversion.models.sampling import draw, sample

CASES = [("softmax", 1), ("softmax", 3), ("logistic_mixture", 3), ("logistic_mixture", 1)]
CONTEXTS = [None, (5,), (4, 3, 3)]


def make_model(likelihood, C, context_shape, H=7, W=6, dtype=torch.float64, seed=0, n_filters=8, n_resolutions=3):
    """A small model whose every part is non-trivial: data-initialised, random channel tables, random output.

    Keep the lowest resolution above 1x1: there the up stream sees only the always-blank first row, so its
    output is the same for every image and data-dependent init divides by a standard deviation of ~0,
    which turns rounding noise into the signal (no longer a function any two implementations agree on)."""
    torch.manual_seed(seed)
    m = PixelCNNpp((C, H, W), context_shape, n_filters=n_filters, n_resnet=1, likelihood=likelihood, n_mixtures=3,
                   n_resolutions=n_resolutions)
    m = m.to(dtype).eval()
    x = torch.randint(0, 256, (16, C, H, W), dtype=torch.uint8)
    h = random_context(context_shape, 16, dtype)
    m.data_init(x, h)
    with torch.no_grad():
        if likelihood == "softmax" and C > 1:
            m.channel_tables.normal_(0, 1.0)
        m.out.g.mul_(20.0)  # sharper distributions make dependence on the inputs visible
    return m


def random_context(context_shape, n, dtype=torch.float64):
    return None if context_shape is None else torch.randn(n, *context_shape, dtype=dtype)


def raster(t):
    """[N, C, H, W] -> [N, D] in sampling order: pixels in raster order, channels inside a pixel."""
    return t.permute(0, 2, 3, 1).reshape(len(t), -1)


def unraster(t, shape):
    C, H, W = shape
    return t.reshape(len(t), H, W, C).permute(0, 3, 1, 2)


@pytest.mark.parametrize("likelihood,C", CASES)
@pytest.mark.parametrize("context_shape", CONTEXTS)
def test_causality_exact(likelihood, C, context_shape):
    """log p(x_k | x_<k) is bit-for-bit unchanged when any sub-pixel after k changes, for every cut k."""
    shape = (C, 7, 6)
    m = make_model(likelihood, C, context_shape)
    g = torch.Generator().manual_seed(1)
    x0 = raster(torch.randint(0, 256, (1, *shape), generator=g))
    D = x0.shape[1]
    batch = x0.repeat(D, 1)
    later = torch.arange(D)[None, :] > torch.arange(D)[:, None]  # row k: sub-pixels after k
    batch[later] = (batch[later] + torch.randint(1, 256, (int(later.sum()),), generator=g)) % 256
    h = random_context(context_shape, 1).repeat(D, *([1] * len(context_shape or ()))) if context_shape else None
    with torch.no_grad():
        lp = raster(m.log_prob(unraster(batch, shape).to(torch.uint8), h, reduce=False))
        # The reference is the unperturbed image in a batch of the same size: conv kernels may
        # block a batch differently by its size, which moves the last bits of every result.
        lp0 = raster(m.log_prob(unraster(x0.repeat(D, 1), shape).to(torch.uint8), h, reduce=False))
    earlier_or_same = ~later
    diff = (lp - lp0).abs()
    assert diff[earlier_or_same].max().item() == 0.0
    # The test is not vacuous: changing the later sub-pixels does change their own log-probs.
    assert (diff[later] > 1e-6).float().mean() > 0.9


@pytest.mark.parametrize("likelihood,C", CASES)
def test_prefix_dependence_is_real(likelihood, C):
    """The flip side of causality: the last sub-pixel's conditional depends on the first sub-pixel."""
    shape = (C, 5, 5)
    m = make_model(likelihood, C, None, *shape[1:])
    x = torch.randint(0, 256, (2, *shape), dtype=torch.uint8)
    x[1] = x[0]
    x[1, 0, 0, 0] = (int(x[0, 0, 0, 0]) + 128) % 256
    with torch.no_grad():
        lp = m.log_prob(x, reduce=False)
    assert (lp[0, -1, -1, -1] - lp[1, -1, -1, -1]).abs() > 1e-6


@pytest.mark.parametrize("likelihood,C", CASES)
@pytest.mark.parametrize("context_shape", [None, (5,)])
def test_normalisation(likelihood, C, context_shape):
    """With the prefix fixed, the 256 values of a sub-pixel have probabilities summing to 1."""
    shape = (C, 5, 4)
    m = make_model(likelihood, C, context_shape, *shape[1:])
    x0 = raster(torch.randint(0, 256, (1, *shape)))
    D = x0.shape[1]
    h = random_context(context_shape, 1)
    for k in sorted({0, 1, C - 1, D // 2, D - 1}):
        batch = x0.repeat(256, 1)
        batch[:, k] = torch.arange(256)
        hk = None if h is None else h.repeat(256, 1)
        with torch.no_grad():
            lp = raster(m.log_prob(unraster(batch, shape).to(torch.uint8), hk, reduce=False))[:, k]
        assert torch.isfinite(lp).all()
        assert abs(torch.logsumexp(lp, 0).exp().item() - 1.0) < 1e-6


def brute_force_mixture_probs(m, x, pos):
    """P(x_c = v | x_<c, earlier pixels) for v = 0..255 at pixel ``pos``, from plain sigmoid differences."""
    i, j = pos
    with torch.no_grad():
        out = m.forward(m.scale(x), None)[:, :, i, j]
    K, C = m.n_mixtures, m.image_shape[0]
    logits = out[0, :K]
    p = out[0, K:].reshape(K, 2 * C + C * (C - 1) // 2)
    mu, log_s, coeff = p[:, :C], p[:, C : 2 * C].clamp(min=-7), torch.tanh(p[:, 2 * C :])
    xs = x[0, :, i, j].double() / 127.5 - 1
    v = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    upper = torch.where(torch.arange(256) == 255, torch.tensor(math.inf, dtype=torch.float64), v + 1 / 255)
    lower = torch.where(torch.arange(256) == 0, torch.tensor(-math.inf, dtype=torch.float64), v - 1 / 255)
    weights = torch.softmax(logits, 0)
    result = []
    for c in range(C):
        mean = mu[:, c].clone()
        pair = c * (c - 1) // 2
        for jj in range(c):
            mean = mean + coeff[:, pair + jj] * xs[jj]
        s = torch.exp(log_s[:, c])
        a = (lower[None] - mean[:, None]) / s[:, None]
        b = (upper[None] - mean[:, None]) / s[:, None]
        # sigma(b) - sigma(a) = sigma(-a) - sigma(-b): in the upper tail (a > 0) the second form, else both terms
        # round to 1 and a bin of log p ~ -340 (seen on an Intel CPU, whose MKL rounds this model differently)
        # comes out as log 0
        mass = torch.where(a > 0, torch.sigmoid(-a) - torch.sigmoid(-b), torch.sigmoid(b) - torch.sigmoid(a))
        result.append((weights[:, None] * mass).sum(0) / weights.sum())
        # posterior weights of the components after seeing this channel's true value
        weights = weights * mass[:, int(x[0, c, i, j])]
    return result


@pytest.mark.parametrize("C", [1, 3])
def test_logistic_mixture_matches_brute_force_cdf(C):
    shape = (C, 4, 4)
    m = make_model("logistic_mixture", C, None, *shape[1:])
    x = torch.randint(0, 256, (1, *shape), dtype=torch.uint8)
    x[0, 0, 2, 1] = 0  # an edge value at one pixel, the other edge at another
    x[0, -1, 3, 3] = 255
    with torch.no_grad():
        lp = m.log_prob(x, reduce=False)
    for pos in [(0, 0), (2, 1), (3, 3)]:
        probs = brute_force_mixture_probs(m, x, pos)
        for c in range(C):
            assert abs(probs[c].sum().item() - 1) < 1e-9
            expected = torch.log(probs[c][int(x[0, c, pos[0], pos[1]])])
            assert torch.allclose(lp[0, c, pos[0], pos[1]], expected, rtol=1e-9, atol=1e-9)


def test_logistic_mixture_extremes_finite_and_precise():
    """Tiny bin masses, edge bins and huge scales: finite values and gradients, float32 close to float64."""
    m = PixelCNNpp((1, 1, 4), None, n_filters=4, n_resnet=1, likelihood="logistic_mixture", n_mixtures=1)
    x = torch.tensor([[[[0, 255, 128, 3]]]])
    # one component per pixel: (logit, mean, log_scale)
    params = torch.tensor([[0.0, 0.99, -7.0], [0.0, -0.99, -7.0], [0.0, -1.0, -7.0], [0.0, 0.0, 30.0]])
    out64 = params.T.reshape(1, 3, 1, 4).double().requires_grad_(True)
    lp64 = m._mixture_log_prob(out64, x)
    lp32 = m._mixture_log_prob(out64.detach().float(), x)
    assert torch.isfinite(lp64).all() and torch.isfinite(lp32).all()
    lp64.sum().backward()
    assert torch.isfinite(out64.grad).all()
    # Every value far out in a tail: magnitudes of ~1e3 nats, computed without cancellation.
    assert (lp64[0, 0, 0, :3] < -500).all()
    assert torch.allclose(lp32.double(), lp64.detach(), rtol=1e-5, atol=1e-3)
    # A very wide logistic: the bin mass is ~ density x width, tiny but accurate.
    s = math.exp(30.0)
    v = 3 / 127.5 - 1
    # mass = sigmoid((v + 1/255)/s) - sigmoid((v - 1/255)/s) = sigmoid'(~0) * (2/255)/s to ~1e-26 here
    exact = math.log(0.25 * 2 / 255 / s)
    assert abs(lp64[0, 0, 0, 3].item() - exact) < 1e-9


def test_weight_norm_data_init_statistics():
    """After data_init on a batch, each weight-normed layer's outputs on it have mean 0, std init_scale."""
    torch.manual_seed(0)
    m = PixelCNNpp((1, 8, 8), (6,), n_filters=8, n_resnet=1, likelihood="softmax").double().eval()
    x = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    h = torch.randn(32, 6, dtype=torch.float64) * 5 + 3
    m.data_init(x, h)
    outputs = {}
    hooks = [mod.register_forward_hook(lambda mod, inp, out: outputs.__setitem__(mod, out))
             for mod in m.modules() if isinstance(mod, _WeightNormed)]
    with torch.no_grad():
        m.log_prob(x, h)
    for hk in hooks:
        hk.remove()
    assert len(outputs) > 20
    for mod, out in outputs.items():
        dims = [d for d in range(out.dim()) if d != 1]
        assert out.mean(dims).abs().max() < 1e-8
        assert (out.std(dims, unbiased=False) - mod.init_scale).abs().max() < 1e-6 * max(1, mod.init_scale)


@pytest.mark.parametrize("likelihood,C", CASES)
@pytest.mark.parametrize("context_shape", CONTEXTS)
def test_fixed_point_sampler_equals_naive(likelihood, C, context_shape):
    """The whole-image fixed-point sampler returns bit-identical images to the per-pixel one (float64)."""
    m = make_model(likelihood, C, context_shape, 5, 4)
    g = torch.Generator().manual_seed(3)
    noise = m.draw_noise(6, g)
    h = random_context(context_shape, 6)
    a = draw(m, h, n=6, noise=noise, method="naive")
    b = draw(m, h, n=6, noise=noise, method="fixed_point")
    assert a.images.dtype == torch.uint8 and a.images.shape == (6, C, 5, 4)
    assert torch.equal(a.images, b.images)
    assert a.network_passes == 5 * 4 and 1 <= b.network_passes <= 5 * 4 + 1
    a = a.images
    assert len(torch.unique(a)) > 10  # not a degenerate all-equal image


def chi_square_pvalue(observed_values, probs, min_expected=5.0):
    """Pearson chi-square of integer observations against probabilities over 0..255, pooling rare values."""
    n = len(observed_values)
    counts = np.bincount(observed_values, minlength=256).astype(float)
    expected = probs * n
    order = np.argsort(expected)[::-1]
    obs_bins, exp_bins, acc_o, acc_e = [], [], 0.0, 0.0
    for idx in order:
        acc_o += counts[idx]
        acc_e += expected[idx]
        if acc_e >= min_expected:
            obs_bins.append(acc_o), exp_bins.append(acc_e)
            acc_o = acc_e = 0.0
    if acc_e > 0:
        obs_bins[-1] += acc_o
        exp_bins[-1] += acc_e
    return stats.chisquare(obs_bins, exp_bins).pvalue, len(obs_bins)


def sub_pixel_log_probs(m, images, chunk=4096):
    """``m.log_prob(images, reduce=False)`` a few thousand images at a time: the same numbers (each image is
    scored alone), but tensors that stay in cache instead of gigabyte temporaries (19 -> 11.5 s for the
    100k float64 images of the checks below, AMD EPYC, 2 threads)."""
    with torch.no_grad():
        return torch.cat([m.log_prob(part, reduce=False) for part in images.split(chunk)])


@functools.lru_cache(maxsize=None)
def first_pixel_reference(likelihood, C):
    """The model both samplers are checked on, and what log_prob says about its first pixel: the first
    sub-pixel's probabilities and (C > 1) the second channel's marginal, summed over the first channel's 256
    values (65536 images of log_prob: computed once, shared by the two sampling methods' tests)."""
    shape = (C, 2, 2)
    m = make_model(likelihood, C, None, *shape[1:], seed=4, n_resolutions=1)  # 2x2: one resolution (see make_model)
    with torch.no_grad():
        m.out.g.mul_(0.1)  # back to moderately spread distributions
    base = torch.zeros(256, *shape, dtype=torch.uint8)
    base[:, 0, 0, 0] = torch.arange(256, dtype=torch.uint8)
    with torch.no_grad():
        p0 = m.log_prob(base, reduce=False)[:, 0, 0, 0].exp().numpy()
    marginal1 = None
    if C > 1:
        grid = torch.zeros(256 * 256, *shape, dtype=torch.uint8)
        grid[:, 0, 0, 0] = torch.arange(256).repeat_interleave(256).to(torch.uint8)
        grid[:, 1, 0, 0] = torch.arange(256).repeat(256).to(torch.uint8)
        lp = sub_pixel_log_probs(m, grid)
        marginal1 = (lp[:, 0, 0, 0] + lp[:, 1, 0, 0]).exp().reshape(256, 256).sum(0).numpy()
    return m, p0, marginal1


@pytest.mark.parametrize("likelihood,C", [("softmax", 1), ("softmax", 3), ("logistic_mixture", 3)])
def test_samples_follow_log_prob(likelihood, C):
    """Chi-square: the empirical frequencies of sampled sub-pixels match the probabilities log_prob gives.
    Checked on the cached sampler (the book's); the fixed-point one returns the same images from the same noise
    (asserted here on 64, and both equal the per-pixel sampler bit for bit: test_fixed_point_sampler_equals_naive,
    tests/test_sampling.py), so a second chi-square of the same draws would add ~35 s and no check."""
    m, p0, marginal1 = first_pixel_reference(likelihood, C)
    n = 6000
    samples = sample(m, n=n, generator=torch.Generator().manual_seed(5), method="cached")
    fixed_point = sample(m, n=64, generator=torch.Generator().manual_seed(5), method="fixed_point")
    assert torch.equal(fixed_point, sample(m, n=64, generator=torch.Generator().manual_seed(5), method="cached"))
    # First sub-pixel: its probabilities need no prefix.
    pval, bins = chi_square_pvalue(samples[:, 0, 0, 0].long().numpy(), p0)
    assert bins >= 10 and pval > 1e-3
    if C > 1:
        # Second channel of the first pixel: its marginal sums over the first channel's 256 values.
        pval, bins = chi_square_pvalue(samples[:, 1, 0, 0].long().numpy(), marginal1)
        assert bins >= 10 and pval > 1e-3
    # Last sub-pixel given each sample's own prefix: randomised probability integral transform is uniform.
    k = 400
    cand = samples[:k].repeat_interleave(256, 0)
    cand[:, -1, -1, -1] = torch.arange(256, dtype=torch.uint8).repeat(k)
    p_last = sub_pixel_log_probs(m, cand)[:, -1, -1, -1].exp().reshape(k, 256).numpy()
    v = samples[:k, -1, -1, -1].long().numpy()
    cdf_below = np.array([p_last[i, : v[i]].sum() for i in range(k)])
    pit = cdf_below + np.random.default_rng(0).uniform(size=k) * p_last[np.arange(k), v]
    assert stats.kstest(pit, "uniform").pvalue > 1e-3


def test_float32_agrees_with_float64():
    for likelihood, C in CASES:
        m64 = make_model(likelihood, C, (5,), 6, 6)
        m32 = make_model(likelihood, C, (5,), 6, 6)
        m32.load_state_dict(m64.state_dict())
        m32 = m32.float()
        x = torch.randint(0, 256, (4, C, 6, 6), dtype=torch.uint8)
        h = torch.randn(4, 5, dtype=torch.float64)
        with torch.no_grad():
            a, b = m64.log_prob(x, h), m32.log_prob(x, h.float())
        assert b.dtype == torch.float32 and torch.isfinite(b).all()
        assert torch.allclose(a, b.double(), rtol=1e-5, atol=1e-3), (likelihood, C, a, b)


def test_bf16_autocast_close_to_float32():
    m = make_model("logistic_mixture", 3, (5,), 6, 6, dtype=torch.float32)
    x = torch.randint(0, 256, (4, 3, 6, 6), dtype=torch.uint8)
    h = torch.randn(4, 5)
    with torch.no_grad():
        ref = m.log_prob(x, h)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m.log_prob(x, h)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert ((low - ref).abs() / ref.abs()).max() < 0.05


def test_fresh_model_works_without_init_call():
    m = PixelCNNpp((1, 6, 6), (3,), n_filters=8, n_resnet=1)
    h = torch.randn(2, 3)
    lp = m.log_prob(torch.zeros(2, 1, 6, 6, dtype=torch.uint8), h)
    assert lp.shape == (2,) and torch.isfinite(lp).all()
    s = sample(m, h)
    assert s.shape == (2, 1, 6, 6) and s.dtype == torch.uint8
    assert m.training  # sample() restores the mode it found


@pytest.mark.parametrize("context_shape", [(4,), (3, 4, 4)])
def test_conditioning_matters_after_training(tmp_path, context_shape):
    """Trained on (x, h) pairs where h determines x up to noise, log p(x | h) beats a shuffled h."""
    g = torch.Generator().manual_seed(0)
    n, shape = 512, (1, 8, 8)
    cls = torch.randint(0, 4, (n,), generator=g)
    templates = torch.zeros(4, *shape)
    templates[0, :, :4, :] = 1  # top half, bottom half, left half, right half
    templates[1, :, 4:, :] = 1
    templates[2, :, :, :4] = 1
    templates[3, :, :, 4:] = 1
    noise = torch.rand(n, *shape, generator=g) < 0.1
    x = ((templates[cls] > 0) ^ noise).to(torch.uint8) * 255
    if len(context_shape) == 1:
        h = torch.nn.functional.one_hot(cls, 4).float()
    else:
        h = torch.nn.functional.avg_pool2d(templates[cls].float(), 2).repeat(1, 3, 1, 1)
    m = PixelCNNpp(shape, context_shape, n_filters=16, n_resnet=1, dropout=0.0)
    # 75 steps: the log-likelihood gap is ~41 nats with a one-hot context (42 after 150), far above the 5 asserted
    train_pixelcnn(m, x[:448], h[:448], tmp_path, PixelCNNConfig(steps=75, batch_size=32, lr=3e-3), progress=False)
    m.eval()
    xt, ht = x[448:], h[448:]
    perm = torch.roll(torch.arange(len(ht)), 1)
    shuffled_ok = cls[448:][perm] != cls[448:]
    with torch.no_grad():
        true_lp = m.log_prob(xt, ht)[shuffled_ok].mean()
        shuffled_lp = m.log_prob(xt, ht[perm])[shuffled_ok].mean()
    assert true_lp > shuffled_lp + 5.0, (true_lp, shuffled_lp)


def test_training_resumes_after_kill(tmp_path):
    x = torch.randint(0, 256, (64, 1, 6, 6), dtype=torch.uint8)
    h = torch.randn(64, 3)

    def model():
        torch.manual_seed(0)
        return PixelCNNpp((1, 6, 6), (3,), n_filters=8, n_resnet=1)

    def config(steps):
        return PixelCNNConfig(steps=steps, batch_size=16)

    a = model()
    train_pixelcnn(a, x, h, tmp_path / "a", config(6), progress=False, checkpoint_every=2)
    b = model()
    train_pixelcnn(b, x, h, tmp_path / "b", config(3), progress=False, checkpoint_every=2)
    b = model()  # a new process: fresh weights; state (data-initialised weights included) from the checkpoint
    train_pixelcnn(b, x, h, tmp_path / "b", config(6), progress=False, checkpoint_every=2)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_bad_inputs_raise_clear_errors():
    m = PixelCNNpp((1, 6, 6), (3,), n_filters=8, n_resnet=1)
    ok_x, ok_h = torch.zeros(2, 1, 6, 6, dtype=torch.uint8), torch.zeros(2, 3)
    bad = [
        (dict(x=torch.zeros(2, 1, 5, 6, dtype=torch.uint8)), "shape"),
        (dict(x=torch.zeros(2, 6, 6, dtype=torch.uint8)), "shape"),
        (dict(x=torch.zeros(2, 1, 6, 6)), "integer"),
        (dict(x=torch.full((2, 1, 6, 6), 300)), "0..255"),
        (dict(x=torch.full((2, 1, 6, 6), -1)), "0..255"),
        (dict(h=torch.zeros(2, 4)), "context must have shape"),
        (dict(h=torch.zeros(3, 3)), "context must have shape"),
        (dict(h=None), "needs a context"),
        (dict(h=torch.full((2, 3), float("nan"))), "NaN"),
        (dict(h=torch.zeros(2, 3, dtype=torch.long)), "floating"),
    ]
    for override, message in bad:
        args = dict(x=ok_x, h=ok_h) | override
        with pytest.raises(ValueError, match=message):
            m.log_prob(args["x"], args["h"])
    with pytest.raises(ValueError, match="unconditional"):
        PixelCNNpp((1, 6, 6), n_filters=8, n_resnet=1).log_prob(ok_x, ok_h)
    with pytest.raises(ValueError, match="likelihood"):
        PixelCNNpp((1, 6, 6), likelihood="gaussian")
    with pytest.raises(ValueError, match="image_shape"):
        PixelCNNpp((6, 6))
    with pytest.raises(ValueError, match="context_shape"):
        PixelCNNpp((1, 6, 6), context_shape=(2, 3))
    with pytest.raises(ValueError, match="noise"):
        sample(m, ok_h, noise=torch.zeros(2, 1, 6, 6))
    with pytest.raises(ValueError, match="method"):
        sample(m, ok_h, method="magic")
    with pytest.raises(ValueError, match="context .* or n"):
        sample(PixelCNNpp((1, 6, 6), n_filters=8, n_resnet=1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    m = make_model("logistic_mixture", 3, (4, 3, 3), 8, 8, dtype=torch.float32)
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    h = torch.randn(4, 4, 3, 3)
    with torch.no_grad():
        cpu = m.log_prob(x, h)
        gpu = m.cuda().log_prob(x.cuda(), h.cuda()).cpu()
    assert torch.allclose(cpu, gpu, rtol=1e-4, atol=1e-2)
    noise = m.draw_noise(3, torch.Generator().manual_seed(0))
    assert sample(m, h[:3].cuda(), noise=noise).shape == (3, 3, 8, 8)


# ---------------------------------------------------------------------------------------------- config
def test_config_rejects_bad_values_naming_the_field():
    bad = [("n_filters", 0), ("n_resnet", -1), ("n_resolutions", 0), ("n_mixtures", 0), ("likelihood", "gaussian"),
           ("dropout", 1.0), ("dropout", -0.1), ("context_dropout", 1.5), ("steps", -1), ("batch_size", 0),
           ("lr", 0.0), ("lr_decay", 0.0), ("lr_decay", 1.5), ("eval_every", -1), ("patience", -2),
           ("n_filters", "64"), ("steps", True), ("batch_size", 32.0), ("bf16", 1), ("seed", None)]
    for name, value in bad:
        with pytest.raises(ValueError, match=rf"PixelCNNConfig\.{name} must be .*, got {re.escape(repr(value))}"):
            PixelCNNConfig(**{name: value})
    # the boundaries themselves are fine
    PixelCNNConfig(steps=0, dropout=0.0, lr_decay=1.0, lr=1, n_filters=1, likelihood="logistic_mixture")
    # the model's constructor runs the same checks
    with pytest.raises(ValueError, match=r"PixelCNNConfig\.dropout"):
        PixelCNNpp((1, 6, 6), dropout=1.0)


def test_constructor_defaults_are_the_config_defaults():
    """PixelCNNpp's keyword defaults are PixelCNNConfig's, so the two cannot drift apart; the architecture
    fields are exactly the constructor's keywords after the shapes, and model.config keeps its keys."""
    params = inspect.signature(PixelCNNpp.__init__).parameters
    arch = PixelCNNConfig().architecture()
    assert set(PixelCNNConfig.ARCHITECTURE) == set(params) - {"self", "image_shape", "context_shape"}
    assert {name: params[name].default for name in PixelCNNConfig.ARCHITECTURE} == arch
    assert arch == dict(n_filters=64, n_resnet=3, n_resolutions=3, likelihood="softmax", n_mixtures=10, dropout=0.5,
                        context_dropout=0.0)
    m = PixelCNNpp.from_config((1, 5, 5), (3,), PixelCNNConfig(n_filters=4, n_resnet=1, n_resolutions=2))
    assert m.config == dict(image_shape=(1, 5, 5), context_shape=(3,), n_filters=4, n_resnet=1, likelihood="softmax",
                            n_mixtures=10, dropout=0.5, context_dropout=0.0, n_resolutions=2)
    assert PixelCNNpp(**m.config).config == m.config


def test_run_config_leaves_out_steps_so_more_steps_resume(tmp_path):
    """A toy stage trains one workdir in growing step counts: config.json must not hold the steps."""
    x = torch.randint(0, 256, (16, 1, 4, 4), dtype=torch.uint8)
    torch.manual_seed(0)
    m = PixelCNNpp((1, 4, 4), None, n_filters=4, n_resnet=1, n_resolutions=1)
    train_pixelcnn(m, x, None, tmp_path, PixelCNNConfig(steps=2, batch_size=8), progress=False)
    r = train_pixelcnn(m, x, None, tmp_path, PixelCNNConfig(steps=4, batch_size=8), progress=False)
    assert r.step == 4
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "steps" not in saved and saved["batch_size"] == 8 and saved["lr_decay"] == 0.9999
    with pytest.raises(ValueError, match="different run"):  # but another learning rate is another run
        train_pixelcnn(m, x, None, tmp_path, PixelCNNConfig(steps=6, batch_size=8, lr=5e-3), progress=False)


@pytest.mark.parametrize("module", ["pixelcnn", "vae"])
def test_edge_bins_are_exact_in_float64_where_softplus_takes_its_linear_shortcut(module):
    """log sigmoid(u) for u in the far tail (|u| ≈ 20-30): softplus(x) returns x itself above its threshold
    of 20, which dropped log1p(exp(-|u|)) ≈ 2e-9 nats there. Compared with 50-digit arithmetic on the very
    same float64 bin edges."""
    import mpmath

    from inversion.models import vae

    mpmath.mp.dps = 50
    x = torch.tensor([[[[0, 255, 0, 255]]]])
    mean = torch.tensor([0.99, -0.99, 0.99, -0.99], dtype=torch.float64)
    s = torch.tensor([1.986 / 21, 1.986 / 21, 1.986 / 27, 1.986 / 27], dtype=torch.float64)  # |edge| ≈ 21, 27
    if module == "pixelcnn":
        m = PixelCNNpp((1, 1, 4), None, n_filters=4, n_resnet=1, likelihood="logistic_mixture", n_mixtures=1)
        out = torch.stack([torch.zeros(4, dtype=torch.float64), mean, s.log()]).reshape(1, 3, 1, 4)
        lp = m._mixture_log_prob(out, x)[0, 0, 0]
    else:
        lp = vae._logistic_log_prob(mean.reshape(1, 1, 1, 4), s.log().reshape(1, 1, 1, 4), x)[0, 0, 0]
    centered = x[0, 0, 0].double() / 127.5 - 1.0 - mean
    inv_s = torch.exp(-s.log())
    upper, lower = inv_s * (centered + 1.0 / 255.0), inv_s * (centered - 1.0 / 255.0)
    for i in range(4):
        edge = -float(lower[i]) if int(x[0, 0, 0, i]) == 255 else float(upper[i])  # log sigmoid(edge)
        assert abs(edge) > 20
        exact = float(-mpmath.log1p(mpmath.exp(-mpmath.mpf(edge))))
        assert abs(lp[i].item() - exact) <= 1e-15 * abs(exact), (i, lp[i].item() - exact)


@pytest.mark.parametrize("likelihood", ["softmax", "logistic_mixture"])
@pytest.mark.parametrize("context_shape", [(5,), (3, 4, 4)])
def test_start_from_is_exactly_the_unconditional_model_and_then_learns_h(likelihood, context_shape):
    torch.manual_seed(0)
    kw = dict(n_filters=8, n_resnet=1, n_resolutions=2, likelihood=likelihood, n_mixtures=2, dropout=0.0)
    u = PixelCNNpp((3, 6, 6), None, **kw).double()
    x = torch.randint(0, 256, (4, 3, 6, 6))
    u.data_init(x)
    c = PixelCNNpp((3, 6, 6), context_shape, **kw).double().start_from(u)
    h = 5 * torch.randn(4, *context_shape, dtype=torch.float64)
    assert torch.equal(c.log_prob(x, h), u.log_prob(x))  # every h: the conditioning starts at exactly zero
    # ... and is trainable: the gains get a gradient, so h can enter
    c.log_prob(x, h).sum().backward()
    gains = [m.context.g.grad for m in c.modules() if getattr(m, "context", None) is not None]
    assert gains and all(g is not None for g in gains) and any(g.abs().sum() > 0 for g in gains)
    with pytest.raises(ValueError, match="same architecture"):
        PixelCNNpp((3, 6, 6), context_shape, **{**kw, "n_filters": 4}).start_from(u)
    with pytest.raises(ValueError, match="unconditional model"):
        PixelCNNpp((3, 6, 6), context_shape, **kw).start_from(c)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_dropout_is_nn_dropout_in_distribution(p, dtype):
    """The cheaper dropout keeps each unit with probability 1 - p and scales by 1 / (1 - p), in the input's
    dtype; gradients flow through the kept units only, with the same scale; eval mode and p = 0 are the identity."""
    torch.manual_seed(0)
    x = (torch.rand(200_000, dtype=torch.float64) + 0.5).to(dtype).requires_grad_(True)
    y = Dropout(p).train()(x)
    assert y.dtype == dtype
    kept = y != 0
    n = x.numel()
    # the kept fraction within 5 binomial standard deviations of 1 - p (a rate off by 0.003 fails at p = 0.2)
    assert abs(kept.double().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    # kept values are the input times 1 / (1 - p), to the input dtype's rounding
    eps = torch.finfo(dtype).eps
    scale = torch.where(kept, torch.tensor(1 / (1 - p), dtype=torch.float64), 0.0)
    assert torch.allclose(y.detach().double(), x.detach().double() * scale, rtol=eps, atol=0)
    y.sum().backward()
    assert torch.allclose(x.grad.double(), scale, rtol=eps, atol=0)
    assert Dropout(p).eval()(x) is x
    assert Dropout(0.0).train()(x) is x


def test_dropout_masks_differ_between_calls_and_follow_the_seed():
    x = torch.ones(10_000)
    torch.manual_seed(3)
    a, b = Dropout(0.5).train()(x), Dropout(0.5).train()(x)
    torch.manual_seed(3)
    assert not torch.equal(a, b) and torch.equal(Dropout(0.5).train()(x), a)
    with pytest.raises(ValueError, match=r"dropout rate must be in \[0, 1\)"):
        Dropout(1.0)


@pytest.mark.parametrize("context_shape", [None, (5,)])
def test_recorded_step_loss_is_the_checked_loss_without_its_checks(tmp_path, context_shape):
    """Under cuda_graph, fit_density checks every training pair once, then hands fit the same loss without the
    host-side checks (a recorded step cannot read values back): equal to the checked loss on any batch, exactly;
    bad pixels are still refused, before training starts. The recording itself needs a GPU
    (bench/cuda_graph_training.py); here fit is replaced to catch the loss it is given."""
    from unittest import mock

    from inversion.models import density_training
    from inversion.training import TrainConfig

    m = make_model("softmax", 1, context_shape, dtype=torch.float64)
    x = torch.randint(0, 256, (6, 1, 7, 6))
    h = None if context_shape is None else random_context(context_shape, 6)
    losses = {}
    for graph in (False, True):
        with mock.patch.object(density_training, "fit") as fit:
            density_training.fit_density(m, x, h, tmp_path, TrainConfig(steps=1, batch_size=3, lr=1e-3, cuda_graph=graph))
        loss_fn = fit.call_args.args[1]
        batch = [x[:3]] if h is None else [x[:3], h[:3]]
        losses[graph] = loss_fn(m, batch)
    assert torch.equal(losses[True], losses[False]) and losses[False].dtype == torch.float64
    bad = x.clone()
    bad[0, 0, 0, 0] = 256
    with mock.patch.object(density_training, "fit") as fit, pytest.raises(ValueError):
        density_training.fit_density(m, bad, h, tmp_path, TrainConfig(steps=1, batch_size=3, lr=1e-3, cuda_graph=True))
    fit.assert_not_called()
