"""Conditional PixelCNN++ (Salimans et al. 2017), the inversion model p(x | h) of Nash et al. (2019).

Read top to bottom: weight-normalised layers, shifted convolutions, the gated resnet block, the
two-stream network, then the two pixel likelihoods and sampling.

Conventions
- Images are integer tensors [N, C, H, W] with values 0..255 (uint8). Inside, values are scaled to
  [-1, 1]. Sub-pixels are ordered in raster order over pixels, and R -> G -> B inside a pixel.
- ``log_prob`` returns nats. With ``reduce=False`` it returns the log-probability of every sub-pixel
  given all the sub-pixels before it, so the sum over [C, H, W] is the image's log-likelihood.
- The context h (a classifier layer) is either a vector (context_shape=(D,)) or a spatial map
  (context_shape=(C', H', W')). It biases every gated resnet of both streams: a vector through a
  linear projection, a map resized to each resolution (bilinear) and projected by a 1x1 conv
  (Appendix A of the paper). The projection is added before the gate, so h moves value and gate.

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

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

LIKELIHOODS = ("softmax", "logistic_mixture")


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
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv(2 * n_filters, 2 * n_filters, init_scale=0.1)
        self.context = None
        if context_shape is not None:
            # A vector h is a bias per channel; a map is a bias per channel and position.
            d = context_shape[0]
            self.context = WNLinear(d, 2 * n_filters) if len(context_shape) == 1 else WNConv2d(d, 2 * n_filters)
        self.context_dropout = nn.Dropout(context_dropout)

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
# The network
# --------------------------------------------------------------------------------------------------
class PixelCNNpp(nn.Module):
    """Conditional PixelCNN++.

    Args:
        image_shape: (C, H, W).
        context_shape: None (unconditional), (D,) for a vector h, or (C', H', W') for a spatial h.
        n_filters: channels of every stream (paper: 64 for MNIST, 196 for SVHN/CIFAR).
        n_resnet: gated resnets per block (paper: 3; the original PixelCNN++ used 5).
        likelihood: "softmax" (256-way per sub-pixel; the paper's choice for MNIST) or
            "logistic_mixture" (discretised mixture of logistics; the paper's choice for SVHN/CIFAR).
        n_mixtures: mixture components (paper: 10).
        dropout: rate inside every gated resnet (paper: 0.5; 0.1 for CONV1 of SVHN/CIFAR).
        context_dropout: rate on the projected context (paper: 0.2 for CIFAR-FC3, else 0).
        n_resolutions: number of resolutions in each pass (the original: 3).
    """

    def __init__(self, image_shape, context_shape=None, n_filters=64, n_resnet=3, likelihood="softmax",
                 n_mixtures=10, dropout=0.5, context_dropout=0.0, n_resolutions=3):
        super().__init__()
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W) with positive sizes, got {image_shape}")
        if context_shape is not None:
            context_shape = tuple(int(s) for s in context_shape)
            if len(context_shape) not in (1, 3) or min(context_shape) < 1:
                raise ValueError(f"context_shape must be None, (D,) or (C, H, W); got {context_shape}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}; expected one of {LIKELIHOODS}")
        if n_resolutions < 1 or n_resnet < 1 or n_filters < 1:
            raise ValueError("n_resolutions, n_resnet and n_filters must be >= 1")
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
            # logit offsets for channel c given the value of an earlier channel j < c, one table per pair
            self.channel_tables = nn.Parameter(torch.zeros(C * (C - 1) // 2, 256, 256))
        else:
            n_out = n_mixtures * (1 + 2 * C + C * (C - 1) // 2)
        self.out = WNConv2d(nf, n_out, init_scale=0.1)

    # ---- plumbing -------------------------------------------------------------------------------
    @property
    def dtype(self):
        return self.out.v.dtype

    @property
    def device(self):
        return self.out.v.device

    def _context_pyramid(self, h, sizes):
        """The context as each resolution needs it: a vector as is, a map resized (bilinear) per size."""
        if h is None:
            return [None] * len(sizes)
        if h.dim() == 2:
            return [h] * len(sizes)
        return [F.interpolate(h, size=s, mode="bilinear", align_corners=False) for s in sizes]

    def forward(self, x, context=None):
        """Network output (distribution parameters) for every pixel: [N, n_out, H, W].

        ``x`` is float, scaled to [-1, 1]; the output at pixel (i, j) depends only on pixels before it.
        """
        N, _, H, W = x.shape
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        sizes = [(H, W)]
        for _ in range(self.n_resolutions - 1):
            h_, w_ = sizes[-1]
            sizes.append(((h_ + 1) // 2, (w_ + 1) // 2))
        hs = self._context_pyramid(context, sizes)

        u = down_shift(self.u_init(x))
        ul = down_shift(self.ul_init_down(x)) + right_shift(self.ul_init_right(x))
        us, uls = [u], [ul]
        for r in range(self.n_resolutions):
            for block_u, block_ul in zip(self.up_u[r], self.up_ul[r]):
                u = block_u(u, h=hs[r])
                ul = block_ul(ul, u, h=hs[r])
                us.append(u)
                uls.append(ul)
            if r < self.n_resolutions - 1:
                u, ul = self.downsample_u[r](u), self.downsample_ul[r](ul)
                us.append(u)
                uls.append(ul)

        u, ul = us.pop(), uls.pop()
        for r in reversed(range(self.n_resolutions)):
            for block_u, block_ul in zip(self.down_u[r], self.down_ul[r]):
                u = block_u(u, us.pop(), h=hs[r])
                ul = block_ul(ul, torch.cat([u, uls.pop()], dim=1), h=hs[r])
            if r > 0:
                u = self.upsample_u[r - 1](u, sizes[r - 1])
                ul = self.upsample_ul[r - 1](ul, sizes[r - 1])
        assert not us and not uls
        return self.out(F.elu(ul))

    @torch.no_grad()
    def data_init(self, x, context=None):
        """Data-dependent init of every weight-normed layer from one batch (call before training)."""
        layers = [m for m in self.modules() if isinstance(m, _WeightNormed)]
        for m in layers:
            m.initializing = True
        try:
            x = self._check_images(x).to(self.device)
            self.forward(self._scale(x), self._on_device(self._check_context(context, len(x))))
        finally:
            for m in layers:
                m.initializing = False

    # ---- input checks -----------------------------------------------------------------------------
    def _check_images(self, x):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x must be a torch tensor of pixel values 0..255, got {type(x).__name__}")
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"x must have shape [N, {', '.join(map(str, self.image_shape))}], got {list(x.shape)}")
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise ValueError(f"x must be an integer tensor of pixel values 0..255 (uint8), got dtype {x.dtype}; "
                             "convert float images with (x * 255).round().to(torch.uint8)")
        if x.numel() and (x.min() < 0 or x.max() > 255):
            raise ValueError(f"x values must lie in 0..255, got range {x.min().item()}..{x.max().item()}")
        return x

    def _check_context(self, context, n):
        if self.context_shape is None:
            if context is not None:
                raise ValueError("this model is unconditional (context_shape=None) but a context was given")
            return None
        if context is None:
            raise ValueError(f"this model needs a context of shape [N, {', '.join(map(str, self.context_shape))}]")
        if not isinstance(context, torch.Tensor) or not context.dtype.is_floating_point:
            raise ValueError("context must be a floating-point torch tensor")
        if tuple(context.shape) != (n, *self.context_shape):
            raise ValueError(f"context must have shape [{n}, {', '.join(map(str, self.context_shape))}], "
                             f"got {list(context.shape)}")
        if not torch.isfinite(context).all():
            raise ValueError("context contains NaN or inf")
        return context

    def _on_device(self, context):
        return None if context is None else context.to(self.device, self.dtype)

    def _scale(self, x):
        return x.to(self.dtype) / 127.5 - 1.0

    # ---- likelihood ---------------------------------------------------------------------------------
    def log_prob(self, x, context=None, reduce=True):
        """log p(x | context) in nats: [N], or per sub-pixel [N, C, H, W] with reduce=False."""
        x = self._check_images(x).to(self.device)
        context = self._on_device(self._check_context(context, len(x)))
        lp = self.sub_pixel_log_prob(x, context)
        return lp.sum(dim=(1, 2, 3)) if reduce else lp

    def sub_pixel_log_prob(self, x, context=None):
        """log_prob(reduce=False) without input checks: for callers that checked once already (and for
        torch.func.vmap, which cannot run the checks' data-dependent branches)."""
        out = self.forward(self._scale(x), context)
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
        log_cdf_upper = -F.softplus(-upper)  # log sigmoid(upper)
        log_sf_lower = -F.softplus(lower)  # log (1 - sigmoid(lower))
        # log(sigmoid(u) - sigmoid(l)) = log sigmoid(u) + log sigmoid(-l) + log(1 - exp(-(u - l)))
        mid = log_cdf_upper + log_sf_lower + _log1mexp(upper - lower)
        xk = x[:, None].expand_as(mid)
        lp = torch.where(xk == 0, log_cdf_upper, torch.where(xk == 255, log_sf_lower, mid))  # [N,K,C,H,W]
        # Per-sub-pixel conditionals: log p(x_c | x_<c) = log p(x_<=c) - log p(x_<c), each a mixture
        # over components weighted by how well they explain the earlier channels.
        log_w = torch.log_softmax(logits, dim=1)
        joint = torch.logsumexp(log_w[:, :, None] + lp.cumsum(dim=2), dim=1)  # [N, C, H, W]
        return joint - F.pad(joint[:, :-1], (0, 0, 0, 0, 1, 0))

    # ---- sampling -------------------------------------------------------------------------------
    def draw_noise(self, n, generator=None):
        """The uniforms one sample consumes: [n, C + 1, H, W] (slot 0: mixture component, 1..C: channels).
        Passing the same noise to any sampler gives the same images."""
        C, H, W = self.image_shape
        return torch.rand(n, C + 1, H, W, generator=generator, dtype=torch.float64).to(self.device)

    def _sample_from_output(self, out, u):
        """Draw sub-pixels from the network output with given uniforms; vectorised over any spatial extent."""
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

    @torch.no_grad()
    def sample(self, context=None, n=None, noise=None, generator=None, method="cached", progress=False):
        """Draw images from p(x | context): uint8 [N, C, H, W].

        method "naive": one network pass per pixel, in raster order (H*W passes).
        method "fixed_point": with the noise frozen, pass the whole image through the network and redraw
            every pixel from its output, until nothing changes. Pixel k is final once pixels < k are, so
            this ends in at most H*W passes and returns exactly the naive sampler's images; images that
            have converged leave the batch.
        method "cached": one pixel at a time, but every activation is computed once, as soon as the pixels
            it depends on are drawn, and kept (inversion.pixelcnn_cached): about one network pass per image
            in all. Returns the naive sampler's images (exactly in float64).
        """
        if context is not None:
            n = len(context)
        if n is None:
            raise ValueError("give a context (one image is drawn per row) or n for an unconditional model")
        context = self._on_device(self._check_context(context, n))
        if noise is None:
            noise = self.draw_noise(n, generator)
        C, H, W = self.image_shape
        if tuple(noise.shape) != (n, C + 1, H, W):
            raise ValueError(f"noise must have shape [{n}, {C + 1}, {H}, {W}] (see draw_noise), got {list(noise.shape)}")
        noise = noise.to(self.device)
        was_training = self.training
        self.eval()
        try:
            if method == "naive":
                x = self._sample_naive(context, noise, n, progress)
            elif method == "fixed_point":
                x = self._sample_fixed_point(context, noise, n, progress)
            elif method == "cached":
                from inversion.pixelcnn_cached import sample_cached  # it builds on this module

                x = sample_cached(self, context, noise, progress)
            else:
                raise ValueError(f"unknown sampling method {method!r}; expected 'naive', 'fixed_point' or 'cached'")
        finally:
            self.train(was_training)
        return x.to(torch.uint8)

    def _sample_naive(self, context, noise, n, progress):
        C, H, W = self.image_shape
        x = torch.zeros(n, C, H, W, dtype=torch.long, device=self.device)
        for i in tqdm(range(H * W), disable=not progress, desc="sample (naive)", leave=False):
            r, c = divmod(i, W)
            out = self.forward(self._scale(x), context)
            x[:, :, r, c] = self._sample_from_output(out[:, :, r : r + 1, c : c + 1],
                                                     noise[:, :, r : r + 1, c : c + 1])[:, :, 0, 0]
        return x

    def _sample_fixed_point(self, context, noise, n, progress):
        C, H, W = self.image_shape
        x = torch.zeros(n, C, H, W, dtype=torch.long, device=self.device)
        active = torch.arange(n, device=self.device)
        bar = tqdm(total=n, disable=not progress, desc="sample (fixed point)", leave=False)
        self.last_sample_passes = 0  # network passes the last fixed-point sample took (for benchmarks)
        for _ in range(H * W + 1):
            if len(active) == 0:
                break
            self.last_sample_passes += 1
            ctx = None if context is None else context[active]
            new = self._sample_from_output(self.forward(self._scale(x[active]), ctx), noise[active])
            changed = (new != x[active]).flatten(1).any(dim=1)
            x[active] = new
            bar.update(int((~changed).sum()))
            active = active[changed]
        bar.close()
        return x

    def n_parameters(self):
        return sum(p.numel() for p in self.parameters())


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
def train_pixelcnn(model, images, contexts, workdir, steps, batch_size=32, lr=1e-3, lr_decay=0.9999,
                   valid=None, eval_every=0, patience=0, bf16=False, seed=0, device=None, progress=True,
                   checkpoint_every=500, desc="pixelcnn"):
    """Maximum likelihood training of an inversion model on (image, context) pairs; resumable.

    Appendix A: Adam, lr 1e-3 with a multiplicative decay of 0.9999 (read here as per update; the paper
    does not say per what), early stopping on validation likelihood when ``valid=(images, contexts)``
    is given. The loss is nats per image; weight norm is data-initialised on the first batch.
    Returns inversion.training.TrainResult. ``model`` ends with the best validation weights when
    ``valid`` is given (also in workdir/best.pt), else with the last ones (in workdir/state.pt);
    workdir/config.json records the run, so ``load_trained(PixelCNNpp, workdir)`` rebuilds it.
    """
    from inversion.training import TrainConfig, fit, write_run_config

    write_run_config(workdir, dict(model=model.config, lr=lr, lr_decay=lr_decay, batch_size=batch_size, bf16=bf16,
                                   seed=seed))
    conditional = contexts is not None
    data = [images, contexts] if conditional else [images]

    def loss_fn(m, batch):
        return -m.log_prob(batch[0], batch[1] if conditional else None).mean()

    def on_start(m, batch):
        m.data_init(batch[0], batch[1] if conditional else None)

    eval_fn = None
    if valid is not None:
        from inversion.bounds import per_image_log_prob

        def eval_fn(m):
            lp = per_image_log_prob(m, valid[0], valid[1], batch_size=max(batch_size, 64), progress=False)
            return {"score": lp.mean().item(), "valid_nats": lp.mean().item()}

    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, lr_decay=lr_decay, adam_betas=(0.95, 0.9995),
                      eval_every=eval_every, patience=patience, checkpoint_every=checkpoint_every, bf16=bf16,
                      seed=seed, progress=progress)
    return fit(model, loss_fn, data, cfg, workdir, eval_fn=eval_fn, on_start=on_start, device=device, desc=desc,
               restore_best=True)
