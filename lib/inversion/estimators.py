"""Baseline mutual-information estimators of the paper's Appendix B (all results in nats).

Nash, Kushman & Williams (2019), Appendix B, contrast their inversion-model bound with three
estimators used in the information-bottleneck literature:

* **Binning** (Shwartz-Ziv & Tishby 2017, the paper's eq. 12): activations are discretised into
  equal bins and the plug-in mutual information of the resulting discrete variables is computed
  over the empirical input distribution.  :func:`binned_entropy`, :func:`binning_mi`,
  :func:`binning_mi_labels`.
* **KDE / pairwise-distance bounds** (Kolchinsky & Tracey 2017, as used by Saxe et al. 2018 and
  the paper's Section 3.3): Gaussian noise ε ~ N(0, σ²I) is added to the activations and
  I(T+ε; X) is bracketed from above and below.  :func:`kde_mi_bounds`.
* **Nearest neighbours** (Kraskov, Stögbauer & Grassberger 2004): the Kozachenko–Leonenko entropy
  estimator in the form of the paper's eq. 13–14, and the KSG mutual-information estimator
  (algorithm 1 of KSG).  :func:`kraskov_entropy`, :func:`ksg_mi`.

Every pairwise computation is done in blocks of ``chunk_size`` query rows against all N points, so
memory is O(chunk_size · N) rather than O(N²); N = 10,000 points of d = 2,000 dimensions fit in a
few hundred MB.  Distances are computed in float64 with torch.

All of these estimators see only a finite sample, and on a deterministic network evaluated on N
distinct inputs both binning (with fine bins) and the KDE bound saturate at log N: they then measure
N, the bin width or σ² rather than the layer.  The tests in ``tests/test_estimators.py`` pin this
behaviour down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import torch

__all__ = [
    "KDEBounds",
    "binned_entropy",
    "binning_mi",
    "binning_mi_labels",
    "kde_mi_bounds",
    "kraskov_entropy",
    "ksg_mi",
]

# Default block size: about 2**23 float64 entries (64 MB) per [chunk, N] distance block.
_BLOCK_ENTRIES = 2**23


# ---------------------------------------------------------------------------------------------
# Input checking
# ---------------------------------------------------------------------------------------------


def _to_numpy(a, name: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    try:
        return np.asarray(a)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name}: could not be converted to an array ({exc})") from exc


def _samples(a, name: str, *, min_rows: int = 1) -> np.ndarray:
    """Return ``a`` as a finite float64 array [N, d]; a 1-D array is N scalar samples."""
    arr = _to_numpy(a, name)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(
            f"{name}: expected a 1-D [N] or 2-D [N, d] array of samples, got ndim={arr.ndim} "
            f"(shape {arr.shape}); flatten feature maps to [N, d] first"
        )
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.number)):
        raise ValueError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise ValueError(f"{name}: complex values are not supported")
    if arr.shape[1] < 1:
        raise ValueError(f"{name}: samples have zero dimensions (shape {arr.shape})")
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name}: need at least {min_rows} samples, got {arr.shape[0]}")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"{name}: contains {bad} NaN or infinite value(s)")
    return arr


def _check_same_length(**arrays: np.ndarray) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise ValueError(f"mismatched numbers of samples: {desc}")


def _check_int(value, name: str, *, low: int, high: int | None = None, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}{why}, got {value}")
    return value


def _check_positive(value, name: str, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'} and finite, got {value}")
    return value


def _chunk_rows(chunk_size, n: int) -> int:
    if chunk_size is None:
        return max(1, min(n, _BLOCK_ENTRIES // n))
    return _check_int(chunk_size, "chunk_size", low=1)


def _k_neighbours(k, n: int) -> int:
    return _check_int(k, "k", low=1, high=n - 1, why=f" (there are only N-1 = {n - 1} other points)")


# ---------------------------------------------------------------------------------------------
# Pairwise distances, in blocks
# ---------------------------------------------------------------------------------------------


_UNIT_ROUNDOFF = 2.0**-53  # float64


class _Euclidean:
    """Squared Euclidean distances from a block of rows to all rows, via ‖a‖² + ‖b‖² − 2a·b, with a
    rigorous bound on their rounding error, and exact distances for the pairs where that error matters.

    The matmul form is ~5-15x faster than forming differences, but it cancels catastrophically when
    ‖a‖² ≫ ‖a − b‖²: its absolute error is about D·u·(‖a‖² + ‖b‖²) (u = 2⁻⁵³), so distances below
    ~1e-7 of the data's scale are noise, which swamps jitter of 1e-10 on discrete data. Centring the
    data first (distances are translation invariant) removes a common offset; ``bound`` gives each
    entry's worst-case error against the original rows' distance, (2D + 13)·u·(‖a‖² + ‖b‖²) with a, b
    centred (a dot product of length D errs by at most γ_D Σ|a_k b_k| ≤ D·u·(‖a‖² + ‖b‖²)/2 (Higham,
    Accuracy and Stability, §3.1), the two norms alike; the three additions; and the centring's own
    rounding, ≤ u per coordinate of a and b, which moves a squared distance by ≤ 4u·(‖a‖² + ‖b‖²)), and
    ``exact`` recomputes chosen pairs from differences of the original rows, so a
    caller decides every comparison either from the fast value (when its error interval decides it) or
    exactly. Tiny negative squared distances are clamped at 0; self-distances are exactly 0.
    """

    def __init__(self, data: np.ndarray):
        self.raw = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float64))
        self.data = self.raw - self.raw.mean(dim=0, keepdim=True)
        self.sq_norms = (self.data * self.data).sum(dim=1)
        self.error_scale = (2 * self.data.shape[1] + 13) * _UNIT_ROUNDOFF

    def block(self, start: int, stop: int) -> torch.Tensor:
        a = self.data[start:stop]
        d2 = self.sq_norms[start:stop, None] + self.sq_norms[None, :] - 2.0 * (a @ self.data.T)
        d2.clamp_(min=0.0)
        rows = torch.arange(stop - start)
        d2[rows, rows + start] = 0.0
        return d2

    def bound(self, start: int, stop: int) -> torch.Tensor:
        """The worst-case absolute error of ``block(start, stop)``'s entries."""
        return self.error_scale * (self.sq_norms[start:stop, None] + self.sq_norms[None, :])

    def exact(self, rows: torch.Tensor, cols: torch.Tensor, pairs_per_chunk: int = 1 << 16) -> torch.Tensor:
        """Exact squared distances of the pairs (rows[m], cols[m]), from differences of the original rows."""
        out = torch.empty(len(rows), dtype=torch.float64)
        step = max(1, pairs_per_chunk // max(1, self.raw.shape[1] // 64))
        for i in range(0, len(rows), step):
            diff = self.raw[rows[i : i + step]] - self.raw[cols[i : i + step]]
            out[i : i + step] = (diff * diff).sum(dim=1)
        return out

    def make_exact(self, d2: torch.Tensor, where: torch.Tensor, start: int) -> torch.Tensor:
        """``d2`` (a block starting at row ``start``) with the entries ``where`` is True made exact, in place."""
        r, c = where.nonzero(as_tuple=True)
        if len(r):
            d2[r, c] = self.exact(r + start, c)
        return d2


def _kth_exact(euclid: _Euclidean, start: int, stop: int, k: int) -> torch.Tensor:
    """Per row of the block, the exact k-th smallest squared distance to another row: the k-th smallest
    upper bound U bounds it from above, so only entries whose lower bound is ≤ U can be among the k
    nearest, and those are made exact."""
    fast, err = euclid.block(start, stop), euclid.bound(start, stop)
    limit = _exclude_self(fast + err, start).kthvalue(k, dim=1).values[:, None]
    d2 = euclid.make_exact(fast.clone(), (fast - err) <= limit, start)
    return _exclude_self(d2, start).kthvalue(k, dim=1).values


def _marginal_distances(data: np.ndarray, metric: str):
    """Return a function (start, stop) -> [stop-start, N] distance block for ``metric`` (Chebyshev only:
    the Euclidean path goes through ``_Euclidean`` and its error bounds)."""
    # Chebyshev distances are exact (no cancellation), computed by torch.cdist with p = inf.
    t = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float64))
    return lambda start, stop: torch.cdist(t[start:stop], t, p=float("inf"))


