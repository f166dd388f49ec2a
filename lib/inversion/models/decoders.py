"""The MSE baseline of §4/Figure 1: a deterministic decoder x_hat = f(h) trained on squared error (eq. 3).

In the style of Dosovitskiy & Brox (2016), "Inverting visual representations with convolutional networks":
a vector representation (FC3, LOGITS, FC1/FC2) goes through a linear layer to a small spatial map that is
up-sampled twice by 4x4 stride-2 transposed convolutions; a spatial one (CONV1, CONV2) goes through two 3x3
convolutions at its own resolution and is up-sampled the same way, by as many 2x steps as fit in the image,
each followed by a 3x3 convolution, and resized bilinearly the rest of the way before the output convolution. (An earlier version resized the map bilinearly to the image size
and refined it with two 3x3 convolutions there: their 5x5-pixel reach could not draw a stroke inside one
7x7-pixel cell of MNIST's 4x4 CONV2 map, so that decoder underfit CONV2, and its error did not rise with
depth for the decoder's sake, not the layer's.) LeakyReLU(0.2) throughout, as in that paper; a sigmoid puts the output in pixel space
[0, 1]. Because it predicts the conditional mean, this decoder's reconstructions blur wherever p(x | h) is
spread out: the contrast with inversion-model samples that §5.1 and §5.2 draw.

Contexts are standardised inside the model (per feature for vectors, per channel for maps) with statistics
of the training contexts that ``train_decoder`` stores in buffers: layer scales differ by orders of
magnitude (CONV1 vs LOGITS, and the same layer across §5.3's training snapshots), and this lets one
learning rate serve them all.

Images are uint8 [N, C, H, W] in 0..255 or float in [0, 1]; the squared error is measured in [0, 1] units.

Every setting of one decoder is a field of ``DecoderConfig``, its default written there once (the decoder
stage's cache keys are these names).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from inversion.models.classifier import check_images
from inversion.training import TrainConfig, TrainResult, check_field, fit, load_trained, write_run_config


@dataclass(frozen=True)
class DecoderConfig:
    """Every setting of one MSE decoder. The paper gives none for this baseline: ``n_filters`` 64 channels
    throughout; Adam at ``lr`` 1e-3 (with ``init_from_data`` it trains stably there) for ``steps`` updates of
    ``batch_size``; validation MSE every ``eval_every`` updates, early stopping after ``patience``
    evaluations without improvement (0: never); ``seed``: batch order."""

    n_filters: int = 64
    steps: int = 20000
    batch_size: int = 64
    lr: float = 1e-3
    eval_every: int = 1000
    patience: int = 10
    seed: int = 0

    def __post_init__(self):
        check = lambda name, kind, ok, valid: check_field(self, name, kind, ok, valid)  # noqa: E731
        check("n_filters", int, lambda v: v >= 1, "an integer >= 1")
        check("steps", int, lambda v: v >= 0, "an integer >= 0")
        check("batch_size", int, lambda v: v >= 1, "an integer >= 1")
        check("lr", float, lambda v: v > 0, "a number > 0")
        check("eval_every", int, lambda v: v >= 0, "an integer >= 0 (0: never)")
        check("patience", int, lambda v: v >= 0, "an integer >= 0 (0: never stop early)")
        check("seed", int, lambda v: True, "an integer")


class MSEDecoder(nn.Module):
    def __init__(self, context_shape: Sequence[int], image_shape: Sequence[int],
                 n_filters: int = DecoderConfig.n_filters):
        super().__init__()
        context_shape = tuple(int(s) for s in context_shape)
        image_shape = tuple(int(s) for s in image_shape)
        if len(context_shape) not in (1, 3) or min(context_shape) < 1:
            raise ValueError(f"context_shape must be (D,) for a vector or (C, H, W) for a feature map, got {context_shape}")
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W) with positive sizes, got {image_shape}")
        if n_filters < 1:
            raise ValueError(f"n_filters must be positive, got {n_filters}")
        self.config = dict(context_shape=list(context_shape), image_shape=list(image_shape), n_filters=int(n_filters))
        self.context_shape, self.image_shape = context_shape, image_shape
        C, H, W = image_shape
        nf = n_filters
        stats_shape = context_shape if len(context_shape) == 1 else (context_shape[0], 1, 1)
        self.register_buffer("h_mean", torch.zeros(stats_shape))
        self.register_buffer("h_std", torch.ones(stats_shape))

        if len(context_shape) == 1:
            # Two 2x up-samplings from a map a quarter of the image size (28 -> 7, 32 -> 8, 40 -> 10);
            # sizes not divisible by 4 overshoot and are resized down at the end.
            self.start = (math.ceil(H / 4), math.ceil(W / 4))
            self.fc = nn.Linear(context_shape[0], 2 * nf * self.start[0] * self.start[1])
            self.up1 = nn.ConvTranspose2d(2 * nf, nf, 4, stride=2, padding=1)
            self.conv1 = nn.Conv2d(nf, nf, 3, padding=1)
            self.up2 = nn.ConvTranspose2d(nf, nf, 4, stride=2, padding=1)
            self.conv2 = nn.Conv2d(nf, nf, 3, padding=1)
            width = nf
        else:
            # 2x up-samplings while they stay within the image (MNIST CONV2 4x4: 2, to 16; CONV1 12x12: 1, to
            # 24); the last few pixels by a bilinear resize of the features, before the output convolution
            ratio = min(H / context_shape[1], W / context_shape[2])
            n_up = max(0, math.floor(math.log2(ratio) + 1e-9))
            width = 2 * nf
            self.conv_in = nn.Conv2d(context_shape[0], width, 3, padding=1)
            self.conv_map = nn.Conv2d(width, width, 3, padding=1)
            ups, convs = [], []
            for _ in range(n_up):
                nxt = max(nf, width // 2)
                ups.append(nn.ConvTranspose2d(width, nxt, 4, stride=2, padding=1))
                convs.append(nn.Conv2d(nxt, nxt, 3, padding=1))
                width = nxt
            self.ups, self.up_convs = nn.ModuleList(ups), nn.ModuleList(convs)
        self.out = nn.Conv2d(width, C, 3, padding=1)
        # Start near "predict the mean image" (``init_from_data`` sets the bias): with a large random output
        # layer, Adam's first coherent steps towards the mostly-black MNIST background drive every sigmoid
        # into saturation, where the squared error has no gradient left.
        with torch.no_grad():
            self.out.weight.mul_(0.1)

    @classmethod
    def from_config(cls, context_shape: Sequence[int], image_shape: Sequence[int],
                    config: DecoderConfig) -> "MSEDecoder":
        """The decoder ``config`` describes, from contexts of ``context_shape`` to images of ``image_shape``."""
        return cls(context_shape, image_shape, n_filters=config.n_filters)

    def _check_contexts(self, h: torch.Tensor) -> torch.Tensor:
        if not isinstance(h, torch.Tensor) or not h.is_floating_point():
            got = h.dtype if isinstance(h, torch.Tensor) else type(h).__name__
            raise ValueError(f"contexts must be a floating-point tensor, got {got}")
        if h.ndim != 1 + len(self.context_shape) or tuple(h.shape[1:]) != self.context_shape:
            raise ValueError(f"contexts must have shape [N, {', '.join(map(str, self.context_shape))}], got {list(h.shape)}")
        return h

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Reconstructions in [0, 1], float [N, C, H, W]."""
        h = (self._check_contexts(h).float() - self.h_mean) / self.h_std
        act = lambda t: F.leaky_relu(t, 0.2)
        if len(self.context_shape) == 1:
            y = act(self.fc(h)).view(len(h), -1, *self.start)
            y = act(self.conv1(act(self.up1(y))))
            y = act(self.conv2(act(self.up2(y))))
        else:
            y = act(self.conv_map(act(self.conv_in(h))))
            for up, conv in zip(self.ups, self.up_convs):
                y = act(conv(act(up(y))))
            if tuple(y.shape[2:]) != self.image_shape[1:]:
                y = F.interpolate(y, size=self.image_shape[1:], mode="bilinear", align_corners=False)
        y = self.out(y)
        if tuple(y.shape[2:]) != self.image_shape[1:]:
            y = F.interpolate(y, size=self.image_shape[1:], mode="bilinear", align_corners=False)
        return torch.sigmoid(y)

    def mse(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Mean squared error per pixel (in [0, 1] units) between f(h) and the images ``x``; a scalar."""
        x = check_images(x, self.image_shape)
        if len(x) != len(h):
            raise ValueError(f"{len(h)} contexts but {len(x)} images")
        return F.mse_loss(self(h), x.to(h.device))

    @torch.no_grad()
    def reconstruct(self, h: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Reconstructions as uint8 images [N, C, H, W] (0..255) on h's device, computed in batches."""
        self._check_contexts(h)
        device = self.h_mean.device
        chunks = [(self(h[i : i + batch_size].to(device)) * 255).round().to(torch.uint8).to(h.device)
                  for i in range(0, len(h), batch_size)]
        return torch.cat(chunks) if chunks else torch.empty(0, *self.image_shape, dtype=torch.uint8, device=h.device)

    @torch.no_grad()
    def init_from_data(self, contexts: torch.Tensor, images: torch.Tensor) -> None:
        """Data-dependent initialisation: context statistics for standardisation (per feature, or per channel
        of a map) and an output bias that makes the untrained decoder predict the mean pixel value per channel."""
        h = self._check_contexts(contexts).float()
        check_images(images[:0], self.image_shape)
        if len(h) != len(images) or len(h) == 0:
            raise ValueError(f"need equally many (> 0) contexts and images, got {len(h)} and {len(images)}")
        # Summing with a float64 accumulator avoids a float copy of the whole image set.
        mean_pixel = images.sum((0, 2, 3), dtype=torch.float64) / (images[:, 0].numel())
        mean_pixel = (mean_pixel / 255 if images.dtype == torch.uint8 else mean_pixel).clamp(0.01, 0.99)
        self.out.bias.copy_(torch.logit(mean_pixel).to(self.out.bias))
        dims = (0,) if h.ndim == 2 else (0, 2, 3)
        std, mean = torch.std_mean(h, dims) if len(h) > 1 else (torch.ones(h.shape[1]), h.mean(dims))
        mean, std = mean.reshape(self.h_mean.shape), std.reshape(self.h_std.shape)
        # Dead units (constant 0 after a ReLU) would divide by zero; leave them unscaled.
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
        self.h_mean.copy_(mean)
        self.h_std.copy_(std)


@torch.no_grad()
def evaluate_mse(decoder: MSEDecoder, contexts: torch.Tensor, images: torch.Tensor, batch_size: int = 500) -> float:
    """Mean per-pixel squared error over a whole set, in batches on the decoder's device."""
    if len(contexts) != len(images) or len(images) == 0:
        raise ValueError(f"need equally many (> 0) contexts and images, got {len(contexts)} and {len(images)}")
    device = decoder.h_mean.device
    total = 0.0
    for i in range(0, len(images), batch_size):
        h, x = contexts[i : i + batch_size].to(device), images[i : i + batch_size].to(device)
        total += decoder.mse(h, x).item() * len(h)
    return total / len(images)


def train_decoder(
    decoder: MSEDecoder,
    contexts: torch.Tensor,
    images: torch.Tensor,
    workdir: str | os.PathLike,
    config: DecoderConfig,
    *,
    valid: tuple[torch.Tensor, torch.Tensor] | None = None,
    device=None,
    progress: bool = True,
    checkpoint_every: int = 500,
) -> TrainResult:
    """Fit ``decoder`` to map ``contexts`` [N, *context_shape] to ``images`` [N, *image_shape] under squared error.

    Adam at ``config.lr``, after the data-dependent initialisation ``init_from_data`` on
    ``contexts``/``images`` before step 0. With ``valid=(contexts, images)`` the validation MSE is evaluated
    every ``config.eval_every`` steps, training stops after ``config.patience`` evaluations without
    improvement (0: never), and the best weights (``workdir/best.pt``) are loaded at the end; otherwise the
    last weights are kept. Resumable like every ``inversion.training.fit`` run; ``workdir/config.json`` lets
    ``load_decoder(workdir)`` rebuild the model.
    """
    decoder._check_contexts(contexts)
    check_images(images[:0], decoder.image_shape, "training images")
    if len(contexts) != len(images):
        raise ValueError(f"{len(contexts)} contexts but {len(images)} images")
    if valid is not None:
        decoder._check_contexts(valid[0])
        check_images(valid[1][:0], decoder.image_shape, "valid images")
    workdir = Path(workdir)
    write_run_config(workdir, dict(model=decoder.config, seed=config.seed, lr=config.lr, batch_size=config.batch_size))
    if not (workdir / "state.pt").exists():  # a resumed run gets all of this from its checkpoint
        decoder.init_from_data(contexts, images)

    def loss_fn(m, batch):
        return m.mse(*batch)

    def eval_fn(m):
        return dict(score=-evaluate_mse(m, *valid))  # fit maximises the score

    loop = TrainConfig(steps=config.steps, batch_size=config.batch_size, lr=config.lr, eval_every=config.eval_every,
                       patience=config.patience, checkpoint_every=checkpoint_every, seed=config.seed,
                       progress=progress)
    return fit(decoder, loss_fn, (contexts, images), loop, workdir, eval_fn=eval_fn if valid is not None else None,
               device=device, desc="mse decoder", restore_best=True)


def load_decoder(workdir: str | os.PathLike, weights: str = "best.pt", device=None) -> MSEDecoder:
    """Rebuild a decoder trained by ``train_decoder`` and load ``workdir/weights``."""
    return load_trained(MSEDecoder, workdir, weights, device)
