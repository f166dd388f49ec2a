"""What an inversion sample kept of its input's geometry: position, orientation and ink, measured.

§5.2 reads Fig. 4 by eye: samples from the FC3 of a network with global max pooling put the digit anywhere
on the canvas (translation discarded) but keep its slant and stroke style, while samples from the other two
networks keep the position. This module turns that reading into numbers, from image moments of the ink
(pixel intensity as mass):

- **position**: the ink centroid (x, y) in pixels;
- **orientation**: the angle of the principal axis of the ink's second central moments, in degrees, defined
  modulo 180°; only meaningful for elongated digits, so inputs whose axis ratio sqrt(λ1/λ2) is below
  ``min_elongation`` are left out of the orientation statistic (a "0" has no principal direction);
- **ink**: the total ink (sum of intensities / 255), a proxy for stroke thickness and size.

For each property, ``kept`` compares how far a sample lands from its *own* input with how far it lands
from *other test inputs of the same class*:

    error    = mean over inputs i and their samples s of |p(s) − p(x_i)|
    baseline = mean over inputs i, their samples s and the other same-class inputs j of |p(s) − p(x_j)|
    ratio    = error / baseline

A layer that discards the property gives samples whose property is unrelated to their own input's beyond
the class, so the ratio is near 1; a layer that keeps it gives a ratio well below 1. The per-input
differences (error_i − baseline_i) give a standard error, so "kept" can be tested (difference below zero
by 2 s.e.). The same numbers are computed for MSE reconstructions (one per input) for comparison.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

PROPERTIES = ("position", "orientation", "ink")
UNITS = {"position": "px", "orientation": "°", "ink": "pixels of full ink"}


def moments(images) -> dict[str, np.ndarray]:
    """Ink moments of grey images [..., H, W] (any numeric dtype, 0..255 scale).

    Returns arrays over the leading dimensions (a channel axis of 1 stays a leading dimension): ``ink`` (sum / 255), ``cx``, ``cy`` (centroid, pixels,
    x to the right, y down), ``angle`` (principal axis in degrees in [-90, 90), measured from the x axis
    towards -y so that a "/" stroke is positive), ``elongation`` (sqrt of the eigenvalue ratio, ≥ 1).
    An image without ink has NaN centroid and angle.
    """
    a = np.asarray(images, dtype=np.float64)
    if a.ndim < 2:
        raise ValueError(f"expected images [..., H, W], got shape {a.shape}")
    if a.size and (np.nanmin(a) < 0 or not np.isfinite(a).all()):
        raise ValueError("images must be finite and non-negative (ink intensities)")
    H, W = a.shape[-2:]
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    m = a.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (a * xs).sum(axis=(-2, -1)) / m
        cy = (a * ys).sum(axis=(-2, -1)) / m
        dx = xs - cx[..., None, None]
        dy = ys - cy[..., None, None]
        mxx = (a * dx * dx).sum(axis=(-2, -1)) / m
        myy = (a * dy * dy).sum(axis=(-2, -1)) / m
        mxy = (a * dx * dy).sum(axis=(-2, -1)) / m
        # y grows downwards on screen; flip it so angles are the usual counter-clockwise ones
        angle = 0.5 * np.degrees(np.arctan2(-2 * mxy, mxx - myy))
        half_trace, det_part = (mxx + myy) / 2, np.sqrt(((mxx - myy) / 2) ** 2 + mxy**2)
        elongation = np.sqrt((half_trace + det_part) / np.maximum(half_trace - det_part, 1e-12))
    angle = np.where(angle >= 90, angle - 180, angle)
    return dict(ink=m / 255.0, cx=cx, cy=cy, angle=angle, elongation=elongation)


def _distance(prop: str, a: dict, b: dict, ia, ib) -> np.ndarray:
    """|p(a[ia]) − p(b[ib])| for one property (broadcasting index arrays)."""
    if prop == "position":
        return np.hypot(a["cx"][ia] - b["cx"][ib], a["cy"][ia] - b["cy"][ib])
    if prop == "orientation":
        d = np.abs(a["angle"][ia] - b["angle"][ib]) % 180.0
        return np.minimum(d, 180.0 - d)
    if prop == "ink":
        return np.abs(a["ink"][ia] - b["ink"][ib])
    raise ValueError(f"unknown property {prop!r}; expected one of {PROPERTIES}")


@dataclass(frozen=True)
class Kept:
    """How much of one property the samples kept (see the module docstring)."""

    error: float  # mean |p(sample) − p(own input)|
    baseline: float  # mean |p(sample) − p(other same-class input)|
    ratio: float  # error / baseline: ≈ 1 discarded, ≪ 1 kept
    diff: float  # mean over inputs of (error_i − baseline_i)
    diff_stderr: float
    n_inputs: int  # inputs that entered (had a same-class partner; elongated enough for orientation)

    @property
    def kept(self) -> bool:
        """The samples are closer to their own input than to other same-class inputs, by 2 s.e."""
        return bool(self.n_inputs >= 2 and self.diff < -2 * self.diff_stderr)

    def as_dict(self) -> dict:
        return {**asdict(self), "kept": self.kept}


def kept(inputs, samples, labels, prop: str, min_elongation: float = 1.3) -> Kept:
    """How much of ``prop`` the samples keep of their input. inputs [N, (1,) H, W]; samples [N, K, (1,) H, W]
    (K samples per input, or K = 1 for MSE reconstructions); labels [N]."""
    labels = np.asarray(labels)
    inputs, samples = np.asarray(inputs), np.asarray(samples)
    if inputs.ndim == 4:  # [N, 1, H, W]
        inputs = inputs[:, 0]
    if samples.ndim == 5:  # [N, K, 1, H, W]
        samples = samples[:, :, 0]
    mi, ms = moments(inputs), moments(samples)
    n = len(labels)
    if mi["ink"].shape != (n,) or ms["ink"].ndim != 2 or ms["ink"].shape[0] != n:
        raise ValueError(f"need inputs [N, H, W], samples [N, K, H, W] and labels [N]; got moments of shapes "
                         f"{mi['ink'].shape}, {ms['ink'].shape} and {labels.shape}")
    k = ms["ink"].shape[1]
    errors, baselines = [], []
    for i in range(n):
        others = [j for j in range(n) if j != i and labels[j] == labels[i]]
        if prop == "orientation":
            if not mi["elongation"][i] >= min_elongation:
                continue
            others = [j for j in others if mi["elongation"][j] >= min_elongation]
        if not others:
            continue
        rows = np.full(k, i)
        own = _distance(prop, ms, mi, (rows, np.arange(k)), i)
        other = np.stack([_distance(prop, ms, mi, (rows, np.arange(k)), j) for j in others])  # [J, K]
        if not (np.isfinite(own).all() and np.isfinite(other).all()):
            continue  # a sample without ink has no centroid; it counts in neither
        errors.append(own.mean())
        baselines.append(other.mean())
    e, b = np.asarray(errors), np.asarray(baselines)
    if len(e) == 0:
        nan = float("nan")
        return Kept(nan, nan, nan, nan, nan, 0)
    d = e - b
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
    return Kept(float(e.mean()), float(b.mean()), float(e.mean() / b.mean()) if b.mean() > 0 else float("nan"),
                float(d.mean()), se, len(d))


def kept_table(inputs, samples, labels, min_elongation: float = 1.3) -> dict[str, Kept]:
    """``kept`` for every property."""
    return {p: kept(inputs, samples, labels, p, min_elongation) for p in PROPERTIES}