def _exclude_self(block: torch.Tensor, start: int) -> torch.Tensor:
    rows = torch.arange(block.shape[0])
    block[rows, rows + start] = float("inf")
    return block


# ---------------------------------------------------------------------------------------------
# Binning (Shwartz-Ziv & Tishby 2017)
# ---------------------------------------------------------------------------------------------


def _entropy_from_ids(ids: np.ndarray) -> float:
    """Plug-in entropy −Σ p log p of the empirical distribution of integer symbols, in nats."""
    counts = np.unique(ids, return_counts=True)[1].astype(np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def _row_ids(arr: np.ndarray) -> np.ndarray:
    """Map each row of a 2-D array to an integer symbol; equal rows <-> equal symbols.

    Viewing a row's bytes as one opaque item makes np.unique compare whole rows exactly, so
    unlike a numeric hash there can be no collisions.
    """
    arr = np.ascontiguousarray(arr)
    rows = arr.view(np.dtype((np.void, arr.dtype.itemsize * arr.shape[1]))).ravel()
    return np.unique(rows, return_inverse=True)[1].ravel()


def _bin_symbols(t: np.ndarray, n_bins: int, value_range) -> np.ndarray:
    """Discretise every unit into ``n_bins`` equal bins and return one symbol per row."""
    if value_range is None:
        lo, hi = float(t.min()), float(t.max())
    else:
        try:
            lo, hi = (float(v) for v in value_range)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"value_range must be a pair (low, high), got {value_range!r}") from exc
        if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
            raise ValueError(f"value_range must be finite with low < high, got {value_range!r}")
    width = hi - lo
    if width == 0.0:  # constant activations (data range of zero width): everything in one bin
        return np.zeros(len(t), dtype=np.int64)
    # Values outside an explicit range go to the edge bins rather than being an error, as with
    # tanh units binned on [-1, 1]; `hi` itself belongs to the last bin.
    idx = np.floor((t - lo) * (n_bins / width))
    np.clip(idx, 0, n_bins - 1, out=idx)
    dtype = np.uint8 if n_bins <= 2**8 else (np.uint16 if n_bins <= 2**16 else np.uint32)
    return _row_ids(idx.astype(dtype))


