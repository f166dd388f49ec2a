"""Conditional PixelCNN++ (Salimans et al. 2017), the inversion model p(x | h) of Nash et al. (2019).

Read top to bottom: the configuration (every default written once), weight-normalised layers, shifted
convolutions, the gated resnet block, the two-stream network, the two pixel likelihoods, the draw of one
pixel from the network output, and training. Sampling loops over the pixels of an image (naive, fixed
point, cached) live in ``inversion.models.sampling``, which builds on this module and never the reverse.

Conventions
- Images are integer tensors [N, C, H, W] with values 0..255 (uint8). Inside, values are scaled to
  [-1, 1]. Sub-pixels are ordered in raster order over pixels, and R -> G -> B inside a pixel.
- ``log_prob`` returns nats. With ``reduce=False`` it returns the log-probability of every sub-pixel
  given all the sub-pixels before it, so the sum over [C, H, W] is the image's log-likelihood.
- The context h (a classifier layer) is either a vector (context_shape=(D,)) or a spatial map
  (context_shape=(C', H', W')). It biases every gated resnet of both streams: a vector through a
  linear projection, a map resized to each resolution (bilinear) and projected by a 1x1 conv
  (Appendix A of the paper). The projection is added before the gate, so h moves value and gate.
- The network is described once, by ``PixelCNNpp.walk``, as a sequence of a few operations (shifted
  convolutions and their sums, gated resnets, upsampling, the output layer). ``forward`` runs the walk on
  tensors (``EagerOps``); the cached sampler runs the same walk with operations that build a graph.

Choices beyond the original, each documented where it is made:
- A 256-way softmax likelihood for images with several channels needs an intra-pixel dependence the
  network cannot supply (its output at a pixel sees no sub-pixel of that pixel); we add, for each
  earlier channel j < c, a learned table of logit offsets indexed by x_j (zero at init). The paper only
  uses the softmax for grey MNIST, where no such term exists.
- The logistic-mixture log-probabilities are computed as log(sigmoid(a) - sigmoid(b)) =
  log sigmoid(a) + log sigmoid(-b) + log(1 - exp(b - a)), stable at every bin mass, without the
  original's density-times-bin-width fallback.
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

LIKELIHOODS = ("softmax", "logistic_mixture")


# --------------------------------------------------------------------------------------------------
# Configuration: what an inversion model is and how it is trained (Appendix A)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PixelCNNConfig:
    """Every setting of one inversion model, with the paper's values as defaults (Appendix A).

    The field names and defaults are also the keys of the inversion stage's cache entries, so they are
    written here once: ``PixelCNNpp``'s keyword defaults and ``train_pixelcnn`` read them from this class.

    Architecture (``ARCHITECTURE``; ``architecture()`` gives them as PixelCNNpp keywords):
        n_filters: channels of every stream (paper: 64 for MNIST, 196 for SVHN/CIFAR).
        n_resnet: gated resnets per block (paper: 3; the original PixelCNN++ used 5).
        n_resolutions: resolutions in each pass (the original: 3).
        likelihood: "softmax" (256-way per sub-pixel; the paper's choice for MNIST) or
            "logistic_mixture" (discretised mixture of logistics; the paper's choice for SVHN/CIFAR).
        n_mixtures: mixture components (paper: 10).
        dropout: rate inside every gated resnet (paper: 0.5; 0.1 for CONV1 of SVHN/CIFAR).
        context_dropout: rate on the projected context (paper: 0.2 for CIFAR-FC3, else 0).
    Training (``train_pixelcnn``):
        steps: Adam updates (paper: up to 250k). batch_size: images per update (paper: 32).
        lr, lr_decay: Adam's learning rate 1e-3 and its multiplicative decay 0.9999 per update (the paper
            does not say per what; read here as per update).
        eval_every, patience: validation every so many updates and early stopping after ``patience``
            evaluations without improvement (0: neither).
        bf16: autocast the network to bfloat16 (the likelihood stays float32). seed: batch order, dropout.
    """

    ARCHITECTURE: ClassVar[tuple[str, ...]] = ("n_filters", "n_resnet", "n_resolutions", "likelihood", "n_mixtures",
                                               "dropout", "context_dropout")

    n_filters: int = 64
    n_resnet: int = 3
    n_resolutions: int = 3
    likelihood: str = "softmax"
    n_mixtures: int = 10
    dropout: float = 0.5
    context_dropout: float = 0.0
    steps: int = 250000
    batch_size: int = 32
    lr: float = 1e-3
    lr_decay: float = 0.9999
    eval_every: int = 0
    patience: int = 0
    bf16: bool = False
    seed: int = 0

    def __post_init__(self):
        check = lambda name, kind, ok, valid: check_field(self, name, kind, ok, valid)  # noqa: E731
        for name in ("n_filters", "n_resnet", "n_resolutions", "n_mixtures"):
            check(name, int, lambda v: v >= 1, "an integer >= 1")
        check("likelihood", str, lambda v: v in LIKELIHOODS, f"one of {LIKELIHOODS}")
        for name in ("dropout", "context_dropout"):
            check(name, float, lambda v: 0 <= v < 1, "a rate in [0, 1)")
        check("steps", int, lambda v: v >= 0, "an integer >= 0")
        check("batch_size", int, lambda v: v >= 1, "an integer >= 1")
        check("lr", float, lambda v: v > 0, "a number > 0")
        check("lr_decay", float, lambda v: 0 < v <= 1, "a number in (0, 1]")
        check("eval_every", int, lambda v: v >= 0, "an integer >= 0 (0: never)")
        check("patience", int, lambda v: v >= 0, "an integer >= 0 (0: never stop early)")
        check("bf16", bool, lambda v: True, "True or False")
        check("seed", int, lambda v: True, "an integer")

    def architecture(self) -> dict:
        """The architecture fields as keywords of ``PixelCNNpp``."""
        return {name: getattr(self, name) for name in self.ARCHITECTURE}


# --------------------------------------------------------------------------------------------------
# Weight normalisation with data-dependent initialisation (Salimans & Kingma 2016)
# --------------------------------------------------------------------------------------------------
class _WeightNormed(nn.Module):
    """w = g * v / ||v||, norms taken per output unit. Fresh layers are usable as they are (g = 1 gives
    unit-norm rows, i.e. variance-preserving for unit-variance inputs); ``data_init`` mode instead sets
    g and b so that this layer's outputs on a batch have zero mean and std ``init_scale`` per unit."""

    out_dim: int  # which axis of v indexes output units

    def _setup(self, v_shape, n_out, init_scale):
        self.v = nn.Parameter(torch.randn(v_shape) * 0.05)
        self.g = nn.Parameter(torch.full((n_out,), float(init_scale)))
        self.b = nn.Parameter(torch.zeros(n_out))
        self.init_scale = init_scale
        self.initializing = False

    def weight(self):
        dims = [d for d in range(self.v.dim()) if d != self.out_dim]
        shape = [1] * self.v.dim()
        shape[self.out_dim] = -1
        return self.v * (self.g / torch.linalg.vector_norm(self.v, dim=dims)).view(shape)

    def forward(self, x):
        if not self.initializing:
            return self._apply_weight(x, self.weight(), self.b)
        with torch.no_grad():
            self.g.fill_(1.0)
            self.b.zero_()
            out = self._apply_weight(x, self.weight(), self.b)
            dims = [d for d in range(out.dim()) if d != 1]
            mean, std = out.mean(dims), out.std(dims, unbiased=False)
            scale = self.init_scale / (std + 1e-8)
            self.g.copy_(scale)
            self.b.copy_(-mean * scale)
        # The output is recomputed with the new g and b (the original returned the stale one).
        return self._apply_weight(x, self.weight(), self.b)


class WNConv2d(_WeightNormed):
    out_dim = 0

    def __init__(self, c_in, c_out, kernel=(1, 1), stride=1, init_scale=1.0):
        super().__init__()
        self.stride = stride
        self._setup((c_out, c_in, *kernel), c_out, init_scale)

    def _apply_weight(self, x, w, b):
        return F.conv2d(x, w, b, stride=self.stride)


class WNConvTranspose2d(_WeightNormed):
    out_dim = 1

    def __init__(self, c_in, c_out, kernel, stride=2, output_padding=1, init_scale=1.0):
        super().__init__()
        self.stride, self.output_padding = stride, output_padding
        self._setup((c_in, c_out, *kernel), c_out, init_scale)

    def _apply_weight(self, x, w, b):
        return F.conv_transpose2d(x, w, b, stride=self.stride, output_padding=self.output_padding)


class WNLinear(_WeightNormed):
    out_dim = 0

    def __init__(self, d_in, d_out, init_scale=1.0):
        super().__init__()
        self._setup((d_out, d_in), d_out, init_scale)

    def _apply_weight(self, x, w, b):
        return F.linear(x, w, b)


# --------------------------------------------------------------------------------------------------
# Shifted convolutions: the only places where causality is decided
# --------------------------------------------------------------------------------------------------
class DownShiftedConv(nn.Module):
    """Output (i, j) sees input rows i-kh+1..i and columns j-(kw-1)/2..j+(kw-1)/2: never a row below."""

    def __init__(self, c_in, c_out, kernel=(2, 3), stride=1, init_scale=1.0):
        super().__init__()
        kh, kw = kernel
        self.pad = ((kw - 1) // 2, (kw - 1) // 2, kh - 1, 0)  # left, right, top, bottom
        self.conv = WNConv2d(c_in, c_out, kernel, stride, init_scale)

    def forward(self, x):
        return self.conv(F.pad(x, self.pad))


class DownRightShiftedConv(nn.Module):
    """Output (i, j) sees input rows i-kh+1..i and columns j-kw+1..j: never below, never to the right."""

    def __init__(self, c_in, c_out, kernel=(2, 2), stride=1, init_scale=1.0):
        super().__init__()
        kh, kw = kernel
        self.pad = (kw - 1, 0, kh - 1, 0)
        self.conv = WNConv2d(c_in, c_out, kernel, stride, init_scale)

    def forward(self, x):
        return self.conv(F.pad(x, self.pad))


class DownShiftedDeconv(nn.Module):
    """Stride-2 upsampling; output row r sees input row floor(r/2) only (kernel height 2, cropped)."""

    def __init__(self, c_in, c_out, kernel=(2, 3)):
        super().__init__()
        self.kw = kernel[1]
        self.deconv = WNConvTranspose2d(c_in, c_out, kernel)

    def forward(self, x, size):
        out = self.deconv(x)  # [.., 2H + 1, 2W + kw - 1]
        left = (self.kw - 1) // 2
        return out[:, :, : size[0], left : left + size[1]]


class DownRightShiftedDeconv(nn.Module):
    """Stride-2 upsampling; output (r, c) sees input (floor(r/2), floor(c/2)) only."""

    def __init__(self, c_in, c_out, kernel=(2, 2)):
        super().__init__()
        self.deconv = WNConvTranspose2d(c_in, c_out, kernel)

    def forward(self, x, size):
        return self.deconv(x)[:, :, : size[0], : size[1]]


def down_shift(x):
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def right_shift(x):
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


class Dropout(nn.Module):
    """Dropout as ``nn.Dropout`` defines it, with its keep-mask drawn as ``uniform >= p`` in float32.

    Each unit is kept with probability 1 - p (up to the 2^-24 grid of float32 uniforms) and scaled by
    1 / (1 - p), as in ``nn.Dropout``; only the random stream differs. Why: torch's CPU ``bernoulli_`` is
    slow, and with the paper's dropout 0.5 the masks were 18 % of a CPU training step (issue 14's profile).
    Drawn as a float32 uniform and compared, forward and backward of a dropout cost 2.2-2.7x less on 2
    cores (``bench/train_step_cpu.py``). The uniform is float32 even under bf16 autocast: bf16 uniforms lie
    on a 2^-8 grid and would shift p (0.2 would become 0.203). The scale multiplies after the mask, in the
    input's precision with a float32 scalar, as ``nn.Dropout`` does. Bits/dim at equal steps moved by at
    most 0.004 against 0.013 between two seeds (same bench). Stage versions were not bumped: a model trained
    with dropout > 0 before this change is the same recipe with another random stream, and models without
    dropout (the quick set's) are unchanged to the bit.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout rate must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape, device=x.device, dtype=torch.float32) >= self.p
        return (x * keep).mul_(1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def concat_elu(x):
    """ELU of x and of -x side by side: keeps the information a plain ELU would squash."""
    return F.elu(torch.cat([x, -x], dim=1))


# --------------------------------------------------------------------------------------------------
# Gated resnet block, conditioned on h
# --------------------------------------------------------------------------------------------------
class GatedResnet(nn.Module):
    def __init__(self, n_filters, conv, skip_channels=0, context_shape=None, dropout=0.5, context_dropout=0.0):
        super().__init__()
        self.conv1 = conv(2 * n_filters, n_filters)
        self.skip = WNConv2d(2 * skip_channels, n_filters) if skip_channels else None
        self.dropout = Dropout(dropout)
        self.conv2 = conv(2 * n_filters, 2 * n_filters, init_scale=0.1)
        self.context = None
        if context_shape is not None:
            # A vector h is a bias per channel; a map is a bias per channel and position.
            d = context_shape[0]
            self.context = WNLinear(d, 2 * n_filters) if len(context_shape) == 1 else WNConv2d(d, 2 * n_filters)
        self.context_dropout = Dropout(context_dropout)

    def forward(self, x, skip=None, h=None):
        c = self.conv1(concat_elu(x))
        if self.skip is not None:
            c = c + self.skip(concat_elu(skip))
        c = self.conv2(self.dropout(concat_elu(c)))
        if self.context is not None:
            bias = self.context(h)
            if bias.dim() == 2:
                bias = bias[:, :, None, None]
            c = c + self.context_dropout(bias)
        a, b = c.chunk(2, dim=1)
        return x + a * torch.sigmoid(b)


def _down_conv(c_in, c_out, init_scale=1.0):
    return DownShiftedConv(c_in, c_out, (2, 3), init_scale=init_scale)


def _down_right_conv(c_in, c_out, init_scale=1.0):
    return DownRightShiftedConv(c_in, c_out, (2, 2), init_scale=init_scale)


# --------------------------------------------------------------------------------------------------
# The operations the network is written in, on tensors
# --------------------------------------------------------------------------------------------------
class EagerOps:
    """The operations of ``PixelCNNpp.walk`` computed on tensors: what ``forward`` runs.

    Each method is the definition of its operation; ``inversion.models.sampling.GraphOps`` implements the
    same eight to compile the network for incremental sampling. A new kind of layer means a new operation
    here and there, and nowhere else."""

    def input(self, x):
        """The image [N, C, H, W] (scaled) with a channel of ones, so that zero padding differs from black."""
        return torch.cat([x, torch.ones_like(x[:, :1])], dim=1)

    def size(self, x):
        return tuple(x.shape[2:])

    def context_pyramid(self, h, sizes):
        """The context as each resolution needs it: a vector as is, a map resized (bilinear) per size."""
        if h is None:
            return [None] * len(sizes)
        if h.dim() == 2:
            return [h] * len(sizes)
        return [F.interpolate(h, size=s, mode="bilinear", align_corners=False) for s in sizes]

    def shifted_sum(self, x, parts):
        """sum over (module, down, right) in ``parts`` of module(x) shifted down or right by one."""
        total = None
        for module, down, right in parts:
            y = _SHIFTS[down, right](module(x))
            total = y if total is None else total + y
        return total

    def conv(self, x, module):
        """A DownShiftedConv, DownRightShiftedConv or 1x1 WNConv2d."""
        return module(x)

    def gated_resnet(self, block, x, skips, h):
        """A GatedResnet on x, with the concatenation of ``skips`` (if any) as its skip input."""
        skip = None if not skips else skips[0] if len(skips) == 1 else torch.cat(list(skips), dim=1)
        return block(x, skip, h=h)

    def upsample(self, x, module, size):
        """A DownShiftedDeconv or DownRightShiftedDeconv, cropped to ``size``."""
        return module(x, size)

    def output(self, x, module):
        """The output layer: a 1x1 WNConv2d of elu(x)."""
        return module(F.elu(x))


EAGER = EagerOps()
_SHIFTS = {(1, 0): down_shift, (0, 1): right_shift}


# --------------------------------------------------------------------------------------------------
# The network, described once as a walk over a few operations
# --------------------------------------------------------------------------------------------------
class PixelCNNpp(nn.Module):
    """Conditional PixelCNN++ (the architecture fields are described in ``PixelCNNConfig``).

    Args:
        image_shape: (C, H, W).
        context_shape: None (unconditional), (D,) for a vector h, or (C', H', W') for a spatial h.
        n_filters, n_resnet, likelihood, n_mixtures, dropout, context_dropout, n_resolutions: see
            PixelCNNConfig, whose defaults these are. ``model.config`` holds every argument, so that
            ``PixelCNNpp(**model.config)`` rebuilds the model (saved model.json files are read that way).
    """

    def __init__(self, image_shape, context_shape=None, n_filters: int = PixelCNNConfig.n_filters,
                 n_resnet: int = PixelCNNConfig.n_resnet, likelihood: str = PixelCNNConfig.likelihood,
                 n_mixtures: int = PixelCNNConfig.n_mixtures, dropout: float = PixelCNNConfig.dropout,
                 context_dropout: float = PixelCNNConfig.context_dropout,
                 n_resolutions: int = PixelCNNConfig.n_resolutions):
        super().__init__()
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W) with positive sizes, got {image_shape}")
        if context_shape is not None:
            context_shape = tuple(int(s) for s in context_shape)
            if len(context_shape) not in (1, 3) or min(context_shape) < 1:
                raise ValueError(f"context_shape must be None, (D,) or (C, H, W); got {context_shape}")
        # the architecture's checks are the configuration's
        PixelCNNConfig(n_filters=n_filters, n_resnet=n_resnet, n_resolutions=n_resolutions, likelihood=likelihood,
                       n_mixtures=n_mixtures, dropout=dropout, context_dropout=context_dropout)
        self.config = dict(image_shape=image_shape, context_shape=context_shape, n_filters=n_filters,
                           n_resnet=n_resnet, likelihood=likelihood, n_mixtures=n_mixtures, dropout=dropout,
                           context_dropout=context_dropout, n_resolutions=n_resolutions)
        self.image_shape, self.context_shape, self.likelihood = image_shape, context_shape, likelihood
        self.n_mixtures, self.n_resolutions = n_mixtures, n_resolutions
        C, nf = image_shape[0], n_filters

        block = dict(context_shape=context_shape, dropout=dropout, context_dropout=context_dropout)

        # The input gets a channel of ones, so that zero padding differs from black pixels.
        self.u_init = DownShiftedConv(C + 1, nf, (2, 3))
        self.ul_init_down = DownShiftedConv(C + 1, nf, (1, 3))
        self.ul_init_right = DownRightShiftedConv(C + 1, nf, (2, 1))

        def resnets(count, u_skip, ul_skip):
            return (nn.ModuleList([GatedResnet(nf, _down_conv, u_skip, **block) for _ in range(count)]),
                    nn.ModuleList([GatedResnet(nf, _down_right_conv, ul_skip, **block) for _ in range(count)]))

        up = [resnets(n_resnet, 0, nf) for _ in range(n_resolutions)]
        self.up_u = nn.ModuleList([u for u, _ in up])
        self.up_ul = nn.ModuleList([ul for _, ul in up])
        self.downsample_u = nn.ModuleList([DownShiftedConv(nf, nf, (2, 3), stride=2) for _ in range(n_resolutions - 1)])
        self.downsample_ul = nn.ModuleList([DownRightShiftedConv(nf, nf, (2, 2), stride=2) for _ in range(n_resolutions - 1)])

        # Down pass: every resnet consumes one up-pass activation as its skip input. The lowest resolution
        # has one resnet fewer, because its last up-pass activation is the down pass's starting point.
        down = [resnets(n_resnet + (r < n_resolutions - 1), nf, 2 * nf) for r in range(n_resolutions)]
        self.down_u = nn.ModuleList([u for u, _ in down])
        self.down_ul = nn.ModuleList([ul for _, ul in down])
        self.upsample_u = nn.ModuleList([DownShiftedDeconv(nf, nf) for _ in range(n_resolutions - 1)])
        self.upsample_ul = nn.ModuleList([DownRightShiftedDeconv(nf, nf) for _ in range(n_resolutions - 1)])

        if likelihood == "softmax":
            n_out = 256 * C
            # logit offsets for channel c given the value of an earlier channel j < c, one table per pair; grey
            # images have no pair, so nothing to train (and DistributedDataParallel would wait for its gradient)
            self.channel_tables = nn.Parameter(torch.zeros(C * (C - 1) // 2, 256, 256), requires_grad=C > 1)
        else:
            n_out = n_mixtures * (1 + 2 * C + C * (C - 1) // 2)
        self.out = WNConv2d(nf, n_out, init_scale=0.1)

    @classmethod
    def from_config(cls, image_shape, context_shape, config: PixelCNNConfig) -> "PixelCNNpp":
        """The model ``config`` describes (its architecture fields), for these image and context shapes."""
        return cls(image_shape, context_shape, **config.architecture())

    # ---- plumbing -------------------------------------------------------------------------------
    @property
    def dtype(self):
        return self.out.v.dtype

    @property
    def device(self):
        return self.out.v.device

    def n_parameters(self):
        return sum(p.numel() for p in self.parameters())

    # ---- the network --------------------------------------------------------------------------------
    def walk(self, ops, x, context):
        """The network, once: the up pass and the down pass of both streams, written against ``ops``.

        ``ops`` supplies eight operations (see ``EagerOps``, whose methods are their definitions on
        tensors): ``input`` (the image and its channel of ones), ``size``, ``context_pyramid`` (h at every
        resolution), ``shifted_sum`` (a sum of shifted convolutions of one input: the streams' starting
        points), ``conv`` (a shifted or 1x1 convolution module), ``gated_resnet`` (a block with its skip
        sources, concatenated in the given order), ``upsample`` (a transposed convolution cropped to a size)
        and ``output`` (the last layer on elu of the down-right stream). ``forward`` runs this with
        ``EagerOps``; ``inversion.models.sampling`` runs it with operations that build its compiled graph,
        so the two cannot describe different networks.

        The u stream sees the rows above a pixel (down-shifted convolutions), the ul stream also the pixels
        to its left on its row (down-right-shifted ones); both are gated resnets conditioned on h at every
        resolution, with the up pass's activations fed to the down pass as skip inputs (PixelCNN++).
        """
        x = ops.input(x)
        sizes = [ops.size(x)]
        for _ in range(self.n_resolutions - 1):
            h_, w_ = sizes[-1]
            sizes.append(((h_ + 1) // 2, (w_ + 1) // 2))
        hs = ops.context_pyramid(context, sizes)

        u = ops.shifted_sum(x, [(self.u_init, 1, 0)])
        ul = ops.shifted_sum(x, [(self.ul_init_down, 1, 0), (self.ul_init_right, 0, 1)])
        us, uls = [u], [ul]
        for r in range(self.n_resolutions):
            for block_u, block_ul in zip(self.up_u[r], self.up_ul[r]):
                u = ops.gated_resnet(block_u, u, (), hs[r])
                ul = ops.gated_resnet(block_ul, ul, (u,), hs[r])
                us.append(u)
                uls.append(ul)
            if r < self.n_resolutions - 1:
                u, ul = ops.conv(u, self.downsample_u[r]), ops.conv(ul, self.downsample_ul[r])
                us.append(u)
                uls.append(ul)

        u, ul = us.pop(), uls.pop()
        for r in reversed(range(self.n_resolutions)):
            for block_u, block_ul in zip(self.down_u[r], self.down_ul[r]):
                u = ops.gated_resnet(block_u, u, (us.pop(),), hs[r])
                ul = ops.gated_resnet(block_ul, ul, (u, uls.pop()), hs[r])
            if r > 0:
                u = ops.upsample(u, self.upsample_u[r - 1], sizes[r - 1])
                ul = ops.upsample(ul, self.upsample_ul[r - 1], sizes[r - 1])
        assert not us and not uls
        return ops.output(ul, self.out)

    def forward(self, x, context=None):
        """Network output (distribution parameters) for every pixel: [N, n_out, H, W].

        ``x`` is float, scaled to [-1, 1]; the output at pixel (i, j) depends only on pixels before it.
        """
        return self.walk(EAGER, x, context)

    @torch.no_grad()
    def start_from(self, unconditional: "PixelCNNpp") -> "PixelCNNpp":
        """Warm start (issue: training only what h adds): copy every weight of ``unconditional``, a model of
        the same architecture without context, and zero each context projection's gain and bias, so that
        this model is exactly ``unconditional`` whatever h is, until training moves the gains. The
        projections' directions v keep their random initialisation: with g = 0 the gradient reaches g (the
        direction times h), and through it, once g moves, v. Call it instead of ``data_init``. Returns self.
        """
        if unconditional.context_shape is not None:
            raise ValueError("start_from takes an unconditional model (context_shape None), got one with context "
                             f"{unconditional.context_shape}")
        mine = {k: v for k, v in self.config.items() if k != "context_shape"}
        theirs = {k: v for k, v in unconditional.config.items() if k != "context_shape"}
        if mine != theirs:
            diff = {k: (theirs.get(k), mine.get(k)) for k in mine if mine.get(k) != theirs.get(k)}
            raise ValueError(f"start_from needs the same architecture; (unconditional, this) differ in {diff}")
        state = unconditional.state_dict()
        own = self.state_dict()
        context_keys = [k for k in own if ".context." in k]
        missing = [k for k in own if k not in state and k not in context_keys]
        if missing:
            raise ValueError(f"start_from: the unconditional model lacks {missing[:3]}")
        self.load_state_dict({**own, **{k: v for k, v in state.items() if k in own}})
        for module in self.modules():
            if isinstance(module, GatedResnet) and module.context is not None:
                module.context.g.zero_()
                module.context.b.zero_()
        return self

    @torch.no_grad()
    def data_init(self, x, context=None):
        """Data-dependent init of every weight-normed layer from one batch (call before training)."""
        layers = [m for m in self.modules() if isinstance(m, _WeightNormed)]
        for m in layers:
            m.initializing = True
        try:
            x = self.check_images(x).to(self.device)
            self.forward(self.scale(x), self.on_device(self.check_context(context, len(x))))
        finally:
            for m in layers:
                m.initializing = False

    # ---- input checks -----------------------------------------------------------------------------
    def check_images(self, x):
        """``x`` itself if it is an integer image batch [N, C, H, W] of this model with values 0..255."""
        return check_pixels(x, self.image_shape)

    def check_context(self, context, n):
        """``context`` itself if it suits this model for ``n`` images (None for an unconditional model)."""
        return check_context(context, n, self.context_shape)

    def on_device(self, context):
        """A context on the model's device and in its dtype (None stays None)."""
        return None if context is None else context.to(self.device, self.dtype)

    def scale(self, x):
        """Pixel values 0..255 as the network's input: the model's dtype, in [-1, 1]."""
        return x.to(self.dtype) / 127.5 - 1.0

    # ---- likelihood ---------------------------------------------------------------------------------
    def log_prob(self, x, context=None, reduce=True):
        """log p(x | context) in nats: [N], or per sub-pixel [N, C, H, W] with reduce=False."""
        x = self.check_images(x).to(self.device)
        context = self.on_device(self.check_context(context, len(x)))
        lp = self.sub_pixel_log_prob(x, context)
        return lp.sum(dim=(1, 2, 3)) if reduce else lp

    def sub_pixel_log_prob(self, x, context=None):
        """log_prob(reduce=False) without input checks: for callers that checked once already (and for
        torch.func.vmap, which cannot run the checks' data-dependent branches)."""
        out = self.forward(self.scale(x), context)
        # The likelihood itself is always evaluated in float32 or wider, also under bf16 autocast.
        with torch.autocast(out.device.type, enabled=False):
            out = out.to(torch.promote_types(out.dtype, torch.float32))
            x = x.long()
            if self.likelihood == "softmax":
                lp = self._softmax_log_prob(out, x)
            else:
                lp = self._mixture_log_prob(out, x)
        return lp

    def _softmax_logits(self, out, x_prev):
        """Logits [N, C, 256, ...] for every channel; channel c gets table offsets from x_prev[:, j < c]."""
        N, C = out.shape[0], self.image_shape[0]
        logits = out.reshape(N, C, 256, *out.shape[2:])
        if C == 1:
            return logits
        extra = [torch.zeros_like(logits[:, 0])]
        pair = 0
        for c in range(1, C):
            offset = 0
            for j in range(c):
                # table[x_j] -> [N, ..., 256]; move the 256 axis next to N
                offset = offset + self.channel_tables[pair].to(logits.dtype)[x_prev[:, j]].movedim(-1, 1)
                pair += 1
            extra.append(offset)
        return logits + torch.stack(extra, dim=1)

    def _softmax_log_prob(self, out, x):
        logp = torch.log_softmax(self._softmax_logits(out, x), dim=2)
        return logp.gather(2, x.unsqueeze(2)).squeeze(2)

    def _mixture_params(self, out):
        """Split the output into mixture logits [N,K,...], means, log-scales [N,K,C,...], coeffs [N,K,P,...]."""
        N, K, C = out.shape[0], self.n_mixtures, self.image_shape[0]
        rest = out.shape[2:]
        logits = out[:, :K]
        p = out[:, K:].reshape(N, K, 2 * C + C * (C - 1) // 2, *rest)
        means, log_scales = p[:, :, :C], p[:, :, C : 2 * C].clamp(min=-7.0)
        coeffs = torch.tanh(p[:, :, 2 * C :])
        return logits, means, log_scales, coeffs

    @staticmethod
    def _coupled_means(means, coeffs, xs):
        """Mean of channel c shifted by coeff * (true value of each earlier channel), as in PixelCNN++."""
        C = means.shape[2]
        shifted, pair = [means[:, :, 0]], 0
        for c in range(1, C):
            m = means[:, :, c]
            for j in range(c):
                m = m + coeffs[:, :, pair] * xs[:, None, j]
                pair += 1
            shifted.append(m)
        return torch.stack(shifted, dim=2)

    def _mixture_log_prob(self, out, x):
        logits, means, log_scales, coeffs = self._mixture_params(out)
        xs = x.to(out.dtype) / 127.5 - 1.0  # [N, C, H, W]
        centered = xs[:, None] - self._coupled_means(means, coeffs, xs)
        inv_s = torch.exp(-log_scales)
        upper = inv_s * (centered + 1.0 / 255.0)  # standardised bin edges
        lower = inv_s * (centered - 1.0 / 255.0)
        log_cdf_upper = F.logsigmoid(upper)  # exact: softplus switches to x beyond 20, 2e-9 nats off there
        log_sf_lower = F.logsigmoid(-lower)  # log (1 - sigmoid(lower))
        # log(sigmoid(u) - sigmoid(l)) = log sigmoid(u) + log sigmoid(-l) + log(1 - exp(-(u - l)))
        mid = log_cdf_upper + log_sf_lower + _log1mexp(upper - lower)
        xk = x[:, None].expand_as(mid)
        lp = torch.where(xk == 0, log_cdf_upper, torch.where(xk == 255, log_sf_lower, mid))  # [N,K,C,H,W]
        # Per-sub-pixel conditionals: log p(x_c | x_<c) = log p(x_<=c) - log p(x_<c), each a mixture
        # over components weighted by how well they explain the earlier channels.
        log_w = torch.log_softmax(logits, dim=1)
        joint = torch.logsumexp(log_w[:, :, None] + lp.cumsum(dim=2), dim=1)  # [N, C, H, W]
        return joint - F.pad(joint[:, :-1], (0, 0, 0, 0, 1, 0))

    # ---- one pixel from the network output ------------------------------------------------------------
    def draw_noise(self, n, generator=None):
        """The uniforms one sample consumes: [n, C + 1, H, W] (slot 0: mixture component, 1..C: channels).
        Passing the same noise to any sampler (inversion.models.sampling) gives the
        same images."""
        C, H, W = self.image_shape
        return torch.rand(n, C + 1, H, W, generator=generator, dtype=torch.float64).to(self.device)

    def draw_from_output(self, out, u):
        """Sub-pixels (long) drawn from the network output ``out`` [N, n_out, ...] with the uniforms ``u``
        [N, C + 1, ...] of ``draw_noise``, by inverting each CDF; vectorised over any spatial extent.

        Channels are drawn in order, each given the ones drawn before it (the channel tables of the softmax,
        the coupled means of the mixture); a mixture first picks its component with slot 0 of ``u``. Every
        sampler draws its pixels with this, so equal outputs and equal noise give equal images."""
        C = self.image_shape[0]
        out = out.to(torch.promote_types(out.dtype, torch.float32))
        u = u.to(out.dtype)
        x = torch.zeros(out.shape[0], C, *out.shape[2:], dtype=torch.long, device=out.device)
        if self.likelihood == "softmax":
            for c in range(C):
                logits = self._softmax_logits(out, x)[:, c]  # uses only x[:, :c], already drawn
                cdf = torch.softmax(logits, dim=1).cumsum(dim=1)
                x[:, c] = (cdf < u[:, c + 1 : c + 2]).sum(dim=1).clamp(max=255)
            return x
        logits, means, log_scales, coeffs = self._mixture_params(out)
        cdf = torch.softmax(logits, dim=1).cumsum(dim=1)
        k = (cdf < u[:, :1]).sum(dim=1, keepdim=True).clamp(max=self.n_mixtures - 1)  # [N, 1, ...]

        def pick(t):  # component k's slice of [N, K, P, ...] -> [N, P, ...]
            idx = k[:, :, None].expand(-1, -1, t.shape[2], *t.shape[3:])
            return t.gather(1, idx).squeeze(1)

        means, log_scales, coeffs = pick(means), pick(log_scales), pick(coeffs)
        eps = torch.finfo(out.dtype).eps
        xs = torch.zeros_like(means)
        for c in range(C):
            m = self._coupled_means(means[:, None], coeffs[:, None], xs)[:, 0, c]
            uc = u[:, c + 1].clamp(eps, 1 - eps)
            y = m + torch.exp(log_scales[:, c]) * (torch.log(uc) - torch.log1p(-uc))
            x[:, c] = torch.round((y + 1.0) * 127.5).clamp(0, 255).long()
            xs[:, c] = x[:, c].to(xs.dtype) / 127.5 - 1.0
        return x


def _log1mexp(d):
    """log(1 - exp(-d)) for d > 0, accurate for small and large d (Maechler 2012).

    Each branch sees its inputs clamped to its own range, so the branch torch.where discards cannot
    produce an inf whose gradient would turn into NaN. d is floored at 1e-30: a bin of zero width."""
    small = d.clamp(1e-30, math.log(2.0))
    large = d.clamp(min=math.log(2.0))
    return torch.where(d < math.log(2.0), torch.log(-torch.expm1(-small)), torch.log1p(-torch.exp(-large)))


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------
def train_pixelcnn(model: PixelCNNpp, images, contexts, workdir, config: PixelCNNConfig, *, valid=None, device=None,
                   progress=True, checkpoint_every=500, desc="pixelcnn", data_init=True,
                   compile: bool = False, cuda_graph: bool = False) -> TrainResult:
    """Maximum likelihood training of an inversion model on (image, context) pairs; resumable.

    Appendix A: Adam (betas 0.95, 0.9995, as in PixelCNN++), ``config.lr`` 1e-3 with a multiplicative decay
    ``config.lr_decay`` of 0.9999 per update, early stopping on validation likelihood when
    ``valid=(images, contexts)`` is given with ``config.eval_every`` > 0. The loss is nats per image; weight
    norm is data-initialised on the first batch (``data_init=False``: a model warm-started with
    ``PixelCNNpp.start_from`` keeps its weights). Every training setting comes from ``config`` (its
    architecture fields are the model's business: build the model with ``PixelCNNpp.from_config``).

    Returns inversion.training.TrainResult. ``model`` ends with the best validation weights when ``valid`` is
    given (also in workdir/best.pt), else with the last ones (in workdir/state.pt). workdir/config.json
    records the run, so ``load_trained(PixelCNNpp, workdir)`` rebuilds it; it leaves out ``config.steps``,
    so that a later call with more steps on the same workdir continues the run instead of refusing it.

    ``compile`` (like ``device``) is how the run is executed, not what it trains: ``TrainConfig.compile``. It is
    left out of config.json, so a run may be resumed with or without it. So is ``cuda_graph``
    (``TrainConfig.cuda_graph``: each step replayed as one recorded CUDA graph).
    """
    write_run_config(workdir, dict(model=model.config, lr=config.lr, lr_decay=config.lr_decay,
                                   batch_size=config.batch_size, bf16=config.bf16, seed=config.seed))
    loop = TrainConfig(steps=config.steps, batch_size=config.batch_size, lr=config.lr, lr_decay=config.lr_decay,
                       adam_betas=(0.95, 0.9995), eval_every=config.eval_every, patience=config.patience,
                       checkpoint_every=checkpoint_every, bf16=config.bf16, compile=compile,
                       cuda_graph=cuda_graph, seed=config.seed,
                       progress=progress)
    return fit_density(model, images, contexts, workdir, loop, valid=valid, device=device, desc=desc,
                       data_init=data_init)
