"""Stages of the appendix on other estimators (the paper's Appendix B): binning, KDE bounds, Kraskov and KSG
on the same classifier snapshots and layers as the training-dynamics chapter (§5.3), next to its NCEs.

Two stages, both consuming a classifier result (in practice a ``snapshot`` of §5.3):

``estimates``        every estimator on one layer, at one setting of its knobs (bin count, σ², k), on the
                     first ``n_test`` test images. One result per (regime, checkpoint, layer).
``estimator_sweep``  the same estimators on one layer while one knob moves: the bin count, the noise
                     variance σ², and the number N of test images. One result per layer, at one checkpoint.

What each estimator is given, and why (decisions that the chapter's prose repeats):

* **Inputs.** The first ``n_test`` images of the test split, the same images (in the same order) as the
  NCE's, so a larger ``n_test`` only adds images. X is taken as uniform over these N distinct images,
  which is the empirical distribution every plug-in estimator below works with.
* **Activations.** The full flattened activation vector of a layer (CONV1 of MNIST: 32 x 12 x 12 = 4608
  units), not a random projection. A projection would change the quantity measured (it is not injective
  on the layer's values, and Kraskov's estimate depends on the dimension D explicitly), and every
  estimator used here costs O(N² D) through one matrix product, a few seconds at N = 2000 on 2 cores.
* **Binning** (``binning_xt``, ``binning_ty``): each unit cut into ``n_bins`` equal bins between the
  layer's smallest and largest activation over the N images (ReLU layers have no fixed range; this is the
  per-layer range of Saxe et al. 2018), I(X;T) = H(T) for the deterministic network and I(T;Y) with the
  test labels. 30 bins is Shwartz-Ziv & Tishby's choice.
* **KDE bounds** (``kde_upper``, ``kde_lower``): Kolchinsky & Tracey's pairwise-distance bounds on
  I(X; T+ε), ε ~ N(0, σ²I). σ² = 0.1 is the noise variance of the MNIST notebook in Saxe et al.'s public
  code; the sweep shows what another choice gives.
* **Kraskov** (``kraskov_xt``): the paper's eq. 13-14 (Kozachenko-Leonenko entropy, k neighbours) on the
  noisy activations T+ε with the same σ², minus the noise entropy H(ε): I(X; T+ε) = H(T+ε) - H(ε), the
  way Saxe et al. use it. One fixed standard-normal draw g [N, D] is scaled by σ for every σ², so a σ²
  sweep moves only σ.
* **KSG** (``ksg_xt``): Kraskov-Stögbauer-Grassberger I(X;T) between the pixels (scaled to [0, 1]) and the
  activations, with Euclidean marginal norms. Each marginal is first scaled to a root-mean-square pairwise
  distance of 1: KSG's joint max-norm otherwise lets the marginal with the larger distances set every
  neighbourhood and the estimate collapses towards 0 (see ``inversion.estimators.ksg_mi``).

Alongside, the diagnostics that explain the failures: the number of distinct activation rows (all N for an
injective layer, so the plug-in H(T) without any binning is log N), the layer's dimension, the empirical
label entropy H(Y), and the median squared distance from a point to its nearest neighbour (the KDE bound
saturates at log N once 8σ² is well below it).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from inversion import estimators as E
from inversion.pipeline.cache import Context, ref, stage
from inversion.pipeline.common import features, load_classifier, test_split, torch_threads
from inversion.pipeline.dynamics import dynamics_plan
from inversion.pipeline.layers import check_layers
from inversion.pipeline.params import Params
from inversion.pipeline.schema import ConfigError

__all__ = ["ESTIMATES", "ESTIMATOR_SWEEP", "EstimatorsSettings", "estimators_plan", "nearest_sq_distances", "unit_rms"]


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------


def unit_rms(a: np.ndarray) -> np.ndarray:
    """``a`` [N, d] centred and scaled so that the mean squared distance between two rows is 1.

    Uses mean_{i,j} ‖a_i − a_j‖² = 2 · mean_i ‖a_i − ā‖². A constant array (all rows equal) is returned
    centred and unscaled: there is no scale to remove.
    """
    a = np.asarray(a, dtype=np.float64)
    centred = a - a.mean(axis=0, keepdims=True)
    rms = math.sqrt(2.0 * float((centred**2).sum(axis=1).mean()))
    return centred / rms if rms > 0 else centred


def nearest_sq_distances(t: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Squared Euclidean distance from each row of ``t`` [N, d] to its nearest other row, [N].

    In blocks of ``chunk`` rows through ‖a‖² + ‖b‖² − 2a·b on centred float64 data (distances are
    translation invariant; centring removes the common offset that would otherwise cancel badly).
    """
    x = torch.from_numpy(np.ascontiguousarray(t, dtype=np.float64))
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need at least 2 rows of a 2-d array, got shape {tuple(x.shape)}")
    x = x - x.mean(dim=0, keepdim=True)
    sq = (x * x).sum(dim=1)
    out = []
    for start in range(0, len(x), chunk):
        stop = min(start + chunk, len(x))
        d2 = (sq[start:stop, None] + sq[None, :] - 2.0 * (x[start:stop] @ x.T)).clamp_(min=0.0)
        rows = torch.arange(stop - start)
        d2[rows, rows + start] = float("inf")
        out.append(d2.min(dim=1).values)
    return torch.cat(out).numpy()