def _discrete_ids(x, name: str, n: int) -> np.ndarray:
    """Symbols for a discrete variable given as ids [N] or as whole inputs [N, ...]."""
    arr = _to_numpy(x, name)
    if arr.ndim == 0:
        raise ValueError(f"{name}: expected one entry per sample, got a scalar")
    if len(arr) != n:
        raise ValueError(f"mismatched numbers of samples: t has {n}, {name} has {len(arr)}")
    if np.issubdtype(arr.dtype, np.number) and not np.issubdtype(arr.dtype, np.integer):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name}: contains NaN or infinite value(s)")
        arr = arr + 0.0  # -0.0 and 0.0 have different bytes but are the same input
    if arr.ndim == 1:
        return np.unique(arr, return_inverse=True)[1].ravel()
    if arr.dtype == object:
        raise ValueError(f"{name}: multi-dimensional object arrays are not supported")
    flat = arr.reshape(n, -1)
    if flat.shape[1] == 0:
        raise ValueError(f"{name}: inputs have zero size (shape {arr.shape})")
    return _row_ids(flat)


def _binning_setup(t, n_bins, value_range) -> np.ndarray:
    t = _samples(t, "t")
    n_bins = _check_int(n_bins, "n_bins", low=1)
    return _bin_symbols(t, n_bins, value_range)


def _discrete_mi(a: np.ndarray, b: np.ndarray) -> float:
    """I(A;B) = H(A) + H(B) − H(A,B) for integer symbol arrays, clipped at 0 against rounding."""
    joint = a.astype(np.int64) * (int(b.max()) + 1) + b.astype(np.int64)
    mi = _entropy_from_ids(a) + _entropy_from_ids(b) - _entropy_from_ids(joint)
    return max(mi, 0.0)


def binned_entropy(t, *, n_bins: int = 30, value_range=None) -> float:
    """H(T) of the binned activations: plug-in entropy of the row bin patterns, in nats.

    t: activations [N, d] (or [N]).  Each unit is cut into ``n_bins`` equal bins over
    ``value_range = (low, high)`` (default: the min and max over all of ``t``); values outside the
    range fall into the edge bins.  Each row's pattern of bin indices is one discrete symbol.
    """
    return _entropy_from_ids(_binning_setup(t, n_bins, value_range))


def binning_mi(t, x=None, *, n_bins: int = 30, value_range=None) -> float:
    """I(X;T) = H(T) − H(T|X) of binned activations over the empirical input distribution (eq. 12).

    Shwartz-Ziv & Tishby (2017) bin tanh units into 30 bins on [-1, 1] and compute eq. 12 exactly
    for a uniform distribution over the inputs.  Here each of the N rows of ``t`` is one draw of
    (x, t), weighted 1/N.

    x: the inputs, either as integer ids [N] (equal id = same input) or as the inputs themselves
       [N, ...] (identical rows = same input).  ``None`` means all N inputs are distinct; then
       H(T|X) = 0 for a deterministic network and the result is H(T) <= log N.  With fine bins and
       an injective network this saturates at exactly log N whatever the layer (the pitfall noted
       in Saxe et al. 2018).
    Returns nats.  H(T|X) is only non-zero if the same input appears with different activations
    (e.g. a stochastic network, or noise added before binning).
    """
    tsym = _binning_setup(t, n_bins, value_range)
    if x is None:
        return _entropy_from_ids(tsym)
    return _discrete_mi(tsym, _discrete_ids(x, "x", len(tsym)))


