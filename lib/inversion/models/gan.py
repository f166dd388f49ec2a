"""A feedforward GAN inverter x = G(h, z): the third way of looking at what a layer h keeps, beside the
PixelCNN++ inversion model and the MSE decoder.

After Teterwak, Zhang, Krishnan & Mozer (2021), "Understanding invariance via feedforward inversion of
discriminatively trained classifiers" (ICML): one network maps a frozen classifier's layer straight to an
image, and its reconstructions show what that layer kept. No code of theirs is public and only their
abstract is on file here (``shared/paper/related-systems.md``), so this is a model *in its spirit*, not a
reimplementation: a conditional generator trained with a pixel loss, a loss in the classifier's own
feature space and a conditional adversarial loss, each ingredient taken from the papers cited below. Which
of them, with which settings, the 2021 paper used is unverified here.

**This inverter has no likelihood.** For one h, G's samples are the image of z ~ N(0, I) under a smooth map,
a set of dimension at most ``z_dim`` inside a pixel space of C*H*W dimensions. The distribution p(x | h)
it defines therefore has no density with respect to pixel space (nor any useful probability on 8-bit
images), so it gives no NCE and no bound on I(x; h). It is compared with the other inverters only by what
its samples do: Table 1's representation-space L1 (IM-S: the mean per-unit L1 between the classifier's
layer applied to a sample and h itself), classifier agreement (is the sample classified as its source
image is?) and sample diversity (the pixel L1 between two samples of one h). ``evaluate_inversion``
measures exactly these, as the samples stage measures the PixelCNN++'s.

The generator (``Generator``):
- h is standardised first (per feature for vectors, per channel for maps, statistics of the training
  contexts in buffers, as the MSE decoder does), because layer scales differ by orders of magnitude.
- A conditioning net embeds it: two 1x1 layers (a linear map) for a vector h (FC3, LOGITS), two 3x3
  convolutions at h's own resolution for a map (CONV1, CONV2), so a map keeps *where* its features are.
- The trunk starts from a map a quarter of the image size (a linear layer of [embedding, z] for a vector,
  a 3x3 convolution of [embedding resized, z] for a map) and doubles it twice with residual up-sampling
  blocks (nearest up-sampling then 3x3 convolutions), as in BigGAN (Brock, Donahue & Simonyan 2019).
- Every normalisation is conditional, BigGAN style: the features are normalised without learned affine,
  then scaled by (1 + gamma) and shifted by beta, both a 1x1 projection of [embedding, z]. For a map h the
  projection is computed at h's resolution and resized bilinearly to the block's, a spatially varying
  scale and shift (as in SPADE, Park et al. 2019), so a map's layout can steer every block. Conditioning
  every block rather than only the input is what lets h and z act at every scale.
- ``norm``: "group" (default), "batch" or "instance". GroupNorm makes G(h, z) a function of one (h, z)
  alone; BigGAN's BatchNorm makes a sample depend on its batch in training and on running statistics at
  sampling time, which is a poor property for a model whose samples are read one h at a time.
- A sigmoid puts the output in [0, 1], the classifier's own input range, so the classifier can be applied
  to G's output directly; ``sample`` maps it to uint8 0..255 (rounded). The output bias starts at the
  mean pixel, as in the MSE decoder, so the first updates do not saturate the sigmoid.

The losses, each with its weight in ``GANConfig`` (why each):
- pixel (L1 by default, or MSE) to the input image. On its own it is the MSE decoder's objective: it asks
  for the conditional median (mean) of x given h, so it drives G to ignore z and blur. It anchors early
  training and colours/positions; keep its weight small when sharp, diverse samples matter.
- feature: the L1 between the frozen classifier's layer applied to G(h, z) and h, divided by the mean |h|
  of the training contexts, so the loss is Table 1's IM-S up to one constant and any layer's scale is
  one. This is the loss that asks exactly for what an inverter should deliver, "an image the classifier
  maps to h", and leaves everything the layer is invariant to free. Features of other layers
  (``feature_layers``) can be matched too, against the real image's features there (Dosovitskiy & Brox
  2016, "Generating images with perceptual similarity metrics based on deep networks"), each divided by
  its own mean magnitude.
- adversarial: the hinge loss against a projection discriminator (Miyato & Koyama 2018, "cGANs with
  projection discriminator") conditioned on h, D(x, h) = psi(phi(x)) + <e(h), phi(x)> summed over
  positions. It is what makes samples sharp and lets z matter: the feature loss alone is satisfied by
  adversarial-looking patterns, the pixel loss alone by a blur. Every layer of D is spectrally normalised
  (Miyato, Kataoka, Koyama & Yoshida 2018, "Spectral normalization for GANs";
  ``torch.nn.utils.parametrizations.spectral_norm``, largest singular value of each weight reshaped to
  [out, in*k*k] kept near 1 by one power iteration per forward), which bounds D's Lipschitz constant and
  keeps its gradients useful to G. Adam with betas (0, 0.9) and a faster D (lr_d = 4 lr_g, the two
  time-scale update rule of Heusel et al. 2017) are the usual settings for hinge GANs with spectral norm.

Two optimisers do not fit ``inversion.training.fit``'s single-optimiser loop, so ``train_gan`` is its own
loop with the same guarantees: all state (both models, both optimisers, step, history) in
``workdir/state.pt``, written atomically and read back as data (``load_checkpoint``); batches a pure
function of (seed, step) (``batch_indices``); z and any other noise seeded from (seed, step), so a resumed
run equals an uninterrupted one bit for bit; tqdm progress; a non-finite loss raises FloatingPointError
naming the step. It runs in one process (not data-parallel under torchrun).

Images are uint8 [N, C, H, W] in 0..255 or float in [0, 1], as everywhere in this library.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm
from tqdm.auto import tqdm

from inversion import distributed
from inversion.atomic import atomic_torch_save
from inversion.models.classifier import check_images
from inversion.training import batch_indices, check_field, load_checkpoint, write_run_config

NORMS = ("group", "batch", "instance")
PIXEL_LOSSES = ("l1", "mse")


@dataclass(frozen=True)
class GANConfig:
    """Every setting of one GAN inverter. The source paper's settings are not on file; these are the usual
    ones for a small hinge GAN with spectral norm, untuned here.

    Architecture (``ARCHITECTURE``; ``architecture()`` gives them as ``Generator`` keywords): ``z_dim`` noise
    dimensions (the samples of one h lie on a set of at most this dimension); ``n_filters`` channels of G's
    last blocks (twice that at the start) and of D's first layers (D ends with 4x); ``embed_dim`` width of
    G's conditioning embedding; ``norm`` one of NORMS for G's conditional normalisations.
    Training (``train_gan``): ``pixel_loss`` "l1" or "mse" with ``pixel_weight``; ``feature_weight`` on the
    classifier-space L1 at the conditioning layer and at ``feature_layers`` (other layers' names, matched
    against the real image's features); ``adversarial_weight`` on G's hinge loss (0: no discriminator is
    trained); Adam at ``lr_g``/``lr_d`` with ``betas``; ``d_steps`` discriminator updates per generator
    update; ``steps`` generator updates of ``batch_size``; ``seed``: batches and z. Lists are accepted for
    the tuple fields and stored as tuples.
    """

    ARCHITECTURE: ClassVar[tuple[str, ...]] = ("z_dim", "n_filters", "embed_dim", "norm")

    z_dim: int = 32
    n_filters: int = 64
    embed_dim: int = 128
    norm: str = "group"
    pixel_loss: str = "l1"
    pixel_weight: float = 1.0
    feature_weight: float = 1.0
    adversarial_weight: float = 0.1
    feature_layers: tuple[str, ...] = ()
    steps: int = 20000
    batch_size: int = 64
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    betas: tuple[float, float] = (0.0, 0.9)
    d_steps: int = 1
    seed: int = 0

    def __post_init__(self):
        for name in ("feature_layers", "betas"):  # lists (from JSON or YAML) become tuples
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        check = lambda name, kind, ok, valid: check_field(self, name, kind, ok, valid)  # noqa: E731
        beta = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1  # noqa: E731
        check("z_dim", int, lambda v: v >= 1, "an integer >= 1")
        check("n_filters", int, lambda v: v >= 1, "an integer >= 1")
        check("embed_dim", int, lambda v: v >= 1, "an integer >= 1")
        check("norm", str, lambda v: v in NORMS, f"one of {NORMS}")
        check("pixel_loss", str, lambda v: v in PIXEL_LOSSES, f"one of {PIXEL_LOSSES}")
        for name in ("pixel_weight", "feature_weight", "adversarial_weight"):
            check(name, float, lambda v: v >= 0 and math.isfinite(v), "a finite number >= 0")
        if self.pixel_weight + self.feature_weight + self.adversarial_weight == 0:
            raise ValueError("GANConfig: pixel_weight, feature_weight and adversarial_weight are all 0; "
                             "at least one loss must count")
        check("feature_layers", tuple, lambda v: all(isinstance(s, str) for s in v) and len(set(v)) == len(v),
              "a tuple of distinct layer names")
        check("steps", int, lambda v: v >= 0, "an integer >= 0")
        check("batch_size", int, lambda v: v >= 1, "an integer >= 1")
        check("lr_g", float, lambda v: v > 0, "a number > 0")
        check("lr_d", float, lambda v: v > 0, "a number > 0")
        check("betas", tuple, lambda v: len(v) == 2 and all(map(beta, v)), "two numbers in [0, 1)")
        check("d_steps", int, lambda v: v >= 1, "an integer >= 1")
        check("seed", int, lambda v: True, "an integer")

    def architecture(self) -> dict:
        """The architecture fields as keywords of ``Generator``."""
        return {name: getattr(self, name) for name in self.ARCHITECTURE}

    def training(self) -> dict:
        """The training fields (everything but the architecture), as plain values."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in self.ARCHITECTURE}


def _shapes(context_shape, image_shape) -> tuple[tuple[int, ...], tuple[int, int, int]]:
    context_shape = tuple(int(s) for s in context_shape)
    image_shape = tuple(int(s) for s in image_shape)
    if len(context_shape) not in (1, 3) or min(context_shape) < 1:
        raise ValueError(f"context_shape must be (D,) for a vector or (C, H, W) for a feature map, got {context_shape}")
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ValueError(f"image_shape must be (C, H, W) with positive sizes, got {image_shape}")
    if min(image_shape[1:]) < 8:
        raise ValueError(f"images must be at least 8x8 (G starts from a quarter of their size), got {image_shape}")
    return context_shape, image_shape


class _Conditioned(nn.Module):
    """What G and D share: context standardisation buffers, the input checks, the conditioning embedding."""

    def _setup(self, context_shape, image_shape):
        self.context_shape, self.image_shape = context_shape, image_shape
        self.spatial = len(context_shape) == 3
        stats_shape = context_shape if not self.spatial else (context_shape[0], 1, 1)
        self.register_buffer("h_mean", torch.zeros(stats_shape))
        self.register_buffer("h_std", torch.ones(stats_shape))

    def _embedding(self, width: int, wrap=lambda m: m) -> nn.Sequential:
        """h -> [N, width, 1, 1] (vector h, two 1x1 layers) or [N, width, h, w] (map h, two 3x3 convolutions)."""
        k = 3 if self.spatial else 1
        return nn.Sequential(wrap(nn.Conv2d(self.context_shape[0], width, k, padding=k // 2)), nn.LeakyReLU(0.2),
                             wrap(nn.Conv2d(width, width, k, padding=k // 2)))

    def _check_contexts(self, h, what: str = "contexts") -> torch.Tensor:
        if not isinstance(h, torch.Tensor) or not h.is_floating_point():
            got = h.dtype if isinstance(h, torch.Tensor) else type(h).__name__
            raise ValueError(f"{what} must be a floating-point tensor, got {got}")
        if h.ndim != 1 + len(self.context_shape) or tuple(h.shape[1:]) != self.context_shape:
            shape = ", ".join(map(str, self.context_shape))
            raise ValueError(f"{what} must have shape [N, {shape}], got {list(h.shape)}")
        if not torch.isfinite(h).all():
            raise ValueError(f"{what} contain NaN or inf")
        return h

    def _standardised(self, h: torch.Tensor) -> torch.Tensor:
        """h standardised, as a [N, C, h, w] map (a vector becomes [N, D, 1, 1])."""
        h = (self._check_contexts(h).to(self.h_mean) - self.h_mean) / self.h_std
        return h if self.spatial else h[:, :, None, None]

    @torch.no_grad()
    def _set_context_stats(self, contexts: torch.Tensor) -> None:
        h = self._check_contexts(contexts).float()
        if len(h) == 0:
            raise ValueError("no contexts")
        dims = (0,) if h.ndim == 2 else (0, 2, 3)
        std, mean = torch.std_mean(h, dims) if len(h) > 1 else (torch.ones(h.shape[1]), h.mean(dims))
        std = torch.where(std > 1e-6, std, torch.ones_like(std))  # dead units (constant 0) stay unscaled
        self.h_mean.copy_(mean.reshape(self.h_mean.shape))
        self.h_std.copy_(std.reshape(self.h_std.shape))


class _CondNorm(nn.Module):
    """Normalisation without affine, then x * (1 + gamma) + beta with gamma, beta a 1x1 projection of the
    condition map [embedding, z] (computed at its own resolution, resized to x's)."""

    def __init__(self, channels: int, cond_channels: int, norm: str):
        super().__init__()
        if norm == "batch":
            self.norm = nn.BatchNorm2d(channels, affine=False)
        elif norm == "instance":
            self.norm = nn.InstanceNorm2d(channels, affine=False)
        else:
            self.norm = nn.GroupNorm(math.gcd(channels, 32), channels, affine=False)
        self.affine = nn.Conv2d(cond_channels, 2 * channels, 1)
        with torch.no_grad():  # start near the plain normalisation
            self.affine.weight.mul_(0.1)
            self.affine.bias.zero_()

    def forward(self, x, cond):
        gamma, beta = self.affine(cond).chunk(2, dim=1)
        if gamma.shape[2:] != (1, 1) and gamma.shape[2:] != x.shape[2:]:
            gamma = F.interpolate(gamma, size=x.shape[2:], mode="bilinear", align_corners=False)
            beta = F.interpolate(beta, size=x.shape[2:], mode="bilinear", align_corners=False)
        return self.norm(x) * (1 + gamma) + beta


class _UpBlock(nn.Module):
    """BigGAN's residual up-sampling block: (cond-norm, ReLU, 2x up, 3x3 conv, cond-norm, ReLU, 3x3 conv)
    plus a shortcut (2x up, 1x1 conv)."""

    def __init__(self, c_in: int, c_out: int, cond_channels: int, norm: str):
        super().__init__()
        self.norm1, self.norm2 = _CondNorm(c_in, cond_channels, norm), _CondNorm(c_out, cond_channels, norm)
        self.conv1, self.conv2 = nn.Conv2d(c_in, c_out, 3, padding=1), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x, cond):
        y = F.interpolate(F.relu(self.norm1(x, cond)), scale_factor=2, mode="nearest")
        y = self.conv2(F.relu(self.norm2(self.conv1(y), cond)))
        return y + self.skip(F.interpolate(x, scale_factor=2, mode="nearest"))


class Generator(_Conditioned):
    """x = G(h, z): images in [0, 1] from a classifier layer h and noise z ~ N(0, I) (module docstring)."""

    def __init__(self, context_shape: Sequence[int], image_shape: Sequence[int], z_dim: int = GANConfig.z_dim,
                 n_filters: int = GANConfig.n_filters, embed_dim: int = GANConfig.embed_dim,
                 norm: str = GANConfig.norm):
        super().__init__()
        context_shape, image_shape = _shapes(context_shape, image_shape)
        if min(z_dim, n_filters, embed_dim) < 1:
            raise ValueError(f"z_dim, n_filters and embed_dim must be positive, got {z_dim}, {n_filters}, {embed_dim}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.config = dict(context_shape=list(context_shape), image_shape=list(image_shape), z_dim=int(z_dim),
                           n_filters=int(n_filters), embed_dim=int(embed_dim), norm=norm)
        self._setup(context_shape, image_shape)
        self.z_dim = int(z_dim)
        C, H, W = image_shape
        nf, cond = n_filters, embed_dim + z_dim
        self.embed = self._embedding(embed_dim)
        # Two 2x up-samplings from a quarter of the image size; sizes not divisible by 4 overshoot and are
        # resized down at the end (as in the MSE decoder).
        self.start_size = (math.ceil(H / 4), math.ceil(W / 4))
        if self.spatial:
            self.start = nn.Conv2d(cond, 2 * nf, 3, padding=1)
        else:
            self.start = nn.Linear(cond, 2 * nf * self.start_size[0] * self.start_size[1])
        self.block1 = _UpBlock(2 * nf, nf, cond, norm)
        self.block2 = _UpBlock(nf, nf, cond, norm)
        self.norm_out = _CondNorm(nf, cond, norm)
        self.out = nn.Conv2d(nf, C, 3, padding=1)
        with torch.no_grad():  # small output layer; init_from_data sets its bias to the mean pixel
            self.out.weight.mul_(0.1)

    @classmethod
    def from_config(cls, context_shape: Sequence[int], image_shape: Sequence[int], config: GANConfig) -> "Generator":
        """The generator ``config`` describes, from contexts of ``context_shape`` to images of ``image_shape``."""
        return cls(context_shape, image_shape, **config.architecture())

    def _check_z(self, z, n: int) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or not z.is_floating_point():
            got = z.dtype if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"z must be a floating-point tensor, got {got}")
        if tuple(z.shape) != (n, self.z_dim):
            raise ValueError(f"z must have shape [{n}, {self.z_dim}] (one row per context), got {list(z.shape)}")
        if not torch.isfinite(z).all():
            raise ValueError("z contains NaN or inf")
        return z

    def forward(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], float [N, C, H, W]: one per row of h and of z [N, z_dim]."""
        e = self.embed(self._standardised(h))
        z = self._check_z(z, len(h)).to(e)[:, :, None, None]
        cond = torch.cat([e, z.expand(-1, -1, *e.shape[2:])], 1)  # [N, embed + z, 1 or h, 1 or w]
        if self.spatial:
            c0 = F.interpolate(cond, size=self.start_size, mode="bilinear", align_corners=False)
            y = self.start(c0)
        else:
            y = self.start(cond.flatten(1)).view(len(h), -1, *self.start_size)
        y = self.block2(self.block1(y, cond), cond)
        y = self.out(F.relu(self.norm_out(y, cond)))
        if tuple(y.shape[2:]) != self.image_shape[1:]:
            y = F.interpolate(y, size=self.image_shape[1:], mode="bilinear", align_corners=False)
        return torch.sigmoid(y)

    def draw_z(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n rows of z ~ N(0, I), drawn on the CPU (so a seed gives the same z on every device)."""
        return torch.randn(n, self.z_dim, generator=generator)

    @torch.no_grad()
    def sample(self, h: torch.Tensor, n_per_h: int = 1, *, z: torch.Tensor | None = None,
               generator: torch.Generator | None = None, batch_size: int = 500) -> torch.Tensor:
        """uint8 images [N * n_per_h, C, H, W] on h's device: row i * n_per_h + j is the j-th sample of h[i].

        z defaults to fresh N(0, I) noise from ``generator``; given, it is [N * n_per_h, z_dim]. Eval mode
        (BatchNorm's running statistics), restored afterwards."""
        self._check_contexts(h)
        if not isinstance(n_per_h, int) or isinstance(n_per_h, bool) or n_per_h < 1:
            raise ValueError(f"n_per_h must be an integer >= 1, got {n_per_h!r}")
        context = h.repeat_interleave(n_per_h, dim=0)
        z = self.draw_z(len(context), generator) if z is None else self._check_z(z, len(context))
        device, was_training = self.h_mean.device, self.training
        self.eval()
        try:
            chunks = [(self(context[i : i + batch_size].to(device), z[i : i + batch_size].to(device)) * 255)
                      .round().to(torch.uint8).to(h.device) for i in range(0, len(context), batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(chunks) if chunks else torch.empty(0, *self.image_shape, dtype=torch.uint8, device=h.device)

    @torch.no_grad()
    def init_from_data(self, contexts: torch.Tensor, images: torch.Tensor) -> None:
        """Context statistics for standardisation, and an output bias that puts the untrained generator's
        pixels at the mean pixel value per channel."""
        check_images(images[:0], self.image_shape)
        if len(contexts) != len(images) or len(images) == 0:
            raise ValueError(f"need equally many (> 0) contexts and images, got {len(contexts)} and {len(images)}")
        self._set_context_stats(contexts)
        mean_pixel = images.sum((0, 2, 3), dtype=torch.float64) / images[:, 0].numel()
        mean_pixel = (mean_pixel / 255 if images.dtype == torch.uint8 else mean_pixel).clamp(0.01, 0.99)
        self.out.bias.copy_(torch.logit(mean_pixel).to(self.out.bias))


class Discriminator(_Conditioned):
    """The projection discriminator D(x, h) = psi(sum phi(x)) + sum <e(h), phi(x)>, every layer spectrally
    normalised; one real-valued score per image (no sigmoid: the hinge loss reads it as is)."""

    def __init__(self, context_shape: Sequence[int], image_shape: Sequence[int],
                 n_filters: int = GANConfig.n_filters):
        super().__init__()
        context_shape, image_shape = _shapes(context_shape, image_shape)
        if n_filters < 1:
            raise ValueError(f"n_filters must be positive, got {n_filters}")
        self.config = dict(context_shape=list(context_shape), image_shape=list(image_shape), n_filters=int(n_filters))
        self._setup(context_shape, image_shape)
        nf, C = n_filters, image_shape[0]
        sn = spectral_norm
        # An SN-GAN "standard CNN" (Miyato et al. 2018): 3x3 convs, two 4x4 stride-2 down-samplings.
        self.phi = nn.Sequential(
            sn(nn.Conv2d(C, nf, 3, padding=1)), nn.LeakyReLU(0.1),
            sn(nn.Conv2d(nf, 2 * nf, 4, stride=2, padding=1)), nn.LeakyReLU(0.1),
            sn(nn.Conv2d(2 * nf, 2 * nf, 3, padding=1)), nn.LeakyReLU(0.1),
            sn(nn.Conv2d(2 * nf, 4 * nf, 4, stride=2, padding=1)), nn.LeakyReLU(0.1),
            sn(nn.Conv2d(4 * nf, 4 * nf, 3, padding=1)), nn.LeakyReLU(0.1),
        )
        self.psi = sn(nn.Linear(4 * nf, 1))
        self.embed = self._embedding(4 * nf, wrap=sn)

    @classmethod
    def from_config(cls, context_shape: Sequence[int], image_shape: Sequence[int],
                    config: GANConfig) -> "Discriminator":
        return cls(context_shape, image_shape, n_filters=config.n_filters)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Scores [N] for images x (uint8 or [0, 1]) conditioned on contexts h."""
        x = check_images(x, self.image_shape)
        if len(x) != len(h):
            raise ValueError(f"{len(h)} contexts but {len(x)} images")
        feats = self.phi(x.to(self.h_mean) * 2 - 1)  # [N, F, h', w']
        e = self.embed(self._standardised(h))  # [N, F, 1, 1] or [N, F, h, w]
        if e.shape[2:] != (1, 1):
            # A map h is projected position by position: where D sees a feature must agree with where h has it.
            e = F.interpolate(e, size=feats.shape[2:], mode="bilinear", align_corners=False)
        return self.psi(feats.sum((2, 3))).squeeze(1) + (e * feats).sum((1, 2, 3))

    def init_from_data(self, contexts: torch.Tensor) -> None:
        self._set_context_stats(contexts)


def spectral_norms(discriminator: Discriminator) -> dict[str, float]:
    """The largest singular value of each spectrally normalised weight as D uses it (reshaped to
    [out, in * k * k]); near 1 by construction. Reads the weights without running a power iteration."""
    out = {}
    was_training = discriminator.training
    discriminator.eval()  # in eval mode reading .weight does not update the power-iteration vectors
    try:
        with torch.no_grad():
            for name, module in discriminator.named_modules():
                if hasattr(module, "parametrizations") and "weight" in module.parametrizations:
                    w = module.weight.flatten(1)
                    out[name] = torch.linalg.matrix_norm(w.double(), ord=2).item()
    finally:
        discriminator.train(was_training)
    return out


@dataclass
class GANTrainResult:
    step: int  # generator updates taken in total
    history: list[dict]  # one row per generator update: {"step", "d_loss", "g_loss", "pixel", "feature", ...}
    seconds: float  # wall time of all sessions of this run, resumed ones included
    resumed_from: int = 0  # the step this session started at (0: a fresh run)


def _layer_names(classifier: nn.Module, image_shape, device) -> dict[str, tuple[int, ...]]:
    """The classifier's tapped layers in network order with their per-example shapes (one probe forward)."""
    with torch.no_grad():
        feats = classifier.features(torch.zeros(1, *image_shape, device=device))
    return {name: tuple(v.shape[1:]) for name, v in feats.items()}


def train_gan(
    generator: Generator,
    discriminator: Discriminator,
    classifier: nn.Module,
    layer: str,
    images: torch.Tensor,
    contexts: torch.Tensor,
    workdir: str | os.PathLike,
    config: GANConfig,
    *,
    device=None,
    progress: bool = True,
    checkpoint_every: int = 500,
    desc: str = "gan",
) -> GANTrainResult:
    """Train ``generator`` to invert ``classifier``'s ``layer``: ``contexts`` [N, *context_shape] are that
    layer's activations (eval mode) of ``images`` [N, *image_shape].

    ``classifier`` is any module with ``features(x, until=None) -> {layer: activations}`` in network order,
    taking images in [0, 1] (``inversion.models.classifier.Classifier``); it is kept frozen and in eval
    mode (its mode and ``requires_grad`` flags are restored at the end). Each generator update follows
    ``config.d_steps`` discriminator updates on batches ``step * d_steps + j`` of the seeded epoch order;
    the generator update reuses the last of them with fresh z. Resumable from ``workdir/state.pt``; a
    workdir holding a different run (other models, layer or training settings, ``steps`` apart) is refused.
    """
    if distributed.active() is not None:
        raise RuntimeError("train_gan runs in one process; it is not data-parallel under torchrun")
    generator._check_contexts(contexts)
    # uint8 needs its shape and dtype checked only; float images their range too, before anything is written.
    floating = isinstance(images, torch.Tensor) and images.is_floating_point()
    check_images(images if floating else images[:0], generator.image_shape, "training images")
    if len(contexts) != len(images) or len(images) == 0:
        raise ValueError(f"need equally many (> 0) contexts and images, got {len(contexts)} contexts "
                         f"and {len(images)} images")
    if discriminator.context_shape != generator.context_shape or discriminator.image_shape != generator.image_shape:
        raise ValueError(f"generator and discriminator disagree: contexts {generator.context_shape} vs "
                         f"{discriminator.context_shape}, images {generator.image_shape} vs "
                         f"{discriminator.image_shape}")
    device = torch.device(device) if device is not None else generator.h_mean.device
    generator.to(device)
    discriminator.to(device)
    classifier_state = (classifier.training, [p.requires_grad for p in classifier.parameters()])
    classifier.to(device).eval().requires_grad_(False)
    try:
        shapes = _layer_names(classifier, generator.image_shape, device)
        for name in (layer, *config.feature_layers):
            if name not in shapes:
                raise ValueError(f"unknown layer {name!r}; the classifier has {tuple(shapes)}")
        if shapes[layer] != generator.context_shape:
            raise ValueError(f"layer {layer!r} has shape {shapes[layer]} but the generator expects contexts of "
                             f"shape {generator.context_shape}")
        return _train(generator, discriminator, classifier, layer, images, contexts, Path(workdir), config, device,
                      progress, checkpoint_every, desc, tuple(shapes))
    finally:
        classifier.train(classifier_state[0])
        for p, flag in zip(classifier.parameters(), classifier_state[1]):
            p.requires_grad_(flag)


def _train(G, D, classifier, layer, images, contexts, workdir, config, device, progress, checkpoint_every, desc,
           order) -> GANTrainResult:
    run = config.training()
    del run["steps"]  # a run may be extended
    write_run_config(workdir, dict(generator=G.config, discriminator=D.config, layer=layer, **run))
    opt_g = torch.optim.Adam(G.parameters(), lr=config.lr_g, betas=config.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=config.lr_d, betas=config.betas)
    state_path = workdir / "state.pt"
    state = dict(step=0, history=[], seconds=0.0)
    if state_path.exists():
        saved = load_checkpoint(state_path, map_location=device)
        G.load_state_dict(saved["generator"])
        D.load_state_dict(saved["discriminator"])
        opt_g.load_state_dict(saved["optimizer_g"])
        opt_d.load_state_dict(saved["optimizer_d"])
        state = saved["progress"]
    else:
        G.init_from_data(contexts, images)
        D.init_from_data(contexts)

    # Each matched layer's loss is divided by its mean magnitude (the conditioning layer's over all
    # contexts, summed in chunks to spare a copy of them; another layer's over the first 1024 images), a pure
    # function of the data and the frozen classifier, so a resumed session computes the same numbers.
    extra = config.feature_layers
    chunk = 4096
    total = sum(contexts[i : i + chunk].abs().sum(dtype=torch.float64).item() for i in range(0, len(contexts), chunk))
    scales = {layer: total / contexts.numel()}
    if extra:
        with torch.no_grad():
            feats = classifier.features(images[:1024].to(device), until=max(extra, key=order.index))
        scales.update({name: feats[name].float().abs().mean().item() for name in extra})
    scales = {name: max(s, 1e-8) for name, s in scales.items()}
    deepest = max((layer, *extra), key=order.index)
    n, bs, adversarial = len(images), config.batch_size, config.adversarial_weight > 0

    def batch(k):
        idx = batch_indices(n, bs, k, config.seed)
        return check_images(images[idx].to(device), G.image_shape), contexts[idx].to(device).float()

    def finite(name, value, step):
        if not torch.isfinite(value):
            raise FloatingPointError(f"non-finite {name} loss {value.item()} at step {step}; "
                                     f"last good state is in {state_path}")

    def save_state():
        atomic_torch_save(dict(generator=G.state_dict(), discriminator=D.state_dict(), optimizer_g=opt_g.state_dict(),
                               optimizer_d=opt_d.state_dict(), progress=state, config=dict(config.training())),
                          state_path)

    resumed_from = state["step"]
    t0 = time.perf_counter() - state["seconds"]
    bar = tqdm(total=config.steps, initial=state["step"], desc=desc, disable=not progress, leave=False)
    G.train()
    while state["step"] < config.steps:
        step = state["step"]
        torch.manual_seed(config.seed * 7919 + step)  # any stochastic layer (dropout) depends on (seed, step) only
        noise = torch.Generator().manual_seed(config.seed * 7919 + step)
        row = dict(step=step + 1, d_loss=math.nan, d_real=math.nan, d_fake=math.nan)
        for j in range(config.d_steps):
            x, h = batch(step * config.d_steps + j)
            z = G.draw_z(len(h), noise).to(device)
            if not adversarial:
                continue
            with torch.no_grad():
                fake = G(h, z)
            D.train()  # one forward of real and fake together: one power iteration per D update
            scores = D(torch.cat([x, fake]), torch.cat([h, h]))
            real_s, fake_s = scores[: len(x)], scores[len(x):]
            d_loss = F.relu(1 - real_s).mean() + F.relu(1 + fake_s).mean()
            finite("discriminator", d_loss, step)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            row.update(d_loss=d_loss.item(), d_real=real_s.mean().item(), d_fake=fake_s.mean().item())

        z = G.draw_z(len(h), noise).to(device)
        fake = G(h, z)
        terms = {}
        terms["pixel"] = (F.l1_loss if config.pixel_loss == "l1" else F.mse_loss)(fake, x)
        # A loss of weight 0 is still logged, computed on a detached image so it costs no backward pass.
        source = fake if config.feature_weight > 0 else fake.detach()
        with torch.set_grad_enabled(config.feature_weight > 0):
            feats = classifier.features(source, until=deepest)
            feature = (feats[layer] - h).abs().mean() / scales[layer]
            if extra:
                with torch.no_grad():
                    targets = classifier.features(x, until=deepest)
                for name in extra:
                    feature = feature + (feats[name] - targets[name]).abs().mean() / scales[name]
        terms["feature"] = feature
        if adversarial:
            D.eval().requires_grad_(False)  # no power iteration and no D gradients in G's update
            terms["adversarial"] = -D(fake, h).mean()
            D.requires_grad_(True)
        weights = dict(pixel=config.pixel_weight, feature=config.feature_weight, adversarial=config.adversarial_weight)
        g_loss = sum(weights[k] * v for k, v in terms.items() if weights[k] > 0)
        finite("generator", g_loss, step)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        row.update(g_loss=g_loss.item(), adversarial=math.nan)
        row.update({k: v.item() for k, v in terms.items()})
        state["history"].append(row)
        state["step"] = step + 1
        bar.update(1)
        bar.set_postfix(g=f"{row['g_loss']:.4g}", d=f"{row['d_loss']:.4g}")
        if state["step"] % checkpoint_every == 0 or state["step"] == config.steps:
            state["seconds"] = time.perf_counter() - t0
            save_state()
    bar.close()
    state["seconds"] = time.perf_counter() - t0
    save_state()
    return GANTrainResult(step=state["step"], history=state["history"], seconds=state["seconds"],
                          resumed_from=resumed_from)


def load_generator(workdir: str | os.PathLike, device=None) -> Generator:
    """Rebuild the generator trained by ``train_gan`` in ``workdir`` (config.json + state.pt), in eval mode."""
    workdir = Path(workdir)
    if not (workdir / "config.json").exists() or not (workdir / "state.pt").exists():
        raise FileNotFoundError(f"no config.json and state.pt in {workdir}; train with train_gan first")
    G = Generator(**json.loads((workdir / "config.json").read_text())["generator"])
    if device is not None:
        G.to(device)
    G.load_state_dict(load_checkpoint(workdir / "state.pt", map_location=G.h_mean.device)["generator"])
    return G.eval()


@torch.no_grad()
def evaluate_inversion(generator: Generator, classifier: nn.Module, layer: str, images: torch.Tensor,
                       contexts: torch.Tensor, n_per_h: int = 2, seed: int = 0, batch_size: int = 500) -> dict:
    """What a likelihood-free inverter can be compared by, measured as the samples stage measures the
    PixelCNN++'s (on uint8 samples, the classifier in eval mode):

    - ``im_s``: Table 1's IM-S, the mean per-unit L1 between ``layer`` of one sample and h;
    - ``im_nn``: the same for the closest of the ``n_per_h`` samples;
    - ``class_agreement``: the fraction of samples given the class the classifier gives their source image;
    - ``diversity``: the mean pixel L1 (in [0, 1] units) between two samples of one h (needs n_per_h >= 2;
      0 for a generator that ignores z);
    - ``pixel_l1``: the mean pixel L1 between a sample and its source image.
    """
    generator._check_contexts(contexts)
    check_images(images[:0], generator.image_shape)
    if len(images) != len(contexts) or len(images) == 0:
        raise ValueError(f"need equally many (> 0) contexts and images, got {len(contexts)} and {len(images)}")
    samples = generator.sample(contexts, n_per_h, generator=torch.Generator().manual_seed(seed), batch_size=batch_size)
    was_training = classifier.training
    classifier.eval()
    try:
        device = next(classifier.parameters()).device

        def taps(x):
            out = [classifier.features(x[i : i + batch_size].to(device)) for i in range(0, len(x), batch_size)]
            return (torch.cat([o[layer] for o in out]).float().cpu(),
                    torch.cat([o["logits"] for o in out]).argmax(1).cpu())

        s_layer, s_class = taps(samples)
        _, x_class = taps(images)
    finally:
        classifier.train(was_training)
    n, k = len(images), n_per_h
    dist = (s_layer - contexts.float().cpu().repeat_interleave(k, 0)).abs().flatten(1).mean(1).view(n, k)
    xs = samples.cpu().float().view(n, k, -1) / 255
    x0 = (images.cpu().float() / 255 if images.dtype == torch.uint8 else images.cpu().float()).view(n, 1, -1)
    diversity = math.nan
    if k >= 2:
        pairs = [(xs[:, a] - xs[:, b]).abs().mean(1) for a in range(k) for b in range(a + 1, k)]
        diversity = torch.stack(pairs).mean().item()
    return dict(im_s=dist[:, 0].mean().item(), im_nn=dist.min(1).values.mean().item(),
                class_agreement=(s_class.view(n, k) == x_class[:, None]).float().mean().item(),
                diversity=diversity, pixel_l1=(xs - x0).abs().mean().item())