def _label_entropy(y: np.ndarray) -> float:
    counts = np.unique(np.asarray(y), return_counts=True)[1].astype(np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def _layer_data(ctx: Context, n: int):
    """(pixels in [0, 1] [n, D_x] float64, activations [n, D] float64, labels [n]) of the first n test images."""
    clf_res = ctx.dep("classifier", need=("model.pt",))
    clf = load_classifier(clf_res, ctx.device)
    x, y = test_split(clf_res.config["dataset"], n)
    t = features(clf, x, ctx.config.layer, ctx.device).flatten(1).double().numpy()
    pixels = x.flatten(1).double().numpy() / 255.0
    return pixels, t, y.numpy()


def _noise(shape, seed: int) -> np.ndarray:
    """One standard-normal draw [N, D], reproducible from ``seed``; scaled by σ for each σ²."""
    return np.random.default_rng(seed).standard_normal(shape)


def _kraskov_mi(t: np.ndarray, g: np.ndarray, noise_var: float, k: int) -> float:
    """Kraskov's I(X; T+ε) = Ĥ_KL(T+ε) − H(ε), ε = σ g (eq. 13–14 on the noisy activations)."""
    h_noisy = E.kraskov_entropy(t + math.sqrt(noise_var) * g, k)
    d = t.shape[1]
    return h_noisy - 0.5 * d * math.log(2.0 * math.pi * math.e * noise_var)


SMALL_N = 512  # at most this many points: one torch thread (see _estimator_threads)


def _estimator_threads(n: int):
    """One torch thread for small problems: at N <= SMALL_N every distance block is so small that a second
    thread only adds synchronisation, which becomes most of the time when other processes share the cores
    (the smoke set's stages took 20x longer under load with two threads). Larger N keeps every thread."""
    return torch_threads(1 if n <= SMALL_N else torch.get_num_threads())


def _finite_or_none(v: float):
    return float(v) if math.isfinite(v) else None


@dataclass(frozen=True, kw_only=True)
class EstimatesConfig:
    """One layer, one setting of every estimator's knob."""

    layer: str
    n_test: int = 1000  # the first N test images (the NCE's images, in the same order)
    n_bins: int = 30  # bins per unit (Shwartz-Ziv & Tishby)
    noise_var: float = 0.1  # σ² of the KDE bounds and of Kraskov's T+ε (Saxe et al.'s MNIST code)
    k: int = 3  # neighbours for Kraskov and KSG
    seed: int = 0  # the standard-normal draw behind ε

    def __post_init__(self):
        if self.n_test < 2:
            raise ValueError(f"n_test must be an integer >= 2 (test images), got {self.n_test!r}")
        if not 1 <= self.k < self.n_test:
            raise ValueError(f"k (neighbours for Kraskov/KSG) must be an integer in [1, n_test - 1], got {self.k!r}")
        if self.n_bins < 1:
            raise ValueError(f"n_bins must be a positive integer, got {self.n_bins!r}")
        if not self.noise_var > 0:
            raise ValueError(f"noise_var (σ²) must be a positive number, got {self.noise_var!r}")


@dataclass(frozen=True, kw_only=True)
class SweepConfig(EstimatesConfig):
    """The same estimators while one knob moves (the others at the values above)."""

    bins: tuple[int, ...] = (2, 3, 5, 10, 30, 100, 1000, 10000)
    noise_vars: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)
    sizes: tuple[int, ...] = (100, 200, 500, 1000)  # N: the first N of the n_test images

    def __post_init__(self):
        super().__post_init__()
        for name in ("bins", "noise_vars", "sizes"):
            if not getattr(self, name):
                raise ValueError(f"sweep {name} must be a non-empty list, got {list(getattr(self, name))}")
        if any(b < 1 for b in self.bins):
            raise ValueError(f"sweep bins must be positive integers, got {list(self.bins)}")
        if any(v <= 0 for v in self.noise_vars):
            raise ValueError(f"sweep noise_vars (σ²) must be positive numbers, got {list(self.noise_vars)}")
        bad = [n for n in self.sizes if not self.k < n <= self.n_test]
        if bad:
            raise ValueError(f"sweep sizes must be integers in (k, n_test] = ({self.k}, {self.n_test}] "
                             f"(they are the first N of the n_test test images), got {bad}")


