"""The conditional flow inverter: invertibility, exact log-determinants, a normalised density, the
dequantization bound against an exactly integrated discrete probability, numerics, input checks, config,
conditioning after training, resumable training, sampling and the residual views."""

import inspect
import json
import math
import re

import numpy as np
import pytest
import torch

from inversion.bounds import nce
from inversion.models.flow import LOGIT_ALPHA, ConditionalFlow, FlowConfig, train_flow

CONTEXTS = [None, (3,), (2, 2, 2)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: a second intra-op thread only adds waiting (8 s become 30 s on two busy cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_context(shape, n, dtype=torch.float64, seed=1):
    if shape is None:
        return None
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def make_flow(context_shape=(3,), image_shape=(1, 4, 4), n_scales=2, dequantization="uniform", dtype=torch.float64,
              perturb=0.05, seed=0):
    """A tiny flow whose every part is non-trivial: ActNorm data-initialised, and every parameter moved off
    its initial value (couplings and priors start as the identity and N(0, I), which would hide mistakes)."""
    torch.manual_seed(seed)
    m = ConditionalFlow(image_shape, context_shape, n_scales=n_scales, n_steps=2, hidden_channels=8, cond_channels=4,
                        dequantization=dequantization).to(dtype).eval()
    x = torch.randint(0, 256, (16, *image_shape), dtype=torch.uint8)
    m.data_init(x, random_context(context_shape, 16, dtype))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(perturb * torch.randn_like(p))
    return m


def dequantized(shape, n=3, seed=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *shape), generator=g).double()
    return (x + torch.rand(n, *shape, generator=g, dtype=torch.float64)) / 256


def gauss_legendre_cube(lo, hi, nodes, dims):
    """Tensor-product Gauss-Legendre nodes [nodes**dims, dims] and log-weights on the cube [lo, hi]^dims."""
    t, w = np.polynomial.legendre.leggauss(nodes)
    t = torch.tensor(lo + (hi - lo) * (t + 1) / 2)
    log_w = torch.log(torch.tensor(w * (hi - lo) / 2))
    grid = torch.cartesian_prod(*[t] * dims)
    log_weights = torch.cartesian_prod(*[log_w] * dims).sum(1)
    return grid, log_weights


# ---------------------------------------------------------------------------------------- the bijection
@pytest.mark.parametrize("context_shape", CONTEXTS)
def test_invertible_in_float64(context_shape):
    m = make_flow(context_shape)
    y = dequantized((1, 4, 4))
    h = random_context(context_shape, 3)
    with torch.no_grad():
        v, _ = m.forward_and_logdet(y, h)
        assert v.shape == (3, 16)
        assert torch.allclose(m.inverse(v, h), y, rtol=0, atol=1e-6)
        v2 = torch.randn(3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        assert torch.allclose(m.forward_and_logdet(m.inverse(v2, h), h)[0], v2, rtol=0, atol=1e-6)


@pytest.mark.parametrize("image_shape,n_scales,context_shape", [
    ((1, 4, 4), 2, (3,)), ((1, 4, 4), 2, (2, 2, 2)), ((1, 4, 4), 2, None), ((2, 2, 2), 1, (2, 3, 3))])
def test_logdet_equals_autograd_jacobian(image_shape, n_scales, context_shape):
    """log|det dv/dy| of forward_and_logdet, the logit preprocessing included, equals the log-determinant of
    the full Jacobian that autograd computes in float64."""
    m = make_flow(context_shape, image_shape, n_scales, perturb=0.1)
    y = dequantized(image_shape, n=1)
    h = random_context(context_shape, 1)
    jac = torch.autograd.functional.jacobian(lambda flat: m.forward_and_logdet(flat.view(1, *image_shape), h)[0][0],
                                             y.flatten())
    sign, logabsdet = torch.linalg.slogdet(jac)
    assert sign != 0
    _, logdet = m.forward_and_logdet(y, h)
    assert logdet.item() == pytest.approx(logabsdet.item(), abs=1e-8)


def test_variational_dequantizer_log_q_equals_autograd_jacobian():
    """u = g(w; x) with w uniform, so q(u | x) = 1 / |det du/dw|: the dequantizer's log q must be minus
    autograd's log-determinant. Fresh, it is exactly uniform (log q = 0, u = w)."""
    x = torch.randint(0, 256, (1, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    w = torch.rand(1, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    fresh = make_flow((3,), dequantization="variational", perturb=0.0)
    u, log_q = fresh.dequantizer(w, fresh.scale(x))
    assert torch.allclose(u, w, atol=1e-12) and log_q.abs().max() < 1e-10
    m = make_flow((3,), dequantization="variational", perturb=0.2)
    jac = torch.autograd.functional.jacobian(lambda flat: m.dequantizer(flat.view(1, 1, 4, 4), m.scale(x))[0].flatten(),
                                             w.flatten())
    _, log_q = m.dequantizer(w, m.scale(x))
    assert log_q.item() == pytest.approx(-torch.linalg.slogdet(jac)[1].item(), abs=1e-8)
    assert abs(log_q.item()) > 0.1  # the check above is not vacuous


# ---------------------------------------------------------------------------------- density and bound
def test_density_integrates_to_one():
    """The continuous density of a 1x2x2 flow (D = 4), integrated over its whole support by 16-point
    Gauss-Legendre quadrature per axis (65536 nodes; 20 points per axis agree to 2e-6), is 1: the logit
    preprocessing, the Jacobians and the Gaussian prior's constants are all counted, independently of the
    autograd check."""
    m = make_flow((3,), (1, 2, 2), n_scales=1, perturb=0.05)
    lo, hi = -LOGIT_ALPHA / (1 - 2 * LOGIT_ALPHA), (1 - LOGIT_ALPHA) / (1 - 2 * LOGIT_ALPHA)
    grid, log_w = gauss_legendre_cube(lo, hi, 16, 4)
    h = random_context((3,), 1).expand(len(grid), 3)
    with torch.no_grad():
        log_p = m.log_density(grid.view(-1, 1, 2, 2), h)
    assert torch.logsumexp(log_w + log_p, 0).exp().item() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("dequantization", ["uniform", "variational"])
def test_bound_is_below_the_exact_discrete_log_prob(dequantization):
    """For a 1x2x2 image (D = 4), the discrete log P(x | h), the log of the density's integral over the 4-d
    bin of x, is computed by 6-point Gauss-Legendre quadrature per axis (1296 nodes; 10 points per axis agree
    to 1e-7: the density is smooth but for the ReLU kinks of the couplings' networks). The same nodes give
    the exact uniform bound E_u[log p] - D log 256, which lies below log P (Jensen). log_prob_bound's
    estimate from 1000 draws must be the mean of log p(y) - log q(u | x) - D log 256 over those draws
    (recomputed here from ``dequantize`` and ``log_density`` with the same generator), within 5 standard
    errors of the exact uniform bound for uniform dequantization (a forgotten D log 256 or logit Jacobian
    would be off by tens of nats), and below log P for the variational bound with a perturbed q."""
    m = make_flow((3,), (1, 2, 2), n_scales=1, dequantization=dequantization, perturb=0.2)
    x = torch.tensor([[[[0, 17], [128, 255]]]], dtype=torch.uint8)
    h = random_context((3,), 1)
    D, n = 4, 1000
    nodes, log_w = gauss_legendre_cube(0.0, 1.0, 6, D)  # u in the unit cube; the weights sum to 1
    y = (x.double().flatten() + nodes) / 256
    with torch.no_grad():
        log_p = m.log_density(y.view(-1, 1, 2, 2), h.expand(len(y), 3))
        log_P = (torch.logsumexp(log_w + log_p, 0) - D * math.log(256)).item()
        exact_uniform_bound = ((log_w.exp() * log_p).sum() - D * math.log(256)).item()
        mc_bound = m.log_prob_bound(x, h, n_samples=n, generator=torch.Generator().manual_seed(0)).item()
        u, log_q = m.dequantize(x, n, generator=torch.Generator().manual_seed(0))
        draws = m.log_density((x.double() + u) / 256, h.expand(n, 3)) - log_q - D * math.log(256)
    stderr = draws.std().item() / math.sqrt(n)
    assert mc_bound == pytest.approx(draws.mean().item(), abs=1e-9)
    assert exact_uniform_bound <= log_P
    assert mc_bound <= log_P + 5 * stderr
    if dequantization == "uniform":
        assert log_q.abs().max() == 0
        assert mc_bound == pytest.approx(exact_uniform_bound, abs=5 * stderr)
    else:
        assert log_P - mc_bound > 10 * stderr  # not vacuous: this q is far from the density within the bin


def test_float32_agrees_with_float64():
    m64 = make_flow((2, 2, 2), perturb=0.1)
    m32 = make_flow((2, 2, 2), perturb=0.1).float()
    y = dequantized((1, 4, 4))
    h = random_context((2, 2, 2), 3)
    with torch.no_grad():
        lp64 = m64.log_density(y, h)
        lp32 = m32.log_density(y.float(), h.float())
        v = m64.forward_and_logdet(y, h)[0]
        y32 = m32.inverse(v.float(), h.float())
    assert lp32.dtype == torch.float32
    assert torch.allclose(lp32.double(), lp64, rtol=1e-5, atol=1e-3)
    assert torch.allclose(y32.double(), y, atol=1e-5)


@pytest.mark.parametrize("dequantization", ["uniform", "variational"])
def test_extreme_images_are_finite_in_value_and_gradient(dequantization):
    m = make_flow((3,), dequantization=dequantization, dtype=torch.float32).train()
    x = torch.cat([torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 255)]).to(torch.uint8)
    h = random_context((3,), 4, torch.float32)
    lp = m.log_prob_bound(x, h, n_samples=2)
    assert torch.isfinite(lp).all()
    (-lp.mean()).backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    fresh = ConditionalFlow((1, 4, 4), (3,), n_scales=2, n_steps=1, hidden_channels=4, cond_channels=2)
    fresh.data_init(x[:2], h[:2])  # an all-black batch: dequantization noise still has a spread
    assert torch.isfinite(fresh.log_prob_bound(x, h)).all()


# ------------------------------------------------------------------------------- sampling and residuals
def test_sampling_and_the_residual_views():
    m = make_flow((3,), perturb=0.05)
    h = random_context((3,), 4)
    s1 = m.sample(h, generator=torch.Generator().manual_seed(0))
    s2 = m.sample(h, generator=torch.Generator().manual_seed(0))
    assert s1.shape == (4, 1, 4, 4) and s1.dtype == torch.uint8 and torch.equal(s1, s2)
    assert not torch.equal(s1, m.sample(h, temperature=0.5, generator=torch.Generator().manual_seed(0)))
    v = m.draw_residual(1, generator=torch.Generator().manual_seed(1))[0]
    swap = m.sample_with_residual(v, h)  # one v across four h
    many = m.sample_with_residual(m.draw_residual(5), h[:1])  # five v for one h
    assert swap.shape == (4, 1, 4, 4) and many.shape == (5, 1, 4, 4)
    assert len({tuple(s.flatten().tolist()) for s in swap}) > 1  # h changes the image
    x = torch.randint(0, 256, (4, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(m.sample_with_residual(m.residual(x, h), h), x)  # bin centres decode to their bins
    un = make_flow(None)
    assert un.sample(n=3).shape == (3, 1, 4, 4)


def test_log_prob_serves_the_nce_bound():
    m = make_flow((3,))
    x = torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8)
    result = nce(m, x, random_context((3,), 6), progress=False)
    assert math.isfinite(result.nats) and result.n == 6


# ------------------------------------------------------------------------------------- input checks
def test_bad_inputs_raise_clear_errors():
    m = ConditionalFlow((1, 4, 4), (3,), n_scales=2, n_steps=1, hidden_channels=4, cond_channels=2)
    ok_x, ok_h = torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(2, 3)
    bad = [
        (dict(x=torch.zeros(2, 1, 5, 4, dtype=torch.uint8)), "x must have shape"),
        (dict(x=torch.zeros(2, 4, 4, dtype=torch.uint8)), "x must have shape"),
        (dict(x=torch.zeros(2, 1, 4, 4)), "integer"),
        (dict(x=torch.full((2, 1, 4, 4), 300)), "0..255"),
        (dict(x=torch.full((2, 1, 4, 4), -1)), "0..255"),
        (dict(x=[[0]]), "torch tensor"),
        (dict(h=torch.zeros(2, 4)), "context must have shape"),
        (dict(h=torch.zeros(3, 3)), "context must have shape"),
        (dict(h=None), "needs a context"),
        (dict(h=torch.full((2, 3), float("nan"))), "NaN"),
        (dict(h=torch.zeros(2, 3, dtype=torch.long)), "floating"),
    ]
    for override, message in bad:
        args = dict(x=ok_x, h=ok_h) | override
        with pytest.raises(ValueError, match=message):
            m.log_prob_bound(args["x"], args["h"])
    with pytest.raises(ValueError, match="n_samples"):
        m.log_prob_bound(ok_x, ok_h, n_samples=0)
    with pytest.raises(ValueError, match="y must be a floating"):
        m.log_density(ok_x, ok_h)
    with pytest.raises(ValueError, match="y values must lie in"):
        m.log_density(torch.full((2, 1, 4, 4), 1.5), ok_h)
    with pytest.raises(ValueError, match=r"v must have shape \[N, 16\]"):
        m.inverse(torch.zeros(2, 15), ok_h)
    with pytest.raises(ValueError, match="unconditional"):
        ConditionalFlow((1, 4, 4), None, n_scales=1, n_steps=1).log_prob_bound(ok_x, ok_h)
    with pytest.raises(ValueError, match="divisible by 2\\*\\*n_scales = 4"):
        ConditionalFlow((1, 6, 6), (3,), n_scales=2)
    with pytest.raises(ValueError, match="image_shape"):
        ConditionalFlow((4, 4))
    with pytest.raises(ValueError, match="context_shape"):
        ConditionalFlow((1, 4, 4), context_shape=(2, 3))
    with pytest.raises(ValueError, match=r"FlowConfig\.dequantization"):
        ConditionalFlow((1, 4, 4), dequantization="gaussian")
    with pytest.raises(ValueError, match="context .* or, for an unconditional model, n"):
        m.sample()


# ------------------------------------------------------------------------------------------- config
def test_config_rejects_bad_values_naming_the_field():
    bad = [("n_scales", 0), ("n_steps", -1), ("hidden_channels", 0), ("cond_channels", 0), ("dequant_steps", 0),
           ("dequantization", "gaussian"), ("steps", -1), ("batch_size", 0), ("lr", 0.0), ("eval_every", -1),
           ("patience", -2), ("n_steps", "8"), ("steps", True), ("batch_size", 32.0), ("seed", None)]
    for name, value in bad:
        with pytest.raises(ValueError, match=rf"FlowConfig\.{name} must be .*, got {re.escape(repr(value))}"):
            FlowConfig(**{name: value})
    FlowConfig(steps=0, lr=1, n_scales=1, n_steps=1, dequantization="variational")  # boundaries are fine


def test_constructor_defaults_are_the_config_defaults():
    params = inspect.signature(ConditionalFlow.__init__).parameters
    arch = FlowConfig().architecture()
    assert set(FlowConfig.ARCHITECTURE) == set(params) - {"self", "image_shape", "context_shape"}
    assert {name: params[name].default for name in FlowConfig.ARCHITECTURE} == arch
    m = ConditionalFlow.from_config((1, 4, 4), (3,), FlowConfig(n_scales=1, n_steps=1, hidden_channels=4))
    assert m.config == dict(image_shape=(1, 4, 4), context_shape=(3,), n_scales=1, n_steps=1, hidden_channels=4,
                            cond_channels=32, dequantization="uniform", dequant_steps=2)
    assert ConditionalFlow(**json.loads(json.dumps(m.config))).config == m.config


# ------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("context_shape", [(4,), (3, 2, 2)])
def test_conditioning_matters_after_training(tmp_path, context_shape):
    """Trained briefly on (x, h) pairs where h names which quadrant of a 4x4 image is bright, the bound with
    the true h beats the bound with another image's h."""
    g = torch.Generator().manual_seed(0)
    n, shape = 320, (1, 4, 4)
    cls = torch.randint(0, 4, (n,), generator=g)
    templates = torch.zeros(4, *shape)
    for k, (r, c) in enumerate([(0, 0), (0, 2), (2, 0), (2, 2)]):
        templates[k, :, r : r + 2, c : c + 2] = 1
    x = (templates[cls] * 200 + torch.randint(0, 40, (n, *shape), generator=g)).to(torch.uint8)
    h = (torch.nn.functional.one_hot(cls, 4).float() if len(context_shape) == 1
         else torch.nn.functional.avg_pool2d(templates[cls], 2).repeat(1, 3, 1, 1))
    torch.manual_seed(0)
    m = ConditionalFlow(shape, context_shape, n_scales=1, n_steps=1, hidden_channels=16, cond_channels=8)
    train_flow(m, x[:256], h[:256], tmp_path, FlowConfig(steps=30, batch_size=32, lr=1e-2), progress=False)
    m.eval()
    xt, ht = x[256:], h[256:]
    perm = torch.roll(torch.arange(len(ht)), 1)
    differs = cls[256:][perm] != cls[256:]
    with torch.no_grad():
        true_lp = m.log_prob_bound(xt, ht, generator=torch.Generator().manual_seed(0))[differs].mean()
        shuffled_lp = m.log_prob_bound(xt, ht[perm], generator=torch.Generator().manual_seed(0))[differs].mean()
    assert true_lp > shuffled_lp + 5.0, (true_lp, shuffled_lp)


def test_training_resumes_exactly(tmp_path):
    """k steps, then more on the same workdir (a new process: fresh weights, the rest from the checkpoint)
    equals an uninterrupted run, data-initialised ActNorm and variational dequantization noise included."""
    x = torch.randint(0, 256, (48, 1, 4, 4), dtype=torch.uint8)
    h = torch.randn(48, 3)

    def model():
        torch.manual_seed(0)
        return ConditionalFlow((1, 4, 4), (3,), n_scales=2, n_steps=1, hidden_channels=8, cond_channels=4,
                               dequantization="variational", dequant_steps=1)

    def config(steps):
        return FlowConfig(steps=steps, batch_size=16, lr=1e-3)

    a = model()
    train_flow(a, x, h, tmp_path / "a", config(4), progress=False, checkpoint_every=2)
    b = model()
    train_flow(b, x, h, tmp_path / "b", config(2), progress=False, checkpoint_every=2)
    b = model()
    r = train_flow(b, x, h, tmp_path / "b", config(4), progress=False, checkpoint_every=2)
    assert r.step == 4 and r.resumed_from == 2
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    saved = json.loads((tmp_path / "b" / "config.json").read_text())
    assert "steps" not in saved and saved["model"]["dequantization"] == "variational"
    with pytest.raises(ValueError, match="different run"):
        train_flow(model(), x, h, tmp_path / "b", FlowConfig(steps=8, batch_size=16, lr=2e-3), progress=False)


def test_validation_and_unconditional_training(tmp_path):
    x = torch.randint(0, 256, (40, 1, 4, 4), dtype=torch.uint8)
    torch.manual_seed(0)
    m = ConditionalFlow((1, 4, 4), None, n_scales=1, n_steps=1, hidden_channels=4)
    r = train_flow(m, x[:32], None, tmp_path, FlowConfig(steps=4, batch_size=8, eval_every=2),
                   valid=(x[32:], None), progress=False)
    assert [row["step"] for row in r.history] == [2, 4] and math.isfinite(r.best_score)
    assert (tmp_path / "best.pt").exists()
