"""A conditional normalizing flow p(x | h) on dequantized pixels: an invertible inverter with a likelihood.

Nash et al. (2019) invert a layer h with a conditional PixelCNN++; Rombach, Esser & Ommer (2020, "Making
Sense of CNNs: Interpreting Deep Representations & Their Invariances with INNs") invert it with a
conditional invertible network, whose residual v = f(x; h) holds exactly what h does not know about x:
sampling v for one h shows h's invariances, and keeping v while swapping h shows what h controls. Their
flow models an autoencoder's latent, so it has no likelihood of the pixels. This one models the pixels,
so its bound on log P(x | h) is in the same unit as the PixelCNN++'s, nats per image, and can stand next
to it in the NCE bound on I(x; h) (``inversion.bounds``).

Read top to bottom: the configuration, the four invertible pieces (ActNorm, invertible 1x1 convolution,
affine coupling, conditional Gaussian prior), the conditioning network, the variational dequantizer, the
flow itself, and training.

The density, and the bound it gives on 8-bit images
- Dequantization (Theis et al. 2016; Dinh et al. 2017, RealNVP): an image x in {0..255}^D becomes
  y = (x + u) / 256 with u in [0, 1)^D, a point of the bin of x. For any density p(y | h), the discrete
  model P(x | h) = integral of p over the bin of x satisfies, by Jensen's inequality,
      log P(x | h) >= E_u[log p((x + u)/256 | h)] - D log 256          (u uniform: the default), and
      log P(x | h) >= E_q[log p((x + u)/256 | h) - log q(u | x)] - D log 256   (any q on the unit cube),
  the second being Flow++'s variational dequantization (Ho et al. 2019); -D log 256 is the bin volume in
  y units. ``log_prob_bound`` returns the estimate of the right-hand side from ``n_samples`` draws of u
  (unbiased for the bound, so its mean over a test set is a lower bound on the NCE up to noise).
- Logit preprocessing (RealNVP): t = logit(a + (1 - 2a) y) with a = 0.05, its log-Jacobian
  sum(log(1 - 2a) - log s - log(1 - s)) counted in ``forward_and_logdet``. It maps the box to all of R^D,
  so a Gaussian-based flow puts almost no mass outside the image range; the factor a keeps the Jacobian
  finite at the pixel values 0 and 255. The support of p is the box ((-a, 1 - a) / (1 - 2a))^D, slightly
  wider than [0, 1]^D: mass outside [0, 1]^D is lost to the bound (it can only loosen it), and ``sample``
  clamps it into the edge bins, so the sampler's P(x) is at least the bounded one.
- The flow (Kingma & Dhariwal 2018, Glow): multi-scale as in RealNVP. At each scale the tensor is
  squeezed (2x2 space-to-depth), goes through ``n_steps`` steps of ActNorm (per-channel affine,
  initialised from the first batch so that activations start at zero mean and unit variance: Glow's
  replacement of batch norm, whose statistics would make the density depend on the batch), an invertible
  1x1 convolution (LU-parametrised: log|det| is a sum of log|diagonal|, O(C) instead of O(C^3), and the
  matrix never becomes singular), and an affine coupling (RealNVP): half the channels are scaled and
  shifted by a network of the other half and of h. The coupling's log-scale is bounded, 2 tanh(s / 2)
  (the soft clamping of Ardizzone et al. 2019's conditional INNs; Rombach et al.'s blocks also pass s
  through tanh), so no step can scale by more than e^2 either way: the inverse stays as well conditioned
  as the forward map, and a large step of the optimiser cannot blow an activation up. The network's
  last layer starts at zero, so every coupling starts as the identity (Glow). After each scale but the
  last, half of the channels leave the flow to a conditional Gaussian prior whose mean and log-scale are
  predicted from the remaining half and from h (Glow's split prior, made conditional); the last scale's
  prior is predicted from h alone. Writing each such prior as an affine map to a standard normal, the
  whole model is one bijection y -> v with v ~ N(0, I) of dimension D: ``forward_and_logdet`` returns v
  flat, [N, D], scales in order, and ``inverse`` undoes it.
- Conditioning (Ardizzone et al. 2019, "Guided image generation with conditional invertible neural
  networks"; Rombach et al. 2020): h enters every coupling and every prior, never the invertibility. A
  conditioning network turns h into ``cond_channels`` feature maps: a vector h (D',) through an MLP,
  broadcast over the positions of each scale; a map h (C', H', W') through a small conv net at its own
  resolution, bilinearly resized to each scale (as the PixelCNN++ here resizes it). h is first
  standardised by a data-initialised ActNorm (layers differ in scale by orders of magnitude).
- Variational dequantization (Ho et al. 2019, Flow++), ``dequantization="variational"``: u = sigmoid(e)
  with e from a small flow of affine couplings conditioned on x. Its base is the standard logistic
  distribution rather than a Gaussian, because sigmoid(logistic) is exactly uniform: the couplings start
  at the identity, so q starts as uniform dequantization and training starts from the uniform bound.
  q depends on x alone (as in Flow++); the bound holds for any q.

Why written here rather than with a flow library (decided by trying, 2026): FrEIA 0.2, normflows 1.7.3
and zuko 1.6.0 all install offline (pure Python; FrEIA also wants scipy, which the project has) and import
against torch 2.13 CPU. zuko builds vector flows (MAF, NSF, ...) with a context vector: no convolutions,
no multi-scale, no spatial h. normflows has Glow blocks and a multi-scale flow, but its couplings take no
context (its multi-scale model is conditional only through a class-conditional base distribution), so the
conditional couplings and split priors would be written by us anyway. FrEIA fits best (a graph of nodes
with spatial conditions, downsampling, splits, a conditional all-in-one coupling block), but its PyPI
release (0.2) lags its repository (whose spline couplings and newer API are unreleased), its all-in-one
block builds a float32 permutation that breaks under a float64 default dtype (``.double()`` afterwards
works), it has no data-initialised ActNorm in that block, no conditional split prior and no
dequantization; the graph plumbing it would save is the smallest part of this file. The pieces here are
few, each tested against autograd's Jacobian in float64, and they add no dependency. So: no library, no
new pin.

Conventions as in ``inversion.models.pixelcnn``: images are integer tensors [N, C, H, W] with values
0..255; contexts are float [N, *context_shape]; log-probabilities are in nats per image (divide by
D log 2 for bits per dimension).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from inversion.models.density_training import fit_density
from inversion.models.inputs import check_context, check_pixels
from inversion.training import TrainConfig, TrainResult, check_field, write_run_config

DEQUANTIZATIONS = ("uniform", "variational")
LOGIT_ALPHA = 0.05  # RealNVP's a: t = logit(a + (1 - 2a) y)
COUPLING_BOUND = 2.0  # |log-scale| of one coupling < 2
PRIOR_BOUND = 6.0  # |log-scale| of a conditional prior < 6 (ActNorm keeps activations near unit scale)


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlowConfig:
    """Every setting of one flow inverter, each default written here once. There is no paper value for
    any of them (Nash et al. use no flow); the architecture defaults are a small Glow for 28x28 to 40x40
    images on a CPU-or-one-GPU budget.

    Architecture (``ARCHITECTURE``; ``architecture()`` gives them as ConditionalFlow keywords):
        n_scales: squeeze-steps-split levels; H and W must be divisible by 2**n_scales (28, 32, 40: 2).
        n_steps: flow steps (ActNorm, 1x1 conv, coupling) per scale.
        hidden_channels: width of every coupling's and prior's network.
        cond_channels: feature maps the conditioning network makes of h (ignored without a context).
        dequantization: "uniform" (u ~ U[0,1)^D) or "variational" (Flow++'s q(u | x)).
        dequant_steps: couplings of the variational dequantizer (unused with "uniform").
    Training (``train_flow``):
        steps, batch_size, lr: Adam updates of ``batch_size`` images at learning rate ``lr``.
        eval_every, patience: validation bound every so many updates, early stopping after ``patience``
            evaluations without improvement (0: neither). seed: batch order and dequantization noise.
    """

    ARCHITECTURE: ClassVar[tuple[str, ...]] = ("n_scales", "n_steps", "hidden_channels", "cond_channels",
                                               "dequantization", "dequant_steps")

    n_scales: int = 2
    n_steps: int = 8
    hidden_channels: int = 64
    cond_channels: int = 32
    dequantization: str = "uniform"
    dequant_steps: int = 2
    steps: int = 50000
    batch_size: int = 64
    lr: float = 5e-4
    eval_every: int = 0
    patience: int = 0
    seed: int = 0

    def __post_init__(self):
        check = lambda name, kind, ok, valid: check_field(self, name, kind, ok, valid)  # noqa: E731
        for name in ("n_scales", "n_steps", "hidden_channels", "cond_channels", "dequant_steps"):
            check(name, int, lambda v: v >= 1, "an integer >= 1")
        check("dequantization", str, lambda v: v in DEQUANTIZATIONS, f"one of {DEQUANTIZATIONS}")
        check("steps", int, lambda v: v >= 0, "an integer >= 0")
        check("batch_size", int, lambda v: v >= 1, "an integer >= 1")
        check("lr", float, lambda v: v > 0, "a number > 0")
        check("eval_every", int, lambda v: v >= 0, "an integer >= 0 (0: never)")
        check("patience", int, lambda v: v >= 0, "an integer >= 0 (0: never stop early)")
        check("seed", int, lambda v: True, "an integer")

    def architecture(self) -> dict:
        """The architecture fields as keywords of ``ConditionalFlow``."""
        return {name: getattr(self, name) for name in self.ARCHITECTURE}


# --------------------------------------------------------------------------------------------------
# Invertible pieces: each maps (x, cond) -> (y, log|det dy/dx| per image) and back
# --------------------------------------------------------------------------------------------------
def _bounded(raw, bound):
    """A log-scale in (-bound, bound), the identity near 0."""
    return bound * torch.tanh(raw / bound)


def _zero_conv(c_in, c_out):
    """A 3x3 convolution that starts at zero: couplings start as the identity, priors as N(0, I)."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ActNorm(nn.Module):
    """y = (x + b) * exp(s) per channel; log|det| = H W sum(s). While ``initializing`` (``data_init``), b
    and s are first set from the batch so that y has zero mean and unit variance per channel; a channel
    constant over the batch (a dead unit of h) is only centred."""

    def __init__(self, channels):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.initializing = False

    def forward(self, x, cond=None):
        if self.initializing:
            with torch.no_grad():
                std, mean = torch.std_mean(x, dim=(0, 2, 3), keepdim=True, unbiased=False)
                self.bias.copy_(-mean)
                self.log_scale.copy_(-torch.log(torch.where(std > 1e-6, std, torch.ones_like(std))))
        y = (x + self.bias) * torch.exp(self.log_scale)
        return y, (x.shape[2] * x.shape[3] * self.log_scale.sum()).expand(x.shape[0])

    def inverse(self, y, cond=None):
        return y * torch.exp(-self.log_scale) - self.bias


class InvConv1x1(nn.Module):
    """An invertible 1x1 convolution, W = P L (U + diag(sign * exp(log_s))) (Glow's LU form), started at a
    random rotation. P and sign stay fixed; log|det| = H W sum(log_s)."""

    def __init__(self, channels):
        super().__init__()
        q = torch.linalg.qr(torch.randn(channels, channels))[0]
        p, lower, upper = torch.linalg.lu(q)
        diag = torch.diagonal(upper)
        self.register_buffer("perm", p)
        self.register_buffer("sign", torch.sign(diag))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower * self.lower_mask)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(diag.abs()))

    def weight(self):
        eye = torch.eye(len(self.sign), dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign * torch.exp(self.log_s))
        return self.perm @ lower @ upper

    def forward(self, x, cond=None):
        y = torch.einsum("ij,njhw->nihw", self.weight(), x)
        return y, (x.shape[2] * x.shape[3] * self.log_s.sum()).expand(x.shape[0])

    def inverse(self, y, cond=None):
        return torch.einsum("ij,njhw->nihw", torch.linalg.inv(self.weight()), y)


