"""The input checks every inverter shares: an image batch of pixel values, a layer's activations as context.

One implementation, one wording: a wrong shape, dtype or range is a ValueError that says what was expected
(and how to convert), raised before anything is computed. The models' ``check_images`` / ``check_context``
methods call these with their own shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["check_pixels", "check_context"]


def _shape(shape: Sequence[int]) -> str:
    return ", ".join(map(str, shape))


def check_pixels(x, image_shape: Sequence[int], what: str = "x") -> torch.Tensor:
    """``x`` itself if it is an integer image batch [N, *image_shape] with values 0..255 (``what``: its name
    in the message)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{what} must be a torch tensor of pixel values 0..255, got {type(x).__name__}")
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(image_shape):
        raise ValueError(f"{what} must have shape [N, {_shape(image_shape)}], got {list(x.shape)}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise ValueError(f"{what} must be an integer tensor of pixel values 0..255 (uint8), got dtype {x.dtype}; "
                         "convert float images with (x * 255).round().to(torch.uint8)")
    if x.numel() and (x.min() < 0 or x.max() > 255):
        raise ValueError(f"{what} values must lie in 0..255, got range {x.min().item()}..{x.max().item()}")
    return x


def check_context(context, n: int, context_shape: Sequence[int] | None):
    """``context`` itself if it suits a model with ``context_shape`` for ``n`` images (None for an
    unconditional model, ``context_shape=None``)."""
    if context_shape is None:
        if context is not None:
            raise ValueError("this model is unconditional (context_shape=None) but a context was given")
        return None
    if context is None:
        raise ValueError(f"this model needs a context of shape [N, {_shape(context_shape)}]")
    if not isinstance(context, torch.Tensor) or not context.dtype.is_floating_point:
        raise ValueError("context must be a floating-point torch tensor")
    if tuple(context.shape) != (n, *context_shape):
        raise ValueError(f"context must have shape [{n}, {_shape(context_shape)}], got {list(context.shape)}")
    if not torch.isfinite(context).all():
        raise ValueError("context contains NaN or inf")
    return context