# ---------------------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------------------


# Version 2: the Euclidean kNN distances are exact where they decide a neighbour or a count (they carried the
# matmul form's rounding before, which could pick wrong neighbours among points closer than ~1e-7 of the scale).
@stage("estimates", "2", EstimatesConfig, deps=("classifier",))
def estimates(ctx: Context) -> dict:
    """Binning, KDE, Kraskov and KSG estimates (nats) for one layer of one classifier, on N test images.

    Metrics: binning_xt, binning_ty (I(X;T), I(T;Y) at ``n_bins``), kde_upper, kde_lower (bounds on
    I(X; T+ε) at σ² = ``noise_var``), kraskov_xt (Ĥ_KL(T+ε) − H(ε), same σ², ``k`` neighbours), ksg_xt
    (KSG I(X;T), ``k`` neighbours, marginals at unit RMS distance); and n, log_n, dims, distinct (distinct
    activation rows), label_entropy, nn_sq_dist_median, noise_entropy, seconds per estimator.
    """
    c = ctx.config
    with _estimator_threads(c.n_test):
        return _estimates_of(ctx, *_layer_data(ctx, c.n_test))


def _estimates_of(ctx: Context, pixels: np.ndarray, t: np.ndarray, y: np.ndarray) -> dict:
    c = ctx.config
    n, d = t.shape
    seconds = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        seconds[name] = round(time.perf_counter() - t0, 3)
        return out

    kde = timed("kde", lambda: E.kde_mi_bounds(t, c.noise_var))
    out = dict(
        layer=c.layer, n=n, log_n=math.log(n), dims=d,
        distinct=int(len(np.unique(t, axis=0))),
        label_entropy=_label_entropy(y),
        nn_sq_dist_median=float(np.median(timed("nn", lambda: nearest_sq_distances(t)))),
        binning_xt=timed("binning_xt", lambda: E.binning_mi(t, n_bins=c.n_bins)),
        binning_ty=timed("binning_ty", lambda: E.binning_mi_labels(t, y, n_bins=c.n_bins)),
        kde_upper=kde.upper, kde_lower=kde.lower, noise_entropy=kde.noise_entropy,
        kraskov_xt=_finite_or_none(timed("kraskov", lambda: _kraskov_mi(t, _noise(t.shape, c.seed),
                                                                           c.noise_var, c.k))),
        ksg_xt=timed("ksg", lambda: E.ksg_mi(unit_rms(pixels), unit_rms(t), c.k)),
    )
    out["seconds"] = seconds
    kraskov = "-inf" if out["kraskov_xt"] is None else f"{out['kraskov_xt']:.4g}"
    ctx.log(f"{c.layer} (D={d}, N={n}, log N={math.log(n):.3f}): binning {out['binning_xt']:.3f}, "
            f"KDE {kde.lower:.3f}..{kde.upper:.3f}, Kraskov {kraskov}, KSG {out['ksg_xt']:.3f}")
    return out