class AffineCoupling(nn.Module):
    """The second half of the channels scaled and shifted by a network of the first half and of ``cond``
    (feature maps of h, or None): x_b -> x_b * exp(2 tanh(s/2)) + t (RealNVP, with a bounded scale)."""

    def __init__(self, channels, hidden, cond_channels):
        super().__init__()
        self.half = channels // 2
        self.net = nn.Sequential(nn.Conv2d(self.half + cond_channels, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
                                 _zero_conv(hidden, 2 * (channels - self.half)))

    def _shift_log_scale(self, xa, cond):
        shift, raw = self.net(xa if cond is None else torch.cat([xa, cond], 1)).chunk(2, 1)
        return shift, _bounded(raw, COUPLING_BOUND)

    def forward(self, x, cond=None):
        xa, xb = x[:, : self.half], x[:, self.half :]
        shift, log_scale = self._shift_log_scale(xa, cond)
        return torch.cat([xa, xb * torch.exp(log_scale) + shift], 1), log_scale.sum(dim=(1, 2, 3))

    def inverse(self, y, cond=None):
        ya, yb = y[:, : self.half], y[:, self.half :]
        shift, log_scale = self._shift_log_scale(ya, cond)
        return torch.cat([ya, (yb - shift) * torch.exp(-log_scale)], 1)


class GaussianPrior(nn.Module):
    """N(mu, exp(log_scale)^2) for z given ``given`` (the channels that stay, and/or h's feature maps), written
    as the affine map z -> v = (z - mu) / scale onto N(0, I); log|det| = -sum(log_scale). With nothing given
    (the last scale of an unconditional flow) mu and log_scale are learned constants."""

    def __init__(self, channels, given_channels, hidden):
        super().__init__()
        if given_channels:
            self.net = nn.Sequential(nn.Conv2d(given_channels, hidden, 3, padding=1), nn.ReLU(),
                                     _zero_conv(hidden, 2 * channels))
        else:
            self.constant = nn.Parameter(torch.zeros(1, 2 * channels, 1, 1))

    def _params(self, given, like):
        out = self.net(given) if given is not None else self.constant.expand(len(like), -1, *like.shape[2:])
        mu, raw = out.chunk(2, 1)
        return mu, _bounded(raw, PRIOR_BOUND)

    def forward(self, z, given):
        mu, log_scale = self._params(given, z)
        return (z - mu) * torch.exp(-log_scale), -log_scale.sum(dim=(1, 2, 3))

    def inverse(self, v, given):
        mu, log_scale = self._params(given, v)
        return v * torch.exp(log_scale) + mu


def _cat(*maps):
    """Concatenate the maps that are not None along channels (None when all are)."""
    maps = [m for m in maps if m is not None]
    return torch.cat(maps, 1) if maps else None


# --------------------------------------------------------------------------------------------------
# The conditioning network: h -> feature maps at each scale
# --------------------------------------------------------------------------------------------------
class ConditioningNet(nn.Module):
    """h -> ``channels`` feature maps: a vector through an MLP (broadcast to every position), a map through
    two 3x3 convolutions at its own resolution (bilinearly resized to each scale). h is standardised first
    by a data-initialised ActNorm, which is not part of the flow (its log-determinant is not counted)."""

    def __init__(self, context_shape, channels, hidden):
        super().__init__()
        self.vector = len(context_shape) == 1
        d = context_shape[0]
        self.norm = ActNorm(d)
        if self.vector:
            self.net = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, channels))
        else:
            self.net = nn.Sequential(nn.Conv2d(d, hidden, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(hidden, channels, 3, padding=1))

    def forward(self, h, sizes):
        """One feature map [N, channels, *size] for each size in ``sizes``."""
        if self.vector:
            f = self.net(self.norm(h[:, :, None, None])[0][:, :, 0, 0])[:, :, None, None]
            return [f.expand(-1, -1, *size) for size in sizes]
        f = self.net(self.norm(h)[0])
        return [f if tuple(f.shape[2:]) == size else
                F.interpolate(f, size=size, mode="bilinear", align_corners=False) for size in sizes]


# --------------------------------------------------------------------------------------------------
# Variational dequantization (Flow++): q(u | x)
# --------------------------------------------------------------------------------------------------
class Dequantizer(nn.Module):
    """u = sigmoid(g(e; x)) with e ~ Logistic(0, 1)^D and g a few affine couplings on the squeezed noise,
    each conditioned on features of x (squeezed alike), with the halves swapped between couplings. At
    initialisation g is the identity, so u is exactly uniform. ``forward(w, x)`` takes the uniforms w
    that make e = logit(w) and returns u and log q(u | x)."""

    def __init__(self, channels, hidden, steps):
        super().__init__()
        c4 = 4 * channels
        self.features = nn.Sequential(nn.Conv2d(c4, hidden, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU())
        self.couplings = nn.ModuleList([AffineCoupling(c4, hidden, hidden) for _ in range(steps)])

    def forward(self, w, x_scaled):
        feat = self.features(F.pixel_unshuffle(x_scaled, 2))
        e = torch.logit(w)
        log_q = (F.logsigmoid(e) + F.logsigmoid(-e)).sum(dim=(1, 2, 3))  # log Logistic(e)
        e = F.pixel_unshuffle(e, 2)
        for coupling in self.couplings:
            e, ld = coupling(e, feat)
            log_q = log_q - ld
            e = torch.cat([e[:, coupling.half :], e[:, : coupling.half]], 1)  # swap halves (|det| = 1)
        e = F.pixel_shuffle(e, 2)
        log_q = log_q - (F.logsigmoid(e) + F.logsigmoid(-e)).sum(dim=(1, 2, 3))  # u = sigmoid(e)
        return torch.sigmoid(e), log_q


# --------------------------------------------------------------------------------------------------
# The flow
# --------------------------------------------------------------------------------------------------
class ConditionalFlow(nn.Module):
    """Conditional multi-scale flow p(y | h) on dequantized pixels (the fields are described in FlowConfig).

    Args:
        image_shape: (C, H, W), H and W divisible by 2**n_scales.
        context_shape: None (unconditional: a baseline for NCE(h) - NCE(none)), (D,) or (C', H', W').
        n_scales, n_steps, hidden_channels, cond_channels, dequantization, dequant_steps: see FlowConfig,
            whose defaults these are. ``model.config`` holds every argument, so ``ConditionalFlow(
            **model.config)`` rebuilds it (``inversion.training.load_trained(ConditionalFlow, workdir)``).
    """

    def __init__(self, image_shape, context_shape=None, n_scales: int = FlowConfig.n_scales,
                 n_steps: int = FlowConfig.n_steps, hidden_channels: int = FlowConfig.hidden_channels,
                 cond_channels: int = FlowConfig.cond_channels, dequantization: str = FlowConfig.dequantization,
                 dequant_steps: int = FlowConfig.dequant_steps):
        super().__init__()
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W) with positive sizes, got {image_shape}")
        if context_shape is not None:
            context_shape = tuple(int(s) for s in context_shape)
            if len(context_shape) not in (1, 3) or min(context_shape) < 1:
                raise ValueError(f"context_shape must be None, (D,) or (C, H, W); got {context_shape}")
        FlowConfig(n_scales=n_scales, n_steps=n_steps, hidden_channels=hidden_channels, cond_channels=cond_channels,
                   dequantization=dequantization, dequant_steps=dequant_steps)  # the configuration's checks
        C, H, W = image_shape
        if H % 2**n_scales or W % 2**n_scales:
            raise ValueError(f"image height and width must be divisible by 2**n_scales = {2**n_scales} "
                             f"(n_scales={n_scales}), got {H}x{W}; use fewer scales")
        self.config = dict(image_shape=image_shape, context_shape=context_shape, n_scales=n_scales, n_steps=n_steps,
                           hidden_channels=hidden_channels, cond_channels=cond_channels,
                           dequantization=dequantization, dequant_steps=dequant_steps)
        self.image_shape, self.context_shape, self.dequantization = image_shape, context_shape, dequantization
        self.n_dims = C * H * W
        cc = cond_channels if context_shape is not None else 0
        self.condition = ConditioningNet(context_shape, cc, hidden_channels) if cc else None

        self.steps, self.priors, self.sizes, self.v_shapes = nn.ModuleList(), nn.ModuleList(), [], []
        c, h, w = C, H, W
        for s in range(n_scales):
            c, h, w = 4 * c, h // 2, w // 2
            self.sizes.append((h, w))
            self.steps.append(nn.ModuleList(
                [m for _ in range(n_steps)
                 for m in (ActNorm(c), InvConv1x1(c), AffineCoupling(c, hidden_channels, cc))]))
            last = s == n_scales - 1
            out = c if last else c // 2
            self.priors.append(GaussianPrior(out, cc + (0 if last else c - out), hidden_channels))
            self.v_shapes.append((out, h, w))
            c -= 0 if last else out
        self.dequantizer = (Dequantizer(C, hidden_channels, dequant_steps) if dequantization == "variational"
                            else None)

    @classmethod
    def from_config(cls, image_shape, context_shape, config: FlowConfig) -> "ConditionalFlow":
        """The flow ``config`` describes (its architecture fields), for these image and context shapes."""
        return cls(image_shape, context_shape, **config.architecture())

    @property
    def dtype(self):
        return next(self.priors[0].parameters()).dtype

    @property
    def device(self):
        return next(self.priors[0].parameters()).device

    # ---- input checks (the PixelCNN++'s behaviour and messages) -------------------------------------
    def check_images(self, x):
        """``x`` itself if it is an integer image batch [N, C, H, W] of this model with values 0..255."""
        return check_pixels(x, self.image_shape)

    def check_context(self, context, n):
        """``context`` itself if it suits this model for ``n`` images (None for an unconditional model)."""
        return check_context(context, n, self.context_shape)

    def check_continuous(self, y):
        """``y`` itself if it is a float batch [N, C, H, W] inside the support of p (see the module notes)."""
        if not isinstance(y, torch.Tensor) or not y.dtype.is_floating_point:
            raise ValueError("y must be a floating-point torch tensor of dequantized pixels (x + u) / 256")
        if y.dim() != 4 or tuple(y.shape[1:]) != self.image_shape:
            raise ValueError(f"y must have shape [N, {', '.join(map(str, self.image_shape))}], got {list(y.shape)}")
        lo, hi = -LOGIT_ALPHA / (1 - 2 * LOGIT_ALPHA), (1 - LOGIT_ALPHA) / (1 - 2 * LOGIT_ALPHA)
        if y.numel() and not ((y > lo) & (y < hi)).all():
            raise ValueError(f"y values must lie in ({lo:.4f}, {hi:.4f}), the support of the flow; got range "
                             f"{y.min().item():.4g}..{y.max().item():.4g}")
        return y

    def check_residual(self, v, n=None):
        """``v`` as [N, D] (a single [D] is repeated ``n`` times)."""
        if not isinstance(v, torch.Tensor) or not v.dtype.is_floating_point:
            raise ValueError("v must be a floating-point torch tensor of residuals [N, D]")
        if v.dim() == 1 and len(v) == self.n_dims and n is not None:
            v = v.expand(n, -1)
        if v.dim() != 2 or v.shape[1] != self.n_dims:
            raise ValueError(f"v must have shape [N, {self.n_dims}] (or [{self.n_dims}]), got {list(v.shape)}")
        if not torch.isfinite(v).all():
            raise ValueError("v contains NaN or inf")
        return v

    def _prepare(self, context, n):
        context = self.check_context(context, n)
        return None if context is None else context.to(self.device, self.dtype)

    def _features(self, context):
        return [None] * len(self.sizes) if self.condition is None else self.condition(context, self.sizes)

    # ---- the bijection y <-> v -----------------------------------------------------------------------
    def forward_and_logdet(self, y, context=None):
        """v [N, D] ~ N(0, I) under the model, and log|det dv/dy| [N], for dequantized pixels y [N, C, H, W]."""
        y = self.check_continuous(y).to(self.device, self.dtype)
        return self._forward(y, self._prepare(context, len(y)))

    def _forward(self, y, context):
        a = LOGIT_ALPHA
        s = a + (1 - 2 * a) * y
        t = torch.log(s) - torch.log1p(-s)
        logdet = (math.log(1 - 2 * a) - torch.log(s) - torch.log1p(-s)).sum(dim=(1, 2, 3))
        vs = []
        for steps, prior, cond in zip(self.steps, self.priors, self._features(context)):
            t = F.pixel_unshuffle(t, 2)
            for step in steps:
                t, ld = step(t, cond)
                logdet = logdet + ld
            keep, out = (None, t) if prior is self.priors[-1] else t.chunk(2, 1)
            v, ld = prior(out, _cat(keep, cond))
            logdet = logdet + ld
            vs.append(v.flatten(1))
            t = keep
        return torch.cat(vs, 1), logdet

    def inverse(self, v, context=None):
        """y [N, C, H, W] with forward_and_logdet(y, context)[0] == v, for residuals v [N, D]."""
        v = self.check_residual(v).to(self.device, self.dtype)
        return self._inverse(v, self._prepare(context, len(v)))

    def _inverse(self, v, context):
        parts = torch.split(v, [math.prod(s) for s in self.v_shapes], dim=1)
        t = None
        for steps, prior, cond, part, shape in reversed(list(zip(self.steps, self.priors, self._features(context),
                                                                    parts, self.v_shapes))):
            out = prior.inverse(part.reshape(len(v), *shape), _cat(t, cond))
            t = out if t is None else torch.cat([t, out], 1)
            for step in reversed(steps):
                t = step.inverse(t, cond)
            t = F.pixel_shuffle(t, 2)
        return (torch.sigmoid(t) - LOGIT_ALPHA) / (1 - 2 * LOGIT_ALPHA)

    def log_density(self, y, context=None):
        """log p(y | h) [N], the exact continuous density of y = (x + u) / 256 (per unit volume of y)."""
        v, logdet = self.forward_and_logdet(y, context)
        return _standard_normal(v) + logdet

    # ---- the discrete bound --------------------------------------------------------------------------
    def dequantize(self, x, n_samples=1, generator=None):
        """Dequantization noise for each of ``n_samples`` copies of x: u [n_samples * N, C, H, W] in [0, 1)
        and log q(u | x) [n_samples * N] (zeros for uniform dequantization); copies are sample-major."""
        x = self.check_images(x).to(self.device)
        shape = (n_samples * len(x), *self.image_shape)
        if generator is None:  # training: drawn where the model is, from torch's (per-step seeded) generator
            w = torch.rand(shape, dtype=self.dtype, device=self.device)
        else:  # a CPU generator fixes the draw on any device
            w = torch.rand(shape, generator=generator, dtype=torch.float64).to(self.device, self.dtype)
        if self.dequantizer is None:
            return w, torch.zeros(shape[0], dtype=self.dtype, device=self.device)
        eps = torch.finfo(self.dtype).eps
        return self.dequantizer(w.clamp(eps, 1 - eps), self.scale(x).repeat(n_samples, 1, 1, 1))

    def log_prob_bound(self, x, context=None, n_samples=1, generator=None):
        """The dequantization lower bound on log P(x | h) in nats per image [N] (module notes), estimated with
        ``n_samples`` draws of u per image (from ``generator``, else torch's global generator)."""
        x = self.check_images(x).to(self.device)
        if not (isinstance(n_samples, int) and n_samples >= 1):
            raise ValueError(f"n_samples must be an integer >= 1, got {n_samples!r}")
        context = self._prepare(context, len(x))
        u, log_q = self.dequantize(x, n_samples, generator)
        y = (x.to(self.dtype).repeat(n_samples, 1, 1, 1) + u) / 256
        if context is not None:
            context = context.repeat(n_samples, *[1] * len(self.context_shape))
        v, logdet = self._forward(y, context)
        per_sample = _standard_normal(v) + logdet - log_q
        return per_sample.view(n_samples, len(x)).mean(0) - self.n_dims * math.log(256)

    def log_prob(self, x, context=None):
        """``log_prob_bound`` with one draw of u: what ``inversion.bounds.nce`` calls, so the flow's NCE bound
        is computed exactly as the PixelCNN++'s (a stochastic lower bound; seed torch for a fixed value)."""
        return self.log_prob_bound(x, context)

    def scale(self, x):
        """Pixel values 0..255 in [-1, 1] (the dequantizer's view of x)."""
        return x.to(self.dtype) / 127.5 - 1.0

    @torch.no_grad()
    def data_init(self, x, context=None):
        """Data-dependent init of every ActNorm (the flow's and the one standardising h) from one batch."""
        norms = [m for m in self.modules() if isinstance(m, ActNorm)]
        for m in norms:
            m.initializing = True
        try:
            self.log_prob_bound(x, context)
        finally:
            for m in norms:
                m.initializing = False

    # ---- sampling and the residual view (Rombach et al. 2020) -----------------------------------------
    def draw_residual(self, n, temperature=1.0, generator=None):
        """v ~ N(0, temperature^2 I), [n, D] (drawn in float64 on the CPU, so a generator fixes it anywhere)."""
        v = torch.randn(n, self.n_dims, generator=generator, dtype=torch.float64)
        return (temperature * v).to(self.device, self.dtype)

    @torch.no_grad()
    def sample(self, context=None, temperature=1.0, generator=None, n=None):
        """uint8 images [N, C, H, W], one per row of ``context`` (``n`` of them for an unconditional model)."""
        if context is None and n is None:
            raise ValueError("give a context [N, ...] or, for an unconditional model, n")
        n = len(context) if context is not None else n
        return self.sample_with_residual(self.draw_residual(n, temperature, generator), context)

    @torch.no_grad()
    def sample_with_residual(self, v, context=None):
        """uint8 images decoded from residuals v [N, D] (or one [D] for every context) given h: keep v and
        vary h to see what h controls (the "swap" view); vary v for one h (a context [1, ...] is repeated
        for every row of v) to see what h is invariant to."""
        n = len(context) if context is not None else None
        v = self.check_residual(v, n)
        if context is not None and len(context) == 1 and len(v) > 1:
            context = context.expand(len(v), *self.context_shape)
        y = self.inverse(v, context)
        return torch.floor(y * 256).clamp(0, 255).to(torch.uint8)

    @torch.no_grad()
    def residual(self, x, context=None):
        """The residual v of images x given h, at the centres of their bins (u = 1/2): decode it with another
        h (``sample_with_residual``) to transfer what h does not know about x."""
        x = self.check_images(x)
        return self.forward_and_logdet((x.to(self.device, self.dtype) + 0.5) / 256, context)[0]


def _standard_normal(v):
    """log N(v; 0, I) summed over the last axis."""
    return -0.5 * (v**2).sum(1) - 0.5 * v.shape[1] * math.log(2 * math.pi)


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------
def train_flow(model: ConditionalFlow, images, contexts, workdir, config: FlowConfig, *, valid=None, device=None,
               progress=True, checkpoint_every=500, desc="flow") -> TrainResult:
    """Maximum likelihood training of a flow inverter on (image, context) pairs; resumable.

    The loss is minus the dequantization bound, nats per image, one draw of u per image per update (from
    the loop's per-step seed, so a resumed run draws what an uninterrupted one would). Adam at ``config.lr``;
    ActNorm is data-initialised on the first batch of a fresh run (``fit``'s on_start). With
    ``valid=(images, contexts)`` and ``config.eval_every`` > 0 the validation bound is evaluated, training
    stops early after ``config.patience`` evaluations without improvement, and ``model`` ends with the best
    weights (workdir/best.pt); else with the last ones (workdir/state.pt). workdir/config.json records the
    run without ``config.steps``, so that more steps on the same workdir continue it.
    """
    write_run_config(workdir, dict(model=model.config, lr=config.lr, batch_size=config.batch_size, seed=config.seed))
    loop = TrainConfig(steps=config.steps, batch_size=config.batch_size, lr=config.lr, eval_every=config.eval_every,
                       patience=config.patience, checkpoint_every=checkpoint_every, seed=config.seed,
                       progress=progress)
    return fit_density(model, images, contexts, workdir, loop, valid=valid, device=device, desc=desc)
