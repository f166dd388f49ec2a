"""Variational autoencoders beside the PixelCNN++: a conditional VAE inverter p(x | h) and the supervised VAE.

A latent-variable model (Kingma & Welling 2014) is a second way to write down p(x | h), one whose likelihood
is bounded from below instead of exact. Read top to bottom: the configurations, the input checks, the
discretized likelihood, the networks, what both VAEs share (ELBO, IWAE, sampling), the two VAEs, training.

The conditional VAE (Sohn, Lee & Yan 2015, "CVAE") on a frozen classifier layer h:
    q(z | x, h) = N(mean(x, h), diag exp log_var(x, h))     the encoder
    p(z) = N(0, I)                                          the prior
    p(x | h, z) = a 256-way distribution per sub-pixel, the sub-pixels independent given (h, z)
    ELBO(x, h) = E_q[log p(x | h, z)] - KL(q(z | x, h) || p(z)) <= log P(x | h)
Why each choice:
- *A discretized decoder.* The PixelCNN++'s NCE is a mean of log P(x | h) over 8-bit images, in nats. A
  decoder with a probability for each of the 256 values of every sub-pixel makes the ELBO a lower bound on
  that same log P, so it sits directly beside the NCE (a Gaussian or BCE decoder on grey levels bounds
  nothing of the kind). Default: a 256-way softmax per sub-pixel, the paper's likelihood for MNIST; the
  alternative is a discretized logistic (PixelCNN++'s with one component: the edge bins take the tails).
- *A fixed prior N(0, I), not Sohn et al.'s p(z | h).* The decoder sees h, so a Gaussian p(z | h) =
  N(m(h), S(h)) is N(0, I) pushed through an h-dependent affine map that the decoder can absorb: in principle
  the same family of p(x | h). The fixed prior has nothing to train, sampling at h needs only h, and the KL
  reads as the nats the encoder adds beyond h.
- *Training optimises the bound that is reported* (no KL warm-up, no free bits). Warm-up guards against
  posterior collapse, a risk for decoders that can model the dependence between pixels without z
  (autoregressive ones); here the pixels are independent given (h, z), so every dependence h leaves
  unexplained is worth encoding. The KL is computed in closed form and log p(x | h, z) at a reparameterised
  sample: an unbiased estimate of the ELBO, with less variance than sampling the KL too.
- *The importance-weighted bound* (Burda, Grosse & Salakhutdinov 2016, "IWAE"): with z_1..z_k ~ q,
    IWAE_k(x, h) = log (1/k) sum_i p(x | h, z_i) p(z_i) / q(z_i | x, h),
  whose expectation is the ELBO's at k = 1, non-decreasing in k, and tends to log P(x | h). A logsumexp over
  the [k, N] log weights, computed in chunks of decoder passes, so k in the hundreds costs time, not memory.
  Trained on the ELBO; IWAE_k is the tighter number to report.
- *Contexts standardised inside the model*, with training statistics in buffers (as in
  ``inversion.models.decoders``): layer scales differ by orders of magnitude. A vector h goes through an MLP
  to an embedding that joins the encoder's head and the decoder's first layer and biases every convolution
  per channel; a map goes through a 3x3 conv, resized (bilinear) to each resolution and projected by a 1x1
  conv there, as the PixelCNN++ takes a map (Appendix A).

The supervised VAE (Nguyen & Rodriguez Martinez 2020, "Learning Invariances for Interpretability using
Supervised VAE", arXiv 2007.07591; no public code, so this follows the abstract): a VAE on x alone whose
latent splits into z_y (the first ``label_dims`` dimensions) and nuisance dimensions z_n; a classifier head
reads z_y only, trained jointly: loss -ELBO + class_weight * cross-entropy. Holding z_y at the encoder mean
and redrawing z_n from the prior (``nuisance_samples``) shows what the classifier is invariant to. Ours:
- The cross-entropy reads the *sampled* z_y (the ELBO's sample), so class information must survive the
  posterior's noise, at the scale the decoder sees it; ``classify`` reads the encoder mean.
- ``class_weight`` 100: an MNIST digit's ELBO is hundreds of nats, the cross-entropy at most log 10.

Conventions: images are integer tensors [N, C, H, W] of 0..255 (uint8), scaled to [-1, 1] inside; bounds
are nats per image. Draws take an optional torch.Generator and are made in float64 then cast, so float32 and
float64 copies of a model see the same noise.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from inversion.models.inputs import check_pixels
from inversion.models.pixelcnn import _log1mexp
from inversion.training import TrainConfig, TrainResult, check_field, fit, load_trained, write_run_config

LIKELIHOODS = ("softmax", "logistic")
_LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------
def _check_shared(config) -> None:
    """The range checks both configurations share (architecture and training loop)."""
    check = lambda name, kind, ok, valid: check_field(config, name, kind, ok, valid)  # noqa: E731
    for name in ("n_filters", "latent_dim", "batch_size"):
        check(name, int, lambda v: v >= 1, "an integer >= 1")
    check("likelihood", str, lambda v: v in LIKELIHOODS, f"one of {LIKELIHOODS}")
    check("steps", int, lambda v: v >= 0, "an integer >= 0")
    check("lr", float, lambda v: v > 0, "a number > 0")
    check("eval_every", int, lambda v: v >= 0, "an integer >= 0 (0: never)")
    check("patience", int, lambda v: v >= 0, "an integer >= 0 (0: never stop early)")
    check("seed", int, lambda v: True, "an integer")


@dataclass(frozen=True)
class VAEConfig:
    """Every setting of one conditional VAE inverter; the paper has none (it uses no VAE), so these are ours.

    Architecture (``ARCHITECTURE``; ``architecture()`` gives them as ConditionalVAE keywords):
        n_filters: channels of every convolution (64, the PixelCNN++'s width on MNIST).
        latent_dim: dimensions of z (32).
        context_hidden: width of the context embedding (256, FC3's width).
        likelihood: "softmax" (256-way per sub-pixel) or "logistic" (discretized logistic per sub-pixel).
    Training (``train_vae``): Adam at ``lr`` for ``steps`` updates of ``batch_size`` images on -ELBO;
        validation ELBO every ``eval_every`` updates, early stopping after ``patience`` evaluations without
        improvement (0: never); ``seed``: batch order, the z samples, and the validation draws.
    """

    ARCHITECTURE: ClassVar[tuple[str, ...]] = ("n_filters", "latent_dim", "context_hidden", "likelihood")

    n_filters: int = 64
    latent_dim: int = 32
    context_hidden: int = 256
    likelihood: str = "softmax"
    steps: int = 20000
    batch_size: int = 64
    lr: float = 1e-3
    eval_every: int = 1000
    patience: int = 10
    seed: int = 0

    def __post_init__(self):
        _check_shared(self)
        check_field(self, "context_hidden", int, lambda v: v >= 1, "an integer >= 1")

    def architecture(self) -> dict:
        """The architecture fields as keywords of ``ConditionalVAE``."""
        return {name: getattr(self, name) for name in self.ARCHITECTURE}


@dataclass(frozen=True)
class SupervisedVAEConfig:
    """Every setting of one supervised VAE (Nguyen & Rodriguez Martinez 2020; their settings are not public).

    Architecture (``ARCHITECTURE``): ``n_filters``, ``latent_dim`` and ``likelihood`` as in VAEConfig;
        ``label_dims`` the first dimensions of z that the classifier reads (z_y; the other ``latent_dim -
        label_dims`` are nuisance dimensions z_n, at least one); ``classifier_hidden`` 0 for a linear head,
        else the width of one hidden layer.
    Training (``train_supervised_vae``): loss -ELBO + ``class_weight`` * cross-entropy (see the module
        docstring for 100); the rest as in VAEConfig.
    """

    ARCHITECTURE: ClassVar[tuple[str, ...]] = ("n_filters", "latent_dim", "label_dims", "classifier_hidden",
                                               "likelihood")

    n_filters: int = 64
    latent_dim: int = 32
    label_dims: int = 8
    classifier_hidden: int = 0
    likelihood: str = "softmax"
    class_weight: float = 100.0
    steps: int = 20000
    batch_size: int = 64
    lr: float = 1e-3
    eval_every: int = 1000
    patience: int = 10
    seed: int = 0

    def __post_init__(self):
        _check_shared(self)
        check = lambda name, kind, ok, valid: check_field(self, name, kind, ok, valid)  # noqa: E731
        check("label_dims", int, lambda v: 1 <= v < self.latent_dim,
              f"an integer in 1..latent_dim - 1 = {self.latent_dim - 1} (z_n needs a dimension)")
        check("classifier_hidden", int, lambda v: v >= 0, "an integer >= 0 (0: a linear head)")
        check("class_weight", float, lambda v: v >= 0 and math.isfinite(v), "a finite number >= 0")

    def architecture(self) -> dict:
        """The architecture fields as keywords of ``SupervisedVAE``."""
        return {name: getattr(self, name) for name in self.ARCHITECTURE}


# --------------------------------------------------------------------------------------------------
# Input checks: a ValueError that says what was expected
# --------------------------------------------------------------------------------------------------
def _dims(shape) -> str:
    return ", ".join(map(str, shape))


def _check_float(t, shape, n, what) -> torch.Tensor:
    """``t`` itself if it is a finite floating-point tensor [n, *shape] (any count when n is None)."""
    if not isinstance(t, torch.Tensor) or not t.dtype.is_floating_point:
        got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{what} must be a floating-point torch tensor, got {got}")
    if t.dim() != 1 + len(shape) or tuple(t.shape[1:]) != tuple(shape) or (n is not None and len(t) != n):
        raise ValueError(f"{what} must have shape [{'N' if n is None else n}, {_dims(shape)}], got {list(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{what} contains NaN or inf")
    return t


def _check_shape(shape, lengths, message):
    shape = tuple(int(s) for s in shape)
    if len(shape) not in lengths or min(shape) < 1:
        raise ValueError(f"{message} with positive sizes, got {shape}")
    return shape


def _check_count(value, what, minimum=1) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_temperature(t) -> float:
    if not isinstance(t, numbers.Real) or isinstance(t, bool) or not (0 <= t < math.inf):
        raise ValueError(f"temperature must be a finite number >= 0 (1: the prior itself), got {t!r}")
    return float(t)


# --------------------------------------------------------------------------------------------------
# The discretized likelihood of one sub-pixel: params [N, C, P, H, W] -> a distribution on 0..255
# --------------------------------------------------------------------------------------------------
def _logistic_log_prob(mean, log_scale, x):
    """log P(x) of a logistic on [-1, 1] discretised into 256 bins of width 2/255, the edge bins taking the
    tails; x long 0..255. log(sigmoid(u) - sigmoid(l)) is written as in ``pixelcnn._mixture_log_prob``:
    log sigmoid(u) + log sigmoid(-l) + log(1 - exp(-(u - l))), exact at tiny bin masses."""
    centered = x.to(mean.dtype) / 127.5 - 1.0 - mean
    inv_s = torch.exp(-log_scale)
    upper, lower = inv_s * (centered + 1.0 / 255.0), inv_s * (centered - 1.0 / 255.0)
    log_cdf_upper, log_sf_lower = F.logsigmoid(upper), F.logsigmoid(-lower)
    mid = log_cdf_upper + log_sf_lower + _log1mexp(upper - lower)
    return torch.where(x == 0, log_cdf_upper, torch.where(x == 255, log_sf_lower, mid))


def _split_logistic(params):
    return params[:, :, 0], params[:, :, 1].clamp(min=-7.0)  # floor on the scale, as PixelCNN++ does


def sub_pixel_log_prob(likelihood: str, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log P(x_c,i,j | h, z) for every sub-pixel: [N, C, H, W] from the decoder's params and long x."""
    if likelihood == "softmax":
        return torch.log_softmax(params, dim=2).gather(2, x.unsqueeze(2)).squeeze(2)
    return _logistic_log_prob(*_split_logistic(params), x)


def value_log_probs(likelihood: str, params: torch.Tensor) -> torch.Tensor:
    """log P(v) of every value v = 0..255 of every sub-pixel: [N, C, 256, H, W] (each exp-sums to 1)."""
    if likelihood == "softmax":
        return torch.log_softmax(params, dim=2)
    mean, log_scale = _split_logistic(params)
    v = torch.arange(256, device=params.device).view(1, 1, 256, 1, 1)
    return _logistic_log_prob(mean.unsqueeze(2), log_scale.unsqueeze(2), v)


def draw_sub_pixels(likelihood: str, params: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Sub-pixels (long [N, C, H, W]) drawn by inverting each CDF at the uniforms ``u`` [N, C, H, W]."""
    if likelihood == "softmax":
        cdf = torch.softmax(params, dim=2).cumsum(dim=2)
        return (cdf < u.unsqueeze(2)).sum(dim=2).clamp(max=255)
    mean, log_scale = _split_logistic(params)
    eps = torch.finfo(params.dtype).eps
    u = u.clamp(eps, 1 - eps)
    y = mean + torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))  # a continuous logistic draw, binned
    return torch.round((y + 1.0) * 127.5).clamp(0, 255).long()


# --------------------------------------------------------------------------------------------------
# Networks: context embedding, encoder, decoder
# --------------------------------------------------------------------------------------------------
def _act(t):
    return F.leaky_relu(t, 0.2)


def _repeat(t, c):
    """[N, ...] -> [c * N, ...], the batch repeated c times (None stays None)."""
    return None if t is None else t.expand(c, *t.shape).reshape(c * len(t), *t.shape[1:])


class _Context(nn.Module):
    """h -> standardised -> an embedding e: a vector through a two-layer MLP, a map through a 3x3 conv."""

    def __init__(self, context_shape, hidden):
        super().__init__()
        self.spatial = len(context_shape) == 3
        stats = (context_shape[0], 1, 1) if self.spatial else context_shape
        self.register_buffer("h_mean", torch.zeros(stats))
        self.register_buffer("h_std", torch.ones(stats))
        d = context_shape[0]
        self.net = (nn.Conv2d(d, hidden, 3, padding=1) if self.spatial
                    else nn.Sequential(nn.Linear(d, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden)))

    def forward(self, h):
        return _act(self.net((h - self.h_mean) / self.h_std))


class _Bias(nn.Module):
    """The embedding as a bias of one convolution: per channel (vector), or resized and 1x1-projected (map)."""

    def __init__(self, hidden, n_filters, spatial):
        super().__init__()
        self.proj = nn.Conv2d(hidden, n_filters, 1) if spatial else nn.Linear(hidden, n_filters)

    def forward(self, e, size):
        if e.dim() == 2:
            return self.proj(e)[:, :, None, None]
        return self.proj(F.interpolate(e, size=tuple(size), mode="bilinear", align_corners=False))


def _base_size(image_shape):
    """The smallest resolution: two halvings (ceil), 28 -> 7, 8 -> 2, 30 -> 8."""
    return math.ceil(image_shape[1] / 4), math.ceil(image_shape[2] / 4)


def _init_weights(module):
    """He initialisation for leaky ReLU(0.2) on every layer, biases zero, so that signals (and z's influence)
    keep their scale through the stack; PyTorch's default init shrinks them at every layer. A 4x4 stride-2
    transposed conv gives each output c_in * 2 * 2 inputs, its fan-in."""
    gain = math.sqrt(2 / (1 + 0.2**2))
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)):
            fan_in = m.weight[0].numel() if not isinstance(m, nn.ConvTranspose2d) else m.weight.shape[0] * 4
            nn.init.normal_(m.weight, 0.0, gain / math.sqrt(fan_in))
            nn.init.zeros_(m.bias)


class _Encoder(nn.Module):
    """x -> (mean, log_var) of q(z | x [, h]): a 3x3 conv, two stride-2 3x3 convs, a linear head."""

    def __init__(self, image_shape, nf, latent_dim, hidden=None, spatial=False):
        super().__init__()
        C = image_shape[0]
        self.convs = nn.ModuleList([nn.Conv2d(C, nf, 3, padding=1), nn.Conv2d(nf, nf, 3, stride=2, padding=1),
                                    nn.Conv2d(nf, nf, 3, stride=2, padding=1)])
        self.biases = nn.ModuleList([_Bias(hidden, nf, spatial) for _ in self.convs]) if hidden else None
        h0, w0 = _base_size(image_shape)
        self.head = nn.Linear(nf * h0 * w0 + (hidden if hidden and not spatial else 0), 2 * latent_dim)

    def forward(self, xs, e=None):
        y = xs
        for i, conv in enumerate(self.convs):
            y = conv(y)
            y = _act(y if e is None else y + self.biases[i](e, y.shape[2:]))
        y = y.flatten(1)
        if e is not None and e.dim() == 2:
            y = torch.cat([y, e], dim=1)
        mean, log_var = self.head(y).chunk(2, dim=1)
        return mean, log_var


class _Decoder(nn.Module):
    """z [, h] -> params [N, C, P, H, W]: a linear layer to a map at 1/4 size, a 3x3 conv there, then twice a
    4x4 stride-2 transposed conv and a 3x3 conv (cropped to the image after the second), a 1x1 output conv."""

    def __init__(self, image_shape, nf, latent_dim, n_params, hidden=None, spatial=False):
        super().__init__()
        self.image_shape, self.n_params, self.nf = image_shape, n_params, nf
        self.base = _base_size(image_shape)
        self.fc = nn.Linear(latent_dim + (hidden if hidden and not spatial else 0), nf * self.base[0] * self.base[1])
        self.convs = nn.ModuleList([nn.Conv2d(nf, nf, 3, padding=1) for _ in range(3)])
        self.ups = nn.ModuleList([nn.ConvTranspose2d(nf, nf, 4, stride=2, padding=1) for _ in range(2)])
        self.biases = nn.ModuleList([_Bias(hidden, nf, spatial) for _ in self.convs]) if hidden else None
        self.out = nn.Conv2d(nf, image_shape[0] * n_params, 1)

    def forward(self, z, e=None):
        C, H, W = self.image_shape
        y = z if e is None or e.dim() != 2 else torch.cat([z, e], dim=1)
        y = _act(self.fc(y)).view(len(z), self.nf, *self.base)
        for i, conv in enumerate(self.convs):
            if i > 0:
                y = _act(self.ups[i - 1](y))
            if i == 2:
                y = y[:, :, :H, :W]
            y = conv(y)
            y = _act(y if e is None else y + self.biases[i](e, y.shape[2:]))
        return self.out(y).view(len(z), C, self.n_params, H, W)


# --------------------------------------------------------------------------------------------------
# What both VAEs share: the bound, its importance-weighted version, and sampling
# --------------------------------------------------------------------------------------------------
class _LatentModel(nn.Module):
    def __init__(self, image_shape, context_shape, n_filters, latent_dim, context_hidden, likelihood):
        super().__init__()
        self.image_shape, self.context_shape = image_shape, context_shape
        self.latent_dim, self.likelihood = latent_dim, likelihood
        hidden, spatial = (context_hidden, len(context_shape) == 3) if context_shape else (None, False)
        self.context = _Context(context_shape, context_hidden) if context_shape else None
        self.encoder = _Encoder(image_shape, n_filters, latent_dim, hidden, spatial)
        self.decoder = _Decoder(image_shape, n_filters, latent_dim, 256 if likelihood == "softmax" else 2,
                                hidden, spatial)
        _init_weights(self)
        with torch.no_grad():  # q starts near the prior, p(x | h, z) near its output bias (init_from_data
            self.encoder.head.weight.mul_(0.1)  # sets that to the pixel histogram): a first ELBO near the
            self.decoder.out.weight.mul_(0.1)  # marginal's, not hundreds of nats of KL below it

    @property
    def dtype(self):
        return self.decoder.out.weight.dtype

    @property
    def device(self):
        return self.decoder.out.weight.device

    def n_parameters(self):
        return sum(p.numel() for p in self.parameters())

    def _noise(self, shape, generator, normal=True):
        """Standard normals (or uniforms) drawn in float64 on the generator's device, cast to the model's."""
        device = generator.device if generator is not None else torch.device("cpu")
        draw = torch.randn if normal else torch.rand
        return draw(shape, generator=generator, dtype=torch.float64, device=device).to(self.device, self.dtype)

    def _images(self, x):
        """Checked images on the model's device (long) and scaled to [-1, 1] in the model's dtype."""
        x = check_pixels(x, self.image_shape).to(self.device).long()
        return x, x.to(self.dtype) / 127.5 - 1.0

    def _params(self, z, e):
        """The decoder's output, in float32 or wider."""
        out = self.decoder(z, e)
        return out.to(torch.promote_types(out.dtype, torch.float32))

    def _log_px(self, z, e, x):
        """log p(x | h, z) per image [N] in nats."""
        return sub_pixel_log_prob(self.likelihood, self._params(z, e), x).sum(dim=(1, 2, 3))

    def _elbo(self, x, xs, e, n_samples, generator):
        """(ELBO estimate [N], the first z sample [N, d]): mean over samples of log p(x | h, z) minus the
        KL in closed form, 0.5 sum(mean^2 + var - 1 - log_var)."""
        mean, log_var = self.encoder(xs, e)
        std = torch.exp(0.5 * log_var)
        kl = 0.5 * (mean.square() + std.square() - 1.0 - log_var).sum(dim=1)
        N, S = len(x), n_samples
        z = mean + std * self._noise((S, N, self.latent_dim), generator)
        log_px = self._log_px(z.reshape(S * N, -1), _repeat(e, S), _repeat(x, S)).view(S, N).mean(dim=0)
        return log_px - kl, z[0]

    def _draw_images(self, z, e, generator):
        """uint8 images, each sub-pixel drawn from p(x | h, z) (not its mean)."""
        params = self._params(z, e)
        u = self._noise(params[:, :, 0].shape, generator, normal=False).to(params.dtype)
        return draw_sub_pixels(self.likelihood, params, u).to(torch.uint8)

    def _check_z(self, z, n=None):
        return _check_float(z, (self.latent_dim,), n, "z").to(self.device, self.dtype)

    def check_context(self, h, n=None):
        """``h`` itself if it suits this model for ``n`` images (None for an unconditional model)."""
        if self.context_shape is None:
            if h is not None:
                raise ValueError("this model is unconditional (context_shape=None) but a context h was given")
            return None
        if h is None:
            raise ValueError(f"this model needs a context h of shape [N, {_dims(self.context_shape)}]")
        return _check_float(h, self.context_shape, n, "context h")

    def _embedder(self, h, n):
        """A function (start, stop) -> the embedding of h[start:stop] (None when unconditional)."""
        h = self.check_context(h, n)
        if h is None:
            return lambda i, j: None
        h = h.to(self.device, self.dtype)
        return lambda i, j: self.context(h[i:j])

    def encode(self, x, h=None):
        """The mean and log-variance of q(z | x, h), each [N, latent_dim] (for the supervised VAE, z_y is
        [:, :label_dims])."""
        x, xs = self._images(x)
        return self.encoder(xs, self._embedder(h, len(x))(0, len(x)))

    def elbo(self, x, h=None, n_samples: int = 1, generator=None, batch_size: int = 256):
        """ELBO(x, h) <= log P(x | h) per image [N], nats: the closed-form KL and ``n_samples`` reparameterised
        z per image (an unbiased estimate of the bound); differentiable; ``batch_size`` decoder passes at once."""
        x, xs = self._images(x)
        embed, n_samples = self._embedder(h, len(x)), _check_count(n_samples, "n_samples")
        step = max(1, _check_count(batch_size, "batch_size") // n_samples)
        parts = [self._elbo(x[i : i + step], xs[i : i + step], embed(i, i + step), n_samples, generator)[0]
                 for i in range(0, len(x), step)]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=self.dtype, device=self.device)

    @torch.no_grad()
    def iwae_bound(self, x, h=None, k: int = 64, generator=None, batch_size: int = 256):
        """IWAE_k(x, h) per image [N], nats (Burda et al. 2016): ELBO <= E[IWAE_k] <= log P(x | h); a logsumexp
        over k log weights minus log k, at most ``batch_size`` decoder passes at a time."""
        k, batch_size = _check_count(k, "k"), _check_count(batch_size, "batch_size")
        x, xs = self._images(x)
        embed, d, out = self._embedder(h, len(x)), self.latent_dim, []
        for i in range(0, len(x), batch_size):
            xi, e = x[i : i + batch_size], embed(i, i + batch_size)
            n = len(xi)
            mean, log_var = self.encoder(xs[i : i + batch_size], e)
            std, per = torch.exp(0.5 * log_var), max(1, batch_size // n)
            log_w = []
            for start in range(0, k, per):
                c = min(per, k - start)
                eps = self._noise((c, n, d), generator)
                z = mean + std * eps
                log_q = (-0.5 * eps.square() - 0.5 * log_var - 0.5 * _LOG_2PI).sum(dim=2)
                log_prior = (-0.5 * z.square() - 0.5 * _LOG_2PI).sum(dim=2)
                log_px = self._log_px(z.reshape(c * n, d), _repeat(e, c), _repeat(xi, c)).view(c, n)
                log_w.append(log_px + log_prior - log_q)
            out.append(torch.logsumexp(torch.cat(log_w), dim=0) - math.log(k))
        return torch.cat(out) if out else torch.zeros(0, dtype=self.dtype, device=self.device)

    @torch.no_grad()
    def init_from_data(self, images, contexts=None, chunk: int = 4096) -> None:
        """Data-dependent initialisation from the training set (``train_*`` call it before step 0):
        - the decoder's output bias is the images' marginal per channel: the log of the histogram (add-one
          smoothed) for the softmax, the mean and the matching logistic scale (variance s^2 pi^2 / 3) otherwise;
        - the context statistics for the standardisation (per feature, or per channel of a map)."""
        check_pixels(images, self.image_shape, "training images")
        self.check_context(contexts, len(images))
        if len(images) == 0:
            raise ValueError("init_from_data needs at least one image")
        C = self.image_shape[0]
        counts = torch.zeros(C, 256, dtype=torch.float64)
        for i in range(0, len(images), chunk):
            x = images[i : i + chunk].long().transpose(0, 1).reshape(C, -1).cpu()
            counts += torch.stack([torch.bincount(x[c], minlength=256) for c in range(C)]).double()
        p = (counts + 1) / (counts + 1).sum(dim=1, keepdim=True)
        if self.likelihood == "softmax":
            bias = p.log()
        else:
            v = torch.arange(256, dtype=torch.float64) / 127.5 - 1
            mean = (p * v).sum(dim=1)
            std = (p * (v - mean[:, None]).square()).sum(dim=1).sqrt()
            bias = torch.stack([mean, torch.log(std * math.sqrt(3) / math.pi)], dim=1)
        self.decoder.out.bias.copy_(bias.reshape(-1).to(self.decoder.out.bias))
        if contexts is not None:
            h = contexts.double()
            dims = (0,) if h.dim() == 2 else (0, 2, 3)
            std, mean = torch.std_mean(h, dims) if len(h) > 1 else (torch.ones(h.shape[1], dtype=h.dtype), h.mean(dims))
            std = torch.where(std > 1e-6, std, torch.ones_like(std))  # dead units (constant 0): leave unscaled
            self.context.h_mean.copy_(mean.reshape(self.context.h_mean.shape))
            self.context.h_std.copy_(std.reshape(self.context.h_std.shape))


# --------------------------------------------------------------------------------------------------
# The conditional VAE inverter p(x | h)
# --------------------------------------------------------------------------------------------------
class ConditionalVAE(_LatentModel):
    """q(z | x, h), p(z) = N(0, I), p(x | h, z) discretized (the architecture fields are VAEConfig's).

    Args:
        image_shape: (C, H, W).
        context_shape: (D,) for a vector h, (C', H', W') for a spatial h, or None for an unconditional VAE
            of x (the reference for H(x) in NCE(h) - NCE(none)).
        n_filters, latent_dim, context_hidden, likelihood: see VAEConfig, whose defaults these are.
            ``model.config`` holds every argument, so ``ConditionalVAE(**model.config)`` rebuilds the model.
    """

    def __init__(self, image_shape, context_shape=None, n_filters: int = VAEConfig.n_filters,
                 latent_dim: int = VAEConfig.latent_dim, context_hidden: int = VAEConfig.context_hidden,
                 likelihood: str = VAEConfig.likelihood):
        image_shape = _check_shape(image_shape, (3,), "image_shape must be (C, H, W)")
        if context_shape is not None:
            context_shape = _check_shape(context_shape, (1, 3), "context_shape must be None, (D,) or (C, H, W)")
        VAEConfig(n_filters=n_filters, latent_dim=latent_dim, context_hidden=context_hidden, likelihood=likelihood)
        super().__init__(image_shape, context_shape, n_filters, latent_dim, context_hidden, likelihood)
        self.config = dict(image_shape=image_shape, context_shape=context_shape, n_filters=n_filters,
                           latent_dim=latent_dim, context_hidden=context_hidden, likelihood=likelihood)

    @classmethod
    def from_config(cls, image_shape, context_shape, config: VAEConfig) -> "ConditionalVAE":
        """The model ``config`` describes (its architecture fields), for these image and context shapes."""
        return cls(image_shape, context_shape, **config.architecture())

    @torch.no_grad()
    def sample(self, h=None, generator=None, temperature: float = 1.0, n: int | None = None,
               batch_size: int = 256) -> torch.Tensor:
        """uint8 images [N, C, H, W], one per row of h: z ~ N(0, temperature^2 I), then every sub-pixel drawn
        from p(x | h, z). temperature 1 is the model itself (0: z at the prior's mode). ``n``: how many images
        an unconditional model draws (h None)."""
        temperature = _check_temperature(temperature)
        if self.context_shape is None:
            self.check_context(h)
            n = _check_count(n, "n (the number of images of an unconditional model)", 0)
        else:
            n = len(self.check_context(h))
        embed, out = self._embedder(h, n), []
        for i in range(0, n, _check_count(batch_size, "batch_size")):
            m = min(batch_size, n - i)
            z = temperature * self._noise((m, self.latent_dim), generator)
            out.append(self._draw_images(z, embed(i, i + m), generator))
        return torch.cat(out) if out else torch.zeros(0, *self.image_shape, dtype=torch.uint8, device=self.device)

    @torch.no_grad()
    def value_probs(self, h, z) -> torch.Tensor:
        """P(v | h, z) of every value v = 0..255 of every sub-pixel: [N, C, 256, H, W]."""
        z = self._check_z(z)
        return value_log_probs(self.likelihood, self._params(z, self._embedder(h, len(z))(0, len(z)))).exp()

    @torch.no_grad()
    def reconstruct_mean(self, h, z) -> torch.Tensor:
        """The mean of p(x | h, z) per sub-pixel, float [N, C, H, W] in [0, 1] (the MSE decoder's units)."""
        p = self.value_probs(h, z)
        return (p * torch.arange(256, dtype=p.dtype, device=p.device).view(1, 1, 256, 1, 1)).sum(dim=2) / 255

# --------------------------------------------------------------------------------------------------
# The supervised VAE (Nguyen & Rodriguez Martinez 2020)
# --------------------------------------------------------------------------------------------------
class SupervisedVAE(_LatentModel):
    """A VAE on x whose first ``label_dims`` latent dimensions z_y feed a classifier of ``n_classes``.

    Args: image_shape (C, H, W); n_classes; n_filters, latent_dim, label_dims, classifier_hidden, likelihood
    as in SupervisedVAEConfig, whose defaults these are (``SupervisedVAE(**model.config)`` rebuilds it).
    """

    def __init__(self, image_shape, n_classes: int = 10, n_filters: int = SupervisedVAEConfig.n_filters,
                 latent_dim: int = SupervisedVAEConfig.latent_dim, label_dims: int = SupervisedVAEConfig.label_dims,
                 classifier_hidden: int = SupervisedVAEConfig.classifier_hidden,
                 likelihood: str = SupervisedVAEConfig.likelihood):
        image_shape = _check_shape(image_shape, (3,), "image_shape must be (C, H, W)")
        n_classes = _check_count(n_classes, "n_classes", 2)
        SupervisedVAEConfig(n_filters=n_filters, latent_dim=latent_dim, label_dims=label_dims,
                            classifier_hidden=classifier_hidden, likelihood=likelihood)
        super().__init__(image_shape, None, n_filters, latent_dim, None, likelihood)
        self.n_classes, self.label_dims = n_classes, label_dims
        self.head = (nn.Linear(label_dims, n_classes) if classifier_hidden == 0 else
                     nn.Sequential(nn.Linear(label_dims, classifier_hidden), nn.LeakyReLU(0.2),
                                   nn.Linear(classifier_hidden, n_classes)))
        self.config = dict(image_shape=image_shape, n_classes=n_classes, n_filters=n_filters, latent_dim=latent_dim,
                           label_dims=label_dims, classifier_hidden=classifier_hidden, likelihood=likelihood)

    @classmethod
    def from_config(cls, image_shape, n_classes, config: SupervisedVAEConfig) -> "SupervisedVAE":
        return cls(image_shape, n_classes, **config.architecture())

    def check_labels(self, y, n):
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.dim() != 1 or len(y) != n:
            got = f"{y.dtype} {list(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"labels must be an int64 tensor [{n}], got {got}")
        if n and (y.min() < 0 or y.max() >= self.n_classes):
            raise ValueError(f"labels must lie in 0..{self.n_classes - 1}, got {y.min().item()}..{y.max().item()}")
        return y

    def elbo(self, x, n_samples: int = 1, generator=None, batch_size: int = 256):
        """ELBO(x) <= log P(x) per image [N], nats (as ConditionalVAE.elbo)."""
        return super().elbo(x, None, n_samples, generator, batch_size)

    def iwae_bound(self, x, k: int = 64, generator=None, batch_size: int = 256):
        """IWAE_k(x) per image [N], nats."""
        return super().iwae_bound(x, None, k, generator, batch_size)

    def classify(self, x):
        """Class logits [N, n_classes] from the encoder mean of z_y."""
        return self.head(self.encode(x)[0][:, : self.label_dims])

    @torch.no_grad()
    def accuracy(self, images, labels, batch_size: int = 500) -> float:
        """Fraction of ``images`` whose arg-max class (``classify``) equals ``labels``."""
        self.check_labels(labels, len(images))
        right = sum((self.classify(images[i : i + batch_size]).argmax(1).cpu() == labels[i : i + batch_size].cpu())
                    .sum().item() for i in range(0, len(images), batch_size))
        return right / max(len(images), 1)

    def loss(self, x, y, class_weight: float):
        """The training objective, a scalar: mean(-ELBO) + class_weight * cross-entropy of the sampled z_y."""
        x, xs = self._images(x)
        y = self.check_labels(y, len(x)).to(self.device)
        elbo, z = self._elbo(x, xs, None, 1, None)
        return -elbo.mean() + class_weight * F.cross_entropy(self.head(z[:, : self.label_dims]), y)

    @torch.no_grad()
    def nuisance_latents(self, x, n: int, generator=None, temperature: float = 1.0):
        """[N, n, latent_dim]: z_y the encoder mean of each image (the same in all n), z_n ~ N(0, T^2 I)."""
        n, temperature = _check_count(n, "n"), _check_temperature(temperature)
        mean = self.encode(x)[0]
        z_n = temperature * self._noise((len(mean), n, self.latent_dim - self.label_dims), generator)
        return torch.cat([mean[:, None, : self.label_dims].expand(-1, n, -1), z_n], dim=2)

    @torch.no_grad()
    def nuisance_samples(self, x, n: int, generator=None, temperature: float = 1.0) -> torch.Tensor:
        """uint8 [N, n, C, H, W]: per image, n decodings (sampled per sub-pixel) of ``nuisance_latents``."""
        z = self.nuisance_latents(x, n, generator, temperature)
        return self._draw_images(z.flatten(0, 1), None, generator).view(*z.shape[:2], *self.image_shape)


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------
def _loop(config, checkpoint_every, progress) -> TrainConfig:
    return TrainConfig(steps=config.steps, batch_size=config.batch_size, lr=config.lr, eval_every=config.eval_every,
                       patience=config.patience, checkpoint_every=checkpoint_every, seed=config.seed,
                       progress=progress)


def train_vae(model: ConditionalVAE, images, contexts, workdir, config: VAEConfig, *, valid=None, device=None,
              progress=True, checkpoint_every=500, desc="vae") -> TrainResult:
    """Maximise the ELBO of ``model`` on (image, context) pairs (``contexts`` None for an unconditional model);
    resumable through ``inversion.training.fit``.

    Before step 0 of a fresh run, ``init_from_data`` sets the context statistics and the output bias from the
    whole training set. With ``valid=(images, contexts)`` the mean validation ELBO (one z per image, drawn
    with a generator seeded by ``config.seed`` so evaluations compare like with like) is the score every
    ``config.eval_every`` updates, with early stopping and the best weights restored (workdir/best.pt);
    otherwise the model keeps the last weights (workdir/state.pt). workdir/config.json records the run without
    ``config.steps``, so a later call with more steps continues it; ``load_vae(workdir)`` rebuilds the model.
    """
    check_pixels(images, model.image_shape, "training images")
    model.check_context(contexts, len(images))
    if valid is not None:
        check_pixels(valid[0], model.image_shape, "valid images")
        model.check_context(valid[1], len(valid[0]))
    workdir = Path(workdir)
    write_run_config(workdir, dict(model=model.config, lr=config.lr, batch_size=config.batch_size, seed=config.seed))
    if not (workdir / "state.pt").exists():  # a resumed run gets all of this from its checkpoint
        model.init_from_data(images, contexts)
    conditional = contexts is not None

    def loss_fn(m, batch):
        return -m.elbo(batch[0], batch[1] if conditional else None, batch_size=len(batch[0])).mean()

    def eval_fn(m):
        g = torch.Generator().manual_seed(config.seed)
        nats = m.elbo(valid[0], valid[1], generator=g).mean().item()
        return {"score": nats, "valid_elbo": nats}

    data = [images, contexts] if conditional else [images]
    return fit(model, loss_fn, data, _loop(config, checkpoint_every, progress), workdir,
               eval_fn=eval_fn if valid is not None else None, device=device, desc=desc, restore_best=True)


def train_supervised_vae(model: SupervisedVAE, images, labels, workdir, config: SupervisedVAEConfig, *, valid=None,
                         device=None, progress=True, checkpoint_every=500, desc="supervised vae") -> TrainResult:
    """Minimise -ELBO + ``config.class_weight`` * cross-entropy on (image, label) pairs; resumable.

    As ``train_vae``; with ``valid=(images, labels)`` the score is the validation ELBO (seeded draws) minus
    ``class_weight`` times the cross-entropy of ``classify`` (the encoder mean), i.e. the objective with the
    classifier as it is used; the validation ELBO and accuracy are logged beside it.
    """
    check_pixels(images, model.image_shape, "training images")
    model.check_labels(labels, len(images))
    if valid is not None:
        check_pixels(valid[0], model.image_shape, "valid images")
        model.check_labels(valid[1], len(valid[0]))
    workdir = Path(workdir)
    write_run_config(workdir, dict(model=model.config, class_weight=config.class_weight, lr=config.lr,
                                   batch_size=config.batch_size, seed=config.seed))
    if not (workdir / "state.pt").exists():
        model.init_from_data(images)

    def loss_fn(m, batch):
        return m.loss(batch[0], batch[1], config.class_weight)

    def eval_fn(m):
        nats = m.elbo(valid[0], generator=torch.Generator().manual_seed(config.seed)).mean().item()
        ce = sum(F.cross_entropy(m.classify(valid[0][i : i + 500]), valid[1][i : i + 500].to(m.device),
                                 reduction="sum").item() for i in range(0, len(valid[0]), 500)) / len(valid[0])
        return {"score": nats - config.class_weight * ce, "valid_elbo": nats, "valid_accuracy": m.accuracy(*valid)}

    return fit(model, loss_fn, [images, labels], _loop(config, checkpoint_every, progress), workdir,
               eval_fn=eval_fn if valid is not None else None, device=device, desc=desc, restore_best=True)


def load_vae(workdir: str | os.PathLike, weights: str = "best.pt", device=None) -> ConditionalVAE:
    """Rebuild a model trained by ``train_vae`` and load ``workdir/weights`` (best.pt, or state.pt)."""
    return load_trained(ConditionalVAE, workdir, weights, device)


def load_supervised_vae(workdir: str | os.PathLike, weights: str = "best.pt", device=None) -> SupervisedVAE:
    """Rebuild a model trained by ``train_supervised_vae`` and load ``workdir/weights``."""
    return load_trained(SupervisedVAE, workdir, weights, device)