def binning_mi_labels(t, y, *, n_bins: int = 30, value_range=None) -> float:
    """I(T;Y) = H(T) − H(T|Y) of binned activations T and discrete labels y [N], in nats.

    The same plug-in computation as :func:`binning_mi` with the labels in place of the inputs;
    bounded above by min(H(T), H(Y)).
    """
    tsym = _binning_setup(t, n_bins, value_range)
    return _discrete_mi(tsym, _discrete_ids(y, "y", len(tsym)))


# ---------------------------------------------------------------------------------------------
# KDE / pairwise-distance bounds (Kolchinsky & Tracey 2017; Saxe et al. 2018)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KDEBounds:
    """Bounds on I(T+ε; X) in nats, with ε ~ N(0, σ²I); ``lower <= upper <= log N``.

    ``noise_entropy`` is H(ε) = (d/2)·log(2πeσ²); adding it to either bound gives the matching
    bound on the differential entropy H(T+ε).
    """

    upper: float
    lower: float
    noise_entropy: float


def kde_mi_bounds(t, noise_var: float, *, chunk_size: int | None = None) -> KDEBounds:
    """Upper and lower bounds on I(T+ε; X), ε ~ N(0, σ²I), from pairwise distances (nats).

    Setting: X is uniform over the N inputs, T = f(X) is deterministic with rows t_i, so T+ε is
    the Gaussian mixture p(z) = (1/N) Σ_i N(z; t_i, σ²I) and I(T+ε; X) = H(T+ε) − H(ε).

    Kolchinsky & Tracey (2017), "Estimating mixture entropy with pairwise distances", show that
    for any pairwise distance D between mixture components,

        Ĥ_D = H(T+ε | X) − (1/N) Σ_i log (1/N) Σ_j exp(−D(p_i ‖ p_j)),

    is an upper bound on H(T+ε) when D is the KL divergence and a lower bound when D is the
    Bhattacharyya distance.  For components N(t_i, σ²I) and N(t_j, σ²I):

        KL(p_i ‖ p_j) = ‖t_i − t_j‖² / (2σ²),     D_B(p_i, p_j) = ‖t_i − t_j‖² / (8σ²),

    and H(T+ε | X) = H(ε) = (d/2)·log(2πeσ²).  Subtracting H(ε) gives the bounds returned here:

        upper = −(1/N) Σ_i log (1/N) Σ_j exp(−‖t_i − t_j‖² / (2σ²)),
        lower = −(1/N) Σ_i log (1/N) Σ_j exp(−‖t_i − t_j‖² / (8σ²)).

    About the "(d/2)·log(1/4)" correction: Saxe et al.'s code evaluates the Bhattacharyya entropy
    bound as the KL entropy bound at variance 4σ², whose H(ε)-term is (d/2)·log(2πe·4σ²), and adds
    (d/2)·log(1/4) to turn that back into (d/2)·log(2πeσ²).  That correction belongs to the
    *entropy* bound; in the *mutual information* it cancels exactly against H(ε), so the MI lower
    bound is just the upper-bound formula with 2σ² replaced by 8σ², with no additive term.

    Both bounds lie in [0, log N]: they reach log N when all points are much further apart than σ
    (the saturation pitfall), and go to 0 as σ² → ∞.

    t: activations [N, d] (or [N]); noise_var: σ² > 0; chunk_size: rows per distance block
    (default: about 64 MB per block).  Returns a :class:`KDEBounds`.
    """
    data = _samples(t, "t")
    noise_var = _check_positive(noise_var, "noise_var (σ²)")
    n, d = data.shape
    step = _chunk_rows(chunk_size, n)
    euclid = _Euclidean(data)
    lse_kl = 0.0
    lse_bd = 0.0
    for start in range(0, n, step):
        d2 = euclid.block(start, min(start + step, n))
        lse_kl += torch.logsumexp(d2 / (-2.0 * noise_var), dim=1).sum().item()
        lse_bd += torch.logsumexp(d2 / (-8.0 * noise_var), dim=1).sum().item()
    log_n = math.log(n)
    # Each row's sum includes j = i (term exp(0) = 1), so both bounds are <= log N; clip the
    # ~1e-16 rounding excursions below 0 or above log N.
    upper = min(max(log_n - lse_kl / n, 0.0), log_n)
    lower = min(max(log_n - lse_bd / n, 0.0), upper)
    noise_entropy = 0.5 * d * math.log(2.0 * math.pi * math.e * noise_var)
    return KDEBounds(upper=upper, lower=lower, noise_entropy=noise_entropy)