@stage("estimator_sweep", "2", SweepConfig, deps=("classifier",))  # version 2: as ``estimates``
def estimator_sweep(ctx: Context) -> dict:
    """The estimators of one layer against their knobs: the bin count, σ², and N (the first N test images).

    sweep.npz: ``bins`` with binning_xt_by_bins and binning_ty_by_bins; ``noise_vars`` with
    kde_upper_by_var, kde_lower_by_var and kraskov_xt_by_var; ``sizes`` with binning_xt_by_n (at
    ``n_bins``), kde_upper_by_n, kde_lower_by_n, kraskov_xt_by_n (at ``noise_var``) and ksg_xt_by_n. Every
    other knob stays at its default while one moves. Kraskov values that are -inf (k exact duplicates
    among the points) are stored as NaN. Metrics: layer, n, log_n, dims, label_entropy, nn_sq_dist_median
    (the layer's distance scale, to read the σ² axis against) and sweep_seconds.
    """
    c = ctx.config
    with _estimator_threads(c.n_test):
        return _sweep_of(ctx, *_layer_data(ctx, c.n_test))


def _sweep_of(ctx: Context, pixels: np.ndarray, t: np.ndarray, y: np.ndarray) -> dict:
    c = ctx.config
    g = _noise(t.shape, c.seed)
    t0 = time.perf_counter()
    bins = np.array(c.bins)
    by_bins = np.array([(E.binning_mi(t, n_bins=b), E.binning_mi_labels(t, y, n_bins=b)) for b in c.bins])
    variances = np.array(c.noise_vars, dtype=np.float64)
    by_var = []
    for v in variances:
        kde = E.kde_mi_bounds(t, float(v))
        by_var.append((kde.upper, kde.lower, _kraskov_mi(t, g, float(v), c.k)))
    by_var = np.array(by_var)
    sizes = np.array(c.sizes)
    by_n = []
    for n in c.sizes:
        kde = E.kde_mi_bounds(t[:n], c.noise_var)
        by_n.append((E.binning_mi(t[:n], n_bins=c.n_bins), kde.upper, kde.lower,
                     _kraskov_mi(t[:n], g[:n], c.noise_var, c.k),
                     E.ksg_mi(unit_rms(pixels[:n]), unit_rms(t[:n]), c.k)))
    by_n = np.array(by_n)
    by_var[~np.isfinite(by_var)] = np.nan
    by_n[~np.isfinite(by_n)] = np.nan
    ctx.save_npz("sweep.npz", bins=bins, binning_xt_by_bins=by_bins[:, 0], binning_ty_by_bins=by_bins[:, 1],
                 noise_vars=variances, kde_upper_by_var=by_var[:, 0], kde_lower_by_var=by_var[:, 1],
                 kraskov_xt_by_var=by_var[:, 2], sizes=sizes, binning_xt_by_n=by_n[:, 0], kde_upper_by_n=by_n[:, 1],
                 kde_lower_by_n=by_n[:, 2], kraskov_xt_by_n=by_n[:, 3], ksg_xt_by_n=by_n[:, 4])
    seconds = time.perf_counter() - t0
    ctx.log(f"{c.layer}: {len(bins)} bin counts, {len(variances)} σ², {len(sizes)} sizes in {seconds:.1f} s")
    return dict(layer=c.layer, n=len(t), log_n=math.log(len(t)), dims=t.shape[1],
                label_entropy=_label_entropy(y), nn_sq_dist_median=float(np.median(nearest_sq_distances(t))),
                sweep_seconds=seconds)


ESTIMATES, ESTIMATOR_SWEEP = estimates, estimator_sweep
STAGES = (ESTIMATES, ESTIMATOR_SWEEP)


