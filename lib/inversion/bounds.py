"""The negative cross-entropy (NCE) bound of §4.1, with its sampling error.

For an inversion model p_theta(x | h) and held-out pairs T,
    NCE = -H*(x | h) = (1/|T|) sum_{(x,h) in T} log p_theta(x | h)   (nats per image)
and I(x; h) >= H(x) - H*(x | h) = H(x) + NCE, so the NCE bounds the mutual information up to the
constant H(x). The same estimate for an unconditional model is -H*(x) <= -H(x): an estimate (an upper
bound) of the data entropy, not of a bound on I.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import torch
from tqdm.auto import tqdm


@dataclasses.dataclass(frozen=True)
class NCE:
    nats: float  # mean log p(x | h) per image
    stderr: float  # standard error of that mean over test images
    n: int  # test images
    dims: int  # sub-pixels per image

    @property
    def bits_per_dim(self) -> float:
        return -self.nats / (self.dims * math.log(2.0))

    def as_dict(self) -> dict:
        return dict(nats=self.nats, stderr=self.stderr, n=self.n, dims=self.dims, bits_per_dim=self.bits_per_dim)


@torch.no_grad()
def per_image_log_prob(model, images, contexts=None, batch_size=256, device=None, progress=True):
    """log p(x | h) for every test image, in nats, as float64 [N]; the model is evaluated in eval mode."""
    if contexts is not None and len(contexts) != len(images):
        raise ValueError(f"{len(images)} images but {len(contexts)} contexts; they must pair up")
    was_training = model.training
    model.eval()
    if device is not None:
        model.to(device)
    out = []
    try:
        for start in tqdm(range(0, len(images), batch_size), disable=not progress, desc="log p(x|h)", leave=False):
            x = images[start : start + batch_size]
            h = None if contexts is None else contexts[start : start + batch_size]
            out.append(model.log_prob(x, h).double().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def summarize(log_probs: torch.Tensor, dims: int) -> NCE:
    """Mean and standard error of per-image log-likelihoods."""
    lp = torch.as_tensor(log_probs, dtype=torch.float64)
    if lp.dim() != 1 or len(lp) < 2:
        raise ValueError(f"need a 1-d tensor of at least 2 per-image log-probs, got shape {list(lp.shape)}")
    if not torch.isfinite(lp).all():
        raise ValueError("per-image log-probs contain NaN or inf")
    return NCE(nats=lp.mean().item(), stderr=(lp.std(unbiased=True) / math.sqrt(len(lp))).item(), n=len(lp), dims=dims)


def nce(model, images, contexts=None, batch_size=256, device=None, progress=True) -> NCE:
    """The NCE of ``model`` on test pairs (images, contexts); contexts=None for an unconditional model."""
    lp = per_image_log_prob(model, images, contexts, batch_size, device, progress)
    return summarize(lp, dims=int(images[0].numel()))


def paired_difference(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Mean of a - b over the same test images and its paired standard error (smaller than either alone,
    because per-image difficulty cancels). Used for NCE differences between layers or architectures."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.shape != b.shape or a.dim() != 1 or len(a) < 2:
        raise ValueError(f"need two 1-d tensors over the same >= 2 images, got {list(a.shape)} and {list(b.shape)}")
    d = a - b
    return d.mean().item(), (d.std(unbiased=True) / math.sqrt(len(d))).item()


def difference_noise(se: float, seed_sd: float) -> float:
    """The standard deviation of an NCE difference between two separately trained inversion models: the paired
    test-set standard error ``se`` and, for each of the two models, the seed-to-seed spread ``seed_sd`` of the
    NCE (the part of the error that comes from training the inversion model, which ``se`` does not see)."""
    if se < 0 or seed_sd < 0:
        raise ValueError(f"standard errors are non-negative, got se={se}, seed_sd={seed_sd}")
    return math.sqrt(se**2 + 2 * seed_sd**2)


@dataclasses.dataclass(frozen=True)
class SeedPairedDifference:
    """An NCE difference between two settings (layers, networks, snapshots) measured with common random
    numbers: for each seed s both inversion models were trained with s (the same initialisation of the
    shared weights, batch order and dropout masks), giving one paired difference d_s per seed.

    ``value`` is the mean of the d_s; ``noise`` its standard deviation, from the spread of the d_s across
    seeds (what training the models adds: sd(d_s) / sqrt(S)) and the paired test-set standard error of the
    seed-averaged per-image differences (what the choice of test images adds, common to every seed).
    ``independent_noise`` is what the same models give when treated as independent (today's
    ``difference_noise`` with the seed spread of each side), for comparison."""

    value: float
    noise: float
    n_seeds: int
    seed_sd: float  # sd of the per-seed paired differences d_s
    test_se: float
    independent_noise: float


def seed_paired_difference(a: Mapping[int, torch.Tensor], b: Mapping[int, torch.Tensor]) -> SeedPairedDifference:
    """``a`` and ``b`` map seed -> per-image log-probs [N] of the two settings' inversion models on the same N
    test images; the seeds both have (at least 2) are paired (``SeedPairedDifference``)."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        raise ValueError(f"paired seeds need at least two seeds that both sides share, got {seeds}")
    A = torch.stack([torch.as_tensor(a[s], dtype=torch.float64) for s in seeds])  # [S, N]
    B = torch.stack([torch.as_tensor(b[s], dtype=torch.float64) for s in seeds])
    if A.shape != B.shape or A.shape[1] < 2:
        raise ValueError(f"need the same >= 2 test images on both sides, got {list(A.shape)} and {list(B.shape)}")
    S, N = A.shape
    d = (A - B).mean(1)  # one paired difference per seed
    seed_sd = d.std(unbiased=True).item()
    per_image = (A - B).mean(0)
    test_se = (per_image.std(unbiased=True) / math.sqrt(N)).item()
    spread = math.sqrt((A.mean(1).var(unbiased=True).item() + B.mean(1).var(unbiased=True).item()) / 2)
    return SeedPairedDifference(value=d.mean().item(), noise=math.sqrt(seed_sd**2 / S + test_se**2), n_seeds=S,
                                seed_sd=seed_sd, test_se=test_se,
                                independent_noise=difference_noise(paired_difference(A[0], B[0])[1], spread))