# ---------------------------------------------------------------------------------------------
# Nearest-neighbour estimators (Kraskov, Stögbauer & Grassberger 2004)
# ---------------------------------------------------------------------------------------------


def kraskov_entropy(t, k: int = 3, *, eps: float = 0.0, chunk_size: int | None = None) -> float:
    """Kozachenko–Leonenko kNN estimate of the differential entropy H(T), in nats (eq. 13–14).

    The paper's Appendix B (eq. 13–14, following Kraskov et al. 2004, eq. 20):

        Ĥ = (D/N) Σ_i log(r_i + ε) + (D/2) log π − log Γ(D/2 + 1) + ψ(N) − ψ(k),

    where D is the dimension, r_i the Euclidean distance from t_i to its k-th nearest neighbour
    (itself excluded), ψ the digamma function, and (D/2) log π − log Γ(D/2 + 1) the log volume of
    the unit D-ball.

    ε (``eps``) is not noise: it is a small non-negative constant added to each r_i so that
    log(r_i) stays finite when a point has k exact duplicates (r_i = 0), as happens for a
    deterministic network on repeated or saturating inputs.  With ``eps=0`` (the default, the
    plain estimator) duplicates give −inf; with ``eps > 0`` the result then depends on log ε,
    i.e. it measures ε rather than the data, so treat it as a diagnostic.

    Distances come from the fast matmul form with a rigorous error bound; every distance that could be
    the k-th nearest is recomputed from differences (``_Euclidean``), so r_i is exact: no cancellation
    error, the true k-th neighbour even among points 1e-10 apart, exactly 0 for duplicates.

    t: samples [N, D] (or [N]); k: 1 <= k <= N-1; chunk_size: rows per distance block.
    """
    data = _samples(t, "t", min_rows=2)
    n, dim = data.shape
    k = _k_neighbours(k, n)
    eps = _check_positive(eps, "eps", allow_zero=True)
    step = _chunk_rows(chunk_size, n)
    euclid = _Euclidean(data)
    sum_log_r = 0.0
    for start in range(0, n, step):
        stop = min(start + step, n)
        r = _kth_exact(euclid, start, stop, k).sqrt()
        with np.errstate(divide="ignore"):
            sum_log_r += float(np.log(r.numpy() + eps).sum())
    log_unit_ball = 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim + 1.0)
    psi = torch.special.digamma(torch.tensor([float(n), float(k)], dtype=torch.float64))
    return dim * sum_log_r / n + log_unit_ball + float(psi[0] - psi[1])