# ---------------------------------------------------------------------------------------------------------
# The section: settings and refs
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepSettings:
    """Which snapshot is swept, and the knob values (each defaults to the stage's)."""

    regime: str = "regular"  # a dynamics regime
    step: int | None = None  # a dynamics checkpoint; None: the last one
    bins: tuple[int, ...] = SweepConfig.bins
    noise_vars: tuple[float, ...] = SweepConfig.noise_vars
    sizes: tuple[int, ...] = SweepConfig.sizes


@dataclass(frozen=True, kw_only=True)
class EstimatorsSettings:
    """The ``estimators`` section (Appendix B), on the §5.3 snapshots."""

    layers: tuple[str, ...] | None = None  # None: the dynamics layers
    n_test: int = EstimatesConfig.n_test
    n_bins: int = EstimatesConfig.n_bins
    noise_var: float = EstimatesConfig.noise_var
    k: int = EstimatesConfig.k
    seed: int = EstimatesConfig.seed
    sweep: SweepSettings = field(default_factory=SweepSettings)

    def estimates_config(self, layer: str) -> dict:
        return dict(layer=layer, n_test=self.n_test, n_bins=self.n_bins, noise_var=self.noise_var, k=self.k,
                    seed=self.seed)

    def __post_init__(self):
        # the knobs' own checks (n_test, k, n_bins, noise_var, and the sweep's values against them)
        SweepConfig(**self.estimates_config(""), bins=self.sweep.bins, noise_vars=self.sweep.noise_vars,
                    sizes=self.sweep.sizes)


def estimators_plan(P: Params) -> dict:
    """Refs of the appendix, built on the training-dynamics plan (§5.3).

    Returns {"steps": [...], "layers": [...], "nce_layers": [...], "sweep": {"regime", "step",
    "layers": {layer: estimator_sweep ref}}, "regimes": {regime: {"snapshots": {step: ref},
    "estimates": {layer: {step: ref}}, "nce": {layer: {step: ref}}, "inversion": ...}}, "replicates": ...,
    "paired": ...}. The snapshots and
    NCEs are the dynamics chapter's own refs (same keys), so nothing is trained twice; ``estimates`` cover
    every layer in the ``estimators`` section, the NCE only the dynamics layers.
    """
    S = P.section("estimators")
    D = P.section("dynamics")
    dyn = dynamics_plan(P)
    layers = list(S.layers or dyn["layers"])
    check_layers(layers, D.classifier.arch, "estimators.layers")
    out = {"steps": dyn["steps"], "layers": layers, "nce_layers": dyn["layers"], "regimes": {},
           "replicates": dyn["replicates"],  # seed replicates of the NCE: its training noise
           "paired": dyn["paired"]}  # with paired_seeds: every snapshot's seeds, for per-seed paired differences
    for regime, R in dyn["regimes"].items():
        out["regimes"][regime] = {
            "snapshots": R["snapshots"],
            "estimates": {l: {s: ref(ESTIMATES, S.estimates_config(l), classifier=snap)
                              for s, snap in R["snapshots"].items()} for l in layers},
            "nce": R["nce"],
            "inversion": R["inversion"],  # the main seed of each NCE (paired differences)
        }
    sw = S.sweep
    if sw.regime not in dyn["regimes"]:
        raise ConfigError(f"estimators.sweep.regime: {sw.regime!r} is not a dynamics regime "
                          f"({', '.join(dyn['regimes'])})")
    step = dyn["steps"][-1] if sw.step is None else int(sw.step)
    if step not in dyn["steps"]:
        raise ConfigError(f"estimators.sweep.step: {step} is not a dynamics checkpoint ({dyn['steps']})")
    snap = dyn["regimes"][sw.regime]["snapshots"][step]
    sweep_refs = {l: ref(ESTIMATOR_SWEEP, {**S.estimates_config(l), "bins": sw.bins, "noise_vars": sw.noise_vars,
                                           "sizes": sw.sizes}, classifier=snap) for l in layers}
    out["sweep"] = {"regime": sw.regime, "step": step, "layers": sweep_refs}
    return out
