"""inversion.models.vae: the conditional VAE inverter (discretized decoder, ELBO, IWAE) and the supervised VAE.

Tiny models throughout (images of 4 to 60 sub-pixels, latent dimension 2 to 4), on one thread. The bound tests compare with
log P(x | h) computed by quadrature over a 2-d latent, so "ELBO <= IWAE_k <= log P" is checked against the
exact value, not only against another estimate.
"""

import inspect
import json
import math
import re

import pytest
import torch

from inversion.models.vae import (LIKELIHOODS, ConditionalVAE, SupervisedVAE, SupervisedVAEConfig, VAEConfig,
                                  draw_sub_pixels, load_supervised_vae, load_vae, train_supervised_vae, train_vae,
                                  value_log_probs)

TINY = dict(n_filters=4, latent_dim=2, context_hidden=4)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: a second intra-op thread on two busy cores only adds waiting (10x here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def images(n, shape, seed=0):
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen(seed))


def halves(n, seed=0, size=4):
    """Toy grey images: one half bright, the other dark (label 1: the left half is bright), with noise."""
    g = gen(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    left = torch.arange(size) < size // 2
    bright = torch.where(y[:, None].bool(), left, ~left).float()  # [n, size] per column
    x = 40 + 160 * bright[:, None, None, :].expand(n, 1, size, size) + 20 * torch.randn(n, 1, size, size, generator=g)
    return x.round().clamp(0, 255).to(torch.uint8), y


# ------------------------------------------------------------------------------------- the likelihood
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("context_shape", [(3,), (2, 3, 3)], ids=["vector", "map"])
def test_decoder_probabilities_sum_to_one_and_match_the_bound(likelihood, context_shape):
    torch.manual_seed(0)
    m = ConditionalVAE((3, 4, 5), context_shape, likelihood=likelihood, **TINY).double()
    with torch.no_grad():
        m.decoder.out.weight.mul_(30)  # far from uniform
    h, z = torch.randn(2, *context_shape, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)
    p = m.value_probs(h, z)
    assert p.shape == (2, 3, 256, 4, 5) and (p >= 0).all()
    torch.testing.assert_close(p.sum(dim=2), torch.ones(2, 3, 4, 5, dtype=torch.float64), rtol=0, atol=1e-12)
    # the bound's log p(x | h, z) is the log of the same table at x
    x = images(2, (3, 4, 5))
    x[0, 0, 0, 0], x[1, 2, 3, 4] = 0, 255
    lp = m._log_px(z, m.context(h), x.long())
    torch.testing.assert_close(lp, p.gather(2, x.long().unsqueeze(2)).log().sum(dim=(1, 2, 3, 4)))
    mean = m.reconstruct_mean(h, z)
    assert mean.shape == (2, 3, 4, 5) and (mean >= 0).all() and (mean <= 1).all()


def test_logistic_extremes_normalised_finite_and_drawn_by_their_cdf():
    # mean, log_scale per sub-pixel: a needle at each edge, at a bin edge, and a huge scale
    params = torch.tensor([[0.99, -7.0], [-1.0, -7.0], [1 / 255, -7.0], [0.0, 30.0], [0.3, -2.0]], dtype=torch.float64)
    params = params.T.reshape(1, 1, 2, 1, 5).requires_grad_(True)
    lp = value_log_probs("logistic", params)
    assert torch.isfinite(lp).all()
    torch.testing.assert_close(lp.exp().sum(dim=2), torch.ones(1, 1, 1, 5, dtype=torch.float64), rtol=0, atol=1e-12)
    lp[:, :, [0, 255, 128]].sum().backward()
    assert torch.isfinite(params.grad).all()
    # inverse-CDF draws follow the table (both likelihoods): Kolmogorov distance of 20000 draws (the 1%
    # critical value is 1.63 / sqrt(20000) = 0.012)
    logits = torch.randn(1, 1, 256, 1, 1, dtype=torch.float64) * 3
    for likelihood, par in [("logistic", params.detach()[..., 4:]), ("softmax", logits)]:
        probs = value_log_probs(likelihood, par).exp()[0, 0, :, 0, 0]
        u = torch.rand(1, 1, 1, 20000, generator=gen(1), dtype=torch.float64)
        draws = draw_sub_pixels(likelihood, par.expand(-1, -1, -1, -1, 20000), u).flatten()
        freq = torch.bincount(draws, minlength=256).double() / len(draws)
        assert (freq.cumsum(0) - probs.cumsum(0)).abs().max() < 0.012, likelihood


# ------------------------------------------------------------------------------------- the bounds
SHAPE = (1, 2, 4)


@pytest.fixture(scope="module")
def bounds():
    """ELBO, IWAE_k and exact log P(x | h) for 3 images under a model whose posterior differs from q."""
    torch.manual_seed(0)
    m = ConditionalVAE(SHAPE, (3,), n_filters=8, latent_dim=2, context_hidden=4).double()
    with torch.no_grad():  # make p(x | h, z) depend on z, and q wider than the posterior (so that a slip in
        m.decoder.fc.weight[:, :2].mul_(10)  # q's log-variance term would show): ELBO 1-2 nats below log P
        m.decoder.out.weight.mul_(10)
        m.encoder.head.bias[2:].add_(1.0)
    h = torch.randn(3, 3, generator=gen(1), dtype=torch.float64)
    z0 = torch.tensor([[1.5, -1.5], [-2.0, 0.5], [0.5, 2.0]], dtype=torch.float64)
    with torch.no_grad():
        x = m._draw_images(z0, m.context(h), gen(0))  # images the model explains with z away from 0
    # log P(x | h) = log sum over a 61 x 61 grid on [-6, 6]^2 of p(x | h, z) N(z; 0, I) dz (a 121 x 121 grid gives
    # the same to 2e-3 nats; the prior mass outside the square is ~1e-8)
    grid = torch.linspace(-6, 6, 61, dtype=torch.float64)
    z = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    log_prior = (-0.5 * z.square() - 0.5 * math.log(2 * math.pi)).sum(1)
    with torch.no_grad():
        exact = torch.stack([torch.logsumexp(m._log_px(z, m.context(h[i : i + 1]).expand(len(z), -1),
                                                       x[i : i + 1].long().expand(len(z), -1, -1, -1)) + log_prior, 0)
                             for i in range(3)]) + 2 * math.log(12 / 60)
    g = gen(2)
    # r independent estimates per image: the images repeated r times, [r, 3] back
    r_of = {"elbo": 1000, 1: 1000, 4: 250, 16: 100, 64: 40}
    with torch.no_grad():
        elbo = m.elbo(x.repeat(1000, 1, 1, 1), h.repeat(1000, 1), generator=g, batch_size=3000).view(1000, 3)
    iwae = {k: m.iwae_bound(x.repeat(r, 1, 1, 1), h.repeat(r, 1), k=k, generator=g, batch_size=3000).view(r, 3)
            for k, r in r_of.items() if k != "elbo"}
    return dict(exact=exact, elbo=elbo, iwae=iwae, iwae_4096=m.iwae_bound(x, h, k=4096, generator=g, batch_size=4096))


def mean_se(t):
    return t.mean(0), t.std(0) / math.sqrt(len(t))


def test_elbo_below_iwae_below_log_p(bounds):
    """Per image, averaged over repeats: E[ELBO] <= E[IWAE_k] <= log P(x | h), each up to 3 standard errors of
    the difference (the estimates are random; the seeds are fixed, so the test is deterministic)."""
    exact, (elbo, elbo_se) = bounds["exact"], mean_se(bounds["elbo"])
    assert (exact - elbo > 0.3).all(), "the model is too easy: the ELBO should be visibly below log P"
    assert (elbo <= exact + 3 * elbo_se).all()
    for k, draws in bounds["iwae"].items():
        iwae, se = mean_se(draws)
        assert (elbo <= iwae + 3 * (elbo_se**2 + se**2).sqrt()).all(), k
        assert (iwae <= exact + 3 * se).all(), k
    # many samples close the gap: one IWAE_4096 is within 0.1 nats of log P (about 4 of its standard
    # deviations; the gap is 1-3 nats at k = 1)
    assert ((exact - bounds["iwae_4096"]).abs() < 0.1).all()
    # k = 1 is the ELBO with its KL sampled instead of computed: the same expectation
    iwae1, se1 = mean_se(bounds["iwae"][1])
    assert ((iwae1 - elbo).abs() < 3 * (se1**2 + elbo_se**2).sqrt()).all()


def test_bounds_when_the_decoder_ignores_z():
    """A decoder blind to z knows log P(x | h) = log p(x | h, z) for any z, and then ELBO = log P - KL exactly:
    the closed-form KL is checked against a Monte Carlo E_q[log q - log p] (IWAE_1 over 4000 draws, 3 standard
    errors), and IWAE_4096 against log P (log of the mean of p(z) / q(z) over 4096 draws: within 0.1)."""
    torch.manual_seed(0)
    m = ConditionalVAE(SHAPE, (3,), n_filters=8, latent_dim=2, context_hidden=4).double()
    with torch.no_grad():
        m.decoder.fc.weight[:, :2].zero_()
        m.encoder.head.bias.copy_(torch.tensor([0.8, -0.5, 0.7, 0.4]))  # KL about a nat; q wider than p(z)
    x, h = images(3, SHAPE), torch.randn(3, 3, generator=gen(1), dtype=torch.float64)
    with torch.no_grad():
        log_p = m._log_px(torch.zeros(3, 2, dtype=torch.float64), m.context(h), x.long())
        mean, log_var = m.encode(x, h)
        kl = 0.5 * (mean.square() + log_var.exp() - 1 - log_var).sum(1)
        assert (kl > 0.5).all()
        torch.testing.assert_close(m.elbo(x, h, generator=gen()), log_p - kl)
    draws = m.iwae_bound(x.repeat(4000, 1, 1, 1), h.repeat(4000, 1), k=1, generator=gen(1), batch_size=12000)
    mc, se = mean_se(draws.view(4000, 3))
    assert ((mc - (log_p - kl)).abs() < 3 * se).all() and (se < 0.05).all()
    assert ((m.iwae_bound(x, h, k=4096, generator=gen(2)) - log_p).abs() < 0.1).all()


def test_iwae_is_non_decreasing_in_k(bounds):
    """E[IWAE_k] over images and 40 to 1000 repeats per k: each step up in k gains, up to 3 standard errors."""
    ks = [1, 4, 16, 64]
    means = [bounds["iwae"][k].mean() for k in ks]
    ses = [bounds["iwae"][k].mean(1).std() / math.sqrt(len(bounds["iwae"][k])) for k in ks]
    for a in range(len(ks) - 1):
        assert means[a + 1] >= means[a] - 3 * math.hypot(ses[a], ses[a + 1]), (ks[a], ks[a + 1])
    assert means[-1] - means[0] > 0.5  # and the gain is real


def test_float32_agrees_with_float64():
    torch.manual_seed(0)
    m32 = ConditionalVAE((1, 4, 4), (2, 3, 3), **TINY)
    m64 = ConditionalVAE(**m32.config).double()
    m64.load_state_dict(m32.state_dict())
    x, h = images(4, (1, 4, 4)), torch.randn(4, 2, 3, 3)
    m32.init_from_data(x, h)
    m64.init_from_data(x, h)
    with torch.no_grad():
        torch.testing.assert_close(m32.elbo(x, h, generator=gen()).double(), m64.elbo(x, h.double(), generator=gen()),
                                   rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(m32.iwae_bound(x, h, k=16, generator=gen()).double(),
                               m64.iwae_bound(x, h.double(), k=16, generator=gen()), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_no_nan_on_black_and_white_images(likelihood):
    torch.manual_seed(0)
    m = ConditionalVAE((1, 4, 4), (3,), likelihood=likelihood, **TINY)
    x = torch.cat([torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 255)]).to(torch.uint8)
    h = torch.randn(4, 3)
    m.init_from_data(x, h)
    with torch.no_grad():
        m.decoder.out.weight.mul_(100)  # saturated outputs as well
    elbo = m.elbo(x, h)
    elbo.sum().backward()
    assert torch.isfinite(elbo).all() and all(torch.isfinite(p.grad).all() for p in m.parameters())
    assert torch.isfinite(m.iwae_bound(x, h, k=8)).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    """Draws come from a CPU generator in float64, so both devices see the same noise."""
    torch.manual_seed(0)
    m = ConditionalVAE((1, 4, 4), (2, 3, 3), **TINY)
    x, h = images(4, (1, 4, 4)), torch.randn(4, 2, 3, 3)
    m.init_from_data(x, h)
    with torch.no_grad():
        cpu = m.elbo(x, h, generator=gen()), m.iwae_bound(x, h, k=32, generator=gen())
        m.cuda()
        gpu = m.elbo(x.cuda(), h.cuda(), generator=gen()), m.iwae_bound(x.cuda(), h.cuda(), k=32, generator=gen())
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-4, atol=1e-3)
    assert m.sample(h.cuda(), generator=gen()).device.type == "cuda"


# ------------------------------------------------------------------------------------- sampling
def test_samples_are_draws_from_the_decoder_not_its_mean():
    torch.manual_seed(0)
    m = ConditionalVAE((1, 2, 2), (3,), **TINY)
    with torch.no_grad():
        m.decoder.out.weight.mul_(10)
    h = torch.randn(1, 3).expand(4000, -1)
    s = m.sample(h, generator=gen(3), temperature=0.0)  # z = 0 for all: one distribution per sub-pixel
    assert s.shape == (4000, 1, 2, 2) and s.dtype == torch.uint8
    assert torch.equal(s, m.sample(h, generator=gen(3), temperature=0.0))
    assert len(torch.unique(s[:, 0, 0, 0])) > 10  # draws, not one value
    mean = m.reconstruct_mean(h[:1], torch.zeros(1, 2))[0]
    torch.testing.assert_close(s.float().mean(0) / 255, mean, rtol=0, atol=0.02)
    assert not torch.equal(m.sample(h[:5], generator=gen(4)), m.sample(h[:5], generator=gen(5)))
    u = ConditionalVAE((1, 2, 2), None, **TINY)
    assert u.sample(n=3, generator=gen()).shape == (3, 1, 2, 2)


# ------------------------------------------------------------------------------------- checks and config
def test_bad_inputs_raise_clear_errors():
    m = ConditionalVAE((1, 4, 4), (3,), **TINY)
    ok_x, ok_h = torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(2, 3)
    bad = [
        (dict(x=torch.zeros(2, 1, 5, 4, dtype=torch.uint8)), "shape"),
        (dict(x=torch.zeros(2, 4, 4, dtype=torch.uint8)), "shape"),
        (dict(x=torch.zeros(2, 1, 4, 4)), "integer"),
        (dict(x=torch.full((2, 1, 4, 4), 300)), "0..255"),
        (dict(x=torch.full((2, 1, 4, 4), -1)), "0..255"),
        (dict(x=[[0]]), "torch tensor"),
        (dict(h=torch.zeros(2, 4)), r"context h must have shape \[2, 3\]"),
        (dict(h=torch.zeros(3, 3)), r"context h must have shape \[2, 3\]"),
        (dict(h=None), "needs a context"),
        (dict(h=torch.full((2, 3), float("nan"))), "NaN"),
        (dict(h=torch.zeros(2, 3, dtype=torch.long)), "floating"),
    ]
    for override, message in bad:
        args = dict(x=ok_x, h=ok_h) | override
        for method in (m.elbo, m.iwae_bound, m.encode):
            with pytest.raises(ValueError, match=message):
                method(args["x"], args["h"])
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        m.iwae_bound(ok_x, ok_h, k=0)
    with pytest.raises(ValueError, match="temperature"):
        m.sample(ok_h, temperature=-1.0)
    with pytest.raises(ValueError, match=r"z must have shape \[N, 2\]"):
        m.reconstruct_mean(ok_h, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="unconditional"):
        ConditionalVAE((1, 4, 4), None, **TINY).elbo(ok_x, ok_h)
    with pytest.raises(ValueError, match=r"n \(the number of images"):
        ConditionalVAE((1, 4, 4), None, **TINY).sample()
    with pytest.raises(ValueError, match="context_shape"):
        ConditionalVAE((1, 4, 4), (2, 3))
    with pytest.raises(ValueError, match="image_shape"):
        ConditionalVAE((4, 4), (3,))
    s = SupervisedVAE((1, 4, 4), 3, n_filters=4, latent_dim=3, label_dims=1)
    for labels, message in [(torch.tensor([0, 3]), r"0\.\.2"), (torch.tensor([0.0, 1.0]), "int64"),
                            (torch.tensor([0]), r"int64 tensor \[2\]")]:
        with pytest.raises(ValueError, match=message):
            s.loss(ok_x, labels, 1.0)
    with pytest.raises(ValueError, match="n must be"):
        s.nuisance_samples(ok_x, 0)


def test_config_rejects_bad_values_naming_the_field():
    bad = [("n_filters", 0), ("latent_dim", 0), ("context_hidden", 0), ("likelihood", "gaussian"), ("steps", -1),
           ("batch_size", 0), ("lr", 0.0), ("eval_every", -1), ("patience", -1), ("steps", True),
           ("batch_size", 32.0), ("seed", None), ("latent_dim", "8")]
    for name, value in bad:
        with pytest.raises(ValueError, match=rf"VAEConfig\.{name} must be .*, got {re.escape(repr(value))}"):
            VAEConfig(**{name: value})
    for kw, name in [(dict(label_dims=32), "label_dims"), (dict(latent_dim=4, label_dims=0), "label_dims"),
                     (dict(classifier_hidden=-1), "classifier_hidden"), (dict(class_weight=-1.0), "class_weight"),
                     (dict(class_weight=math.inf), "class_weight"), (dict(likelihood="bce"), "likelihood")]:
        with pytest.raises(ValueError, match=rf"SupervisedVAEConfig\.{name} must be"):
            SupervisedVAEConfig(**kw)
    VAEConfig(steps=0, lr=1, n_filters=1, likelihood="logistic")  # the boundaries themselves are fine
    SupervisedVAEConfig(latent_dim=2, label_dims=1, class_weight=0)
    with pytest.raises(ValueError, match=r"VAEConfig\.latent_dim"):  # the constructors run the same checks
        ConditionalVAE((1, 4, 4), (3,), latent_dim=0)
    with pytest.raises(ValueError, match=r"SupervisedVAEConfig\.label_dims"):
        SupervisedVAE((1, 4, 4), 10, latent_dim=4, label_dims=4)


def test_constructor_defaults_are_the_config_defaults():
    for cls, config, shapes in [(ConditionalVAE, VAEConfig, {"image_shape", "context_shape"}),
                                (SupervisedVAE, SupervisedVAEConfig, {"image_shape", "n_classes"})]:
        params = inspect.signature(cls.__init__).parameters
        assert set(config.ARCHITECTURE) == set(params) - {"self"} - shapes
        assert {name: params[name].default for name in config.ARCHITECTURE} == config().architecture()
    m = ConditionalVAE.from_config((1, 4, 4), (3,), VAEConfig(n_filters=3, latent_dim=2, context_hidden=5))
    assert m.config == dict(image_shape=(1, 4, 4), context_shape=(3,), n_filters=3, latent_dim=2, context_hidden=5,
                            likelihood="softmax")
    assert ConditionalVAE(**m.config).config == m.config
    s = SupervisedVAE.from_config((1, 4, 4), 3, SupervisedVAEConfig(n_filters=3, latent_dim=4, label_dims=2))
    assert SupervisedVAE(**s.config).config == s.config and s.label_dims == 2 and s.n_classes == 3


# ------------------------------------------------------------------------------------- training
def test_training_improves_the_elbo_and_standardises_contexts(tmp_path):
    x, y = halves(256)
    h = torch.stack([y.float() * 50 + 100, torch.randn(256, generator=gen(9))], 1)  # the label, at a big scale
    torch.manual_seed(0)
    m = ConditionalVAE((1, 4, 4), (2,), n_filters=8, latent_dim=2, context_hidden=8)
    m.init_from_data(x, h)  # what train_vae does first; measured here so the gain is the training's
    torch.testing.assert_close(m.context.h_mean, h.mean(0))
    torch.testing.assert_close(m.context.h_std, h.std(0))
    valid = (x[128:], h[128:])
    with torch.no_grad():
        before = m.elbo(x[:128], h[:128], generator=gen()).mean().item()
        before_valid = m.elbo(*valid, generator=gen()).mean().item()
    r = train_vae(m, x[:128], h[:128], tmp_path, VAEConfig(steps=40, batch_size=32, lr=1e-2, eval_every=20),
                  valid=valid, progress=False)
    with torch.no_grad():
        after = m.elbo(x[:128], h[:128], generator=gen()).mean().item()
    assert after > before + 5, (before, after)  # nats per image of 16 sub-pixels (here -81 -> -65)
    assert [row["step"] for row in r.history] == [20, 40] and r.best_score > before_valid + 1
    back = load_vae(tmp_path)
    torch.testing.assert_close(back.elbo(*valid, generator=gen()), m.elbo(*valid, generator=gen()))


@pytest.mark.parametrize("kind", ["conditional", "supervised"])
def test_training_resumes(tmp_path, kind):
    x, y = halves(64)
    h = torch.randn(64, 2, 2, 2, generator=gen(1))

    def run(workdir, steps):
        torch.manual_seed(0)  # a new process: fresh weights; the rest (data-initialised buffers too) from disk
        if kind == "conditional":
            m = ConditionalVAE((1, 4, 4), (2, 2, 2), **TINY)
            train_vae(m, x, h, workdir, VAEConfig(steps=steps, batch_size=16), progress=False, checkpoint_every=2)
        else:
            m = SupervisedVAE((1, 4, 4), 2, n_filters=4, latent_dim=3, label_dims=1)
            train_supervised_vae(m, x, y, workdir, SupervisedVAEConfig(steps=steps, batch_size=16), progress=False,
                                 checkpoint_every=2)
        return m

    a = run(tmp_path / "a", 6)
    run(tmp_path / "b", 3)
    b = run(tmp_path / "b", 6)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    saved = json.loads((tmp_path / "b" / "config.json").read_text())
    assert "steps" not in saved and saved["batch_size"] == 16
    loader = load_vae if kind == "conditional" else load_supervised_vae
    assert torch.equal(loader(tmp_path / "b", "state.pt").decoder.out.bias, b.decoder.out.bias)


# ------------------------------------------------------------------------------------- the supervised VAE
@pytest.fixture(scope="module")
def supervised(tmp_path_factory):
    x, y = halves(384, seed=4)
    torch.manual_seed(0)
    m = SupervisedVAE((1, 4, 4), 2, n_filters=8, latent_dim=4, label_dims=2)
    config = SupervisedVAEConfig(n_filters=8, latent_dim=4, label_dims=2, steps=40, batch_size=32, lr=1e-2,
                                 class_weight=10.0, eval_every=40)
    r = train_supervised_vae(m, x[:256], y[:256], tmp_path_factory.mktemp("svae"), config, valid=(x[256:], y[256:]),
                             progress=False)
    return m, x[256:], y[256:], r


def test_supervised_vae_classifies_a_separable_toy(supervised):
    m, x, y, r = supervised
    assert m.classify(x).shape == (len(x), 2)
    acc = m.accuracy(x, y)
    assert acc > 0.9, acc  # chance is 0.5
    assert r.history[-1]["valid_accuracy"] == pytest.approx(acc)
    assert math.isfinite(r.history[-1]["valid_elbo"]) and torch.isfinite(m.iwae_bound(x[:4], k=8)).all()


def test_nuisance_samples_hold_z_y_at_the_encoder_mean(supervised):
    m, x, _, _ = supervised
    z = m.nuisance_latents(x[:3], 5, generator=gen())
    mean = m.encode(x[:3])[0]
    assert z.shape == (3, 5, 4)
    assert torch.equal(z[:, :, :2], mean[:, None, :2].expand(-1, 5, -1))  # z_y the same in all 5
    assert (z[:, 1:, 2:] != z[:, :1, 2:]).all()  # z_n redrawn
    s = m.nuisance_samples(x[:3], 5, generator=gen(1))
    assert s.shape == (3, 5, 1, 4, 4) and s.dtype == torch.uint8
    assert torch.equal(s, m.nuisance_samples(x[:3], 5, generator=gen(1)))
    assert torch.equal(m.nuisance_latents(x[:3], 5, generator=gen(1), temperature=0.0)[:, :, 2:],
                       torch.zeros(3, 5, 2))