def ksg_mi(x, y, k: int = 3, *, metric: str = "euclidean", chunk_size: int | None = None) -> float:
    """Kraskov–Stögbauer–Grassberger estimate of I(X;Y) (KSG 2004, algorithm 1, eq. 8), in nats.

        Î = ψ(k) + ψ(N) − ⟨ψ(n_x(i) + 1) + ψ(n_y(i) + 1)⟩_i

    For each point i, ε_i is the distance to its k-th nearest neighbour in the joint space under
    ‖(dx, dy)‖ = max(‖dx‖, ‖dy‖), and n_x(i) (n_y(i)) counts the other points strictly closer than
    ε_i to x_i (y_i) in the marginal space.  KSG allow any norm in each marginal as long as the
    joint norm is this maximum: the unit-ball volumes then cancel, so the formula has no volume
    terms.

    metric: the marginal norm.  ``"euclidean"`` (default) matches the Euclidean r_i of
    :func:`kraskov_entropy` and uses the matmul trick with a rigorous bound on its rounding error,
    recomputing from differences every distance that could decide ε_i or a count (so the estimate is
    that of exact distances, also for jittered discrete data): N = 10,000 points with 2,000 + 2,000
    dimensions took ~30 s on 2 (shared) cores with the plain matmul form; the bookkeeping of the exact
    path costs 2.2x that (bench/knn_exact.py: N = 2,000, 784 + 2,000 dimensions, 1.59 s against 0.72 s).  ``"chebyshev"`` (max-norm in each marginal, as in
    KSG's own experiments and in NPEET) is exact but goes through torch.cdist(p=inf), which has no
    matmul shortcut: ~330 s for the same problem.  In one dimension the two are identical.

    Caveats.  The joint max-norm makes the estimate depend on the relative scale of x and y: in
    high dimensions, if one marginal's distances are uniformly larger, that marginal alone sets
    every ε_i, the other's counts become N-1, and the estimate collapses to exactly 0 (standardise
    the marginals first if that is not intended).  KSG is biased low for strong dependence in
    several dimensions (about −0.2 nats at I = 2.5 nats over 3 Gaussian pairs, N = 2000).  The
    estimator assumes continuous data: exact ties make ε_i = 0; add a tiny jitter (e.g. 1e-10) to
    discrete-valued data first.  Estimates can be slightly negative; they are not clipped.

    x: [N, dx] (or [N]); y: [N, dy] (or [N]); k: 1 <= k <= N-1; chunk_size: rows per block.
    """
    xs = _samples(x, "x", min_rows=2)
    ys = _samples(y, "y", min_rows=2)
    _check_same_length(x=xs, y=ys)
    if metric not in ("chebyshev", "euclidean"):
        raise ValueError(f"metric must be 'chebyshev' or 'euclidean', got {metric!r}")
    n = len(xs)
    k = _k_neighbours(k, n)
    step = _chunk_rows(chunk_size, n)
    total = 0.0
    if metric == "euclidean":
        ex, ey = _Euclidean(xs), _Euclidean(ys)
        blocks = lambda a, b: _ksg_exact_blocks(ex, ey, a, b, k)  # noqa: E731
    else:
        dist_x, dist_y = _marginal_distances(xs, metric), _marginal_distances(ys, metric)
        blocks = lambda a, b: (_exclude_self(dist_x(a, b), a), _exclude_self(dist_y(a, b), a))  # noqa: E731
    for start in range(0, n, step):
        dx, dy = blocks(start, min(start + step, n))
        # Counting on the same dx, dy blocks the joint distance came from keeps the strict "<"
        # consistent: the k-th neighbour itself is never counted in the marginal that sets ε_i.
        eps_i = torch.maximum(dx, dy).kthvalue(k, dim=1).values[:, None]
        n_x = (dx < eps_i).sum(dim=1).to(torch.float64)
        n_y = (dy < eps_i).sum(dim=1).to(torch.float64)
        total += (torch.special.digamma(n_x + 1.0) + torch.special.digamma(n_y + 1.0)).sum().item()
    psi = torch.special.digamma(torch.tensor([float(k), float(n)], dtype=torch.float64))
    return float(psi[0] + psi[1]) - total / n


def _ksg_exact_blocks(ex: _Euclidean, ey: _Euclidean, start: int, stop: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared marginal distances of one block for KSG, exact wherever they decide ε_i or a count.

    With U the k-th smallest upper bound of the joint (max) distance, the true ε_i² ≤ U: only pairs whose
    two marginal lower bounds are both ≤ U can be among the k nearest, and they are made exact, which
    gives ε_i² exactly. A count then needs an exact marginal distance only where its error interval
    contains ε_i² (elsewhere the fast value is certainly below or above it): those few are made exact
    too. Every other entry keeps its fast value, certainly on the right side of ε_i². Comparisons on
    squared distances order as on distances."""
    fx, errx, fy, erry = ex.block(start, stop), ex.bound(start, stop), ey.block(start, stop), ey.bound(start, stop)
    limit = _exclude_self(torch.maximum(fx + errx, fy + erry), start).kthvalue(k, dim=1).values[:, None]
    candidate = ((fx - errx) <= limit) & ((fy - erry) <= limit)
    rows = torch.arange(fx.shape[0])
    candidate[rows, rows + start] = False
    dx, dy = ex.make_exact(fx.clone(), candidate, start), ey.make_exact(fy.clone(), candidate, start)
    joint = torch.where(candidate, torch.maximum(dx, dy), torch.full_like(dx, float("inf")))
    eps2 = joint.kthvalue(k, dim=1).values[:, None]
    for d, euclid, err in ((dx, ex, errx), (dy, ey, erry)):
        _exclude_self(euclid.make_exact(d, ((d - eps2).abs() <= err) & ~candidate, start), start)
    return dx, dy
