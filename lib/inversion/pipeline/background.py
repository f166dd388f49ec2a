"""The Background chapter's worked example: a distribution small enough that H(x | h) is known exactly.

x is a binary 3x3 image: one of four bar templates, chosen uniformly, with every pixel flipped independently
with probability ``flip``. All 512 images and their probabilities can be enumerated, so H(x) and, for any
deterministic context h(x), H(x | h) = H(x) - H(h) are exact; a PixelCNN++ trained on samples is then
evaluated by its exact cross-entropy H*(x | h), the bound of eqs. 5-7 with no sampling error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from inversion.bounds import per_image_log_prob, summarize
from inversion.models.pixelcnn import PixelCNNConfig, PixelCNNpp, train_pixelcnn
from inversion.pipeline.cache import Context, ref, stage
from inversion.pipeline.common import torch_threads
from inversion.pipeline.params import Params

__all__ = ["TOY_TEMPLATES", "toy_distribution", "toy_context", "toy_exact_entropies", "TOY_BOUND",
           "BackgroundSettings", "background_plan"]

TOY_TEMPLATES = np.array([
    [[0, 0, 0], [1, 1, 1], [0, 0, 0]],  # horizontal bar
    [[0, 1, 0], [0, 1, 0], [0, 1, 0]],  # vertical bar
    [[1, 0, 0], [0, 1, 0], [0, 0, 1]],  # diagonal
    [[0, 0, 1], [0, 1, 0], [1, 0, 0]],  # anti-diagonal
], dtype=np.int64)
CONTEXTS = ("none", "count", "rows", "image")


def toy_distribution(flip: float) -> tuple[np.ndarray, np.ndarray]:
    """All 512 binary 3x3 images [512, 3, 3] and their exact probabilities: one of four bar templates, chosen
    uniformly, with every pixel flipped independently with probability ``flip``."""
    states = ((np.arange(512)[:, None] >> np.arange(9)[::-1]) & 1).reshape(512, 3, 3)
    diff = (states[:, None] != TOY_TEMPLATES[None]).reshape(512, 4, 9).sum(-1)
    p = (flip ** diff * (1 - flip) ** (9 - diff)).mean(1)
    return states, p / p.sum()


def toy_context(states: np.ndarray, kind: str) -> np.ndarray | None:
    """A deterministic h(x): "none" (no context), "count" (number of lit pixels, one-hot of 10), "rows" (the
    three row sums, each one-hot of 4), "image" (x itself, 9 bits; H(x | h) = 0)."""
    n = len(states)
    if kind == "none":
        return None
    if kind == "count":
        return np.eye(10, dtype=np.float32)[states.reshape(n, -1).sum(1)]
    if kind == "rows":
        return np.concatenate([np.eye(4, dtype=np.float32)[states[:, r].sum(1)] for r in range(3)], 1)
    if kind == "image":
        return states.reshape(n, -1).astype(np.float32)
    raise ValueError(f"unknown toy context {kind!r}; contexts: {', '.join(CONTEXTS)}")


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def toy_exact_entropies(flip: float, kinds) -> dict:
    """H(x) and, for each context kind, H(x | h) = H(x) - H(h) (h is a function of x), in nats."""
    states, p = toy_distribution(flip)
    hx = _entropy(p)
    out = {"H(x)": hx}
    for kind in kinds:
        h = toy_context(states, kind)
        if h is None:
            out[kind] = hx
            continue
        _, inv = np.unique(h, axis=0, return_inverse=True)
        ph = np.bincount(inv.ravel(), weights=p)
        out[kind] = hx - _entropy(ph)
    return out


@dataclass(frozen=True)
class ToyConfig:
    flip: float = 0.1  # probability that a pixel of the template is flipped
    contexts: tuple[Literal[CONTEXTS], ...] = CONTEXTS  # one inversion model per context kind
    n_train: int = 20000  # training samples
    n_test: int = 2000  # fresh test samples for the NCE estimate
    eval_at: tuple[int, ...] = (0, 100, 300, 1000)  # training steps at which the exact NCE is computed
    n_filters: int = 32
    n_resnet: int = 1
    n_resolutions: int = 2
    dropout: float = 0.0
    batch_size: int = 64
    lr: float = 2e-3
    lr_decay: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.flip < 0.5:
            raise ValueError(f"flip must lie in (0, 0.5), got {self.flip}")
        if not self.contexts:
            raise ValueError(f"contexts: give at least one of {', '.join(CONTEXTS)}")
        if self.n_train < 1 or self.n_test < 2:
            raise ValueError(f"n_train must be >= 1 and n_test >= 2, got {self.n_train} and {self.n_test}")
        if not self.eval_at or min(self.eval_at) < 0:
            raise ValueError(f"eval_at must be a non-empty list of step counts >= 0, got {list(self.eval_at)}")
        self.pixelcnn(steps=0)  # its own checks of the model and training settings

    def pixelcnn(self, steps: int) -> PixelCNNConfig:
        """The PixelCNN++ of one toy inversion model, trained up to ``steps``."""
        return PixelCNNConfig(n_filters=self.n_filters, n_resnet=self.n_resnet, n_resolutions=self.n_resolutions,
                              dropout=self.dropout, steps=steps, batch_size=self.batch_size, lr=self.lr,
                              lr_decay=self.lr_decay, seed=self.seed)


@stage("toy_bound", "1", ToyConfig)
def toy_bound(ctx: Context) -> dict:
    """Exact cross-entropy of PixelCNN++ inversion models of a known discrete distribution, during training.

    For each context kind a model is trained on ``n_train`` samples; at each step count in ``eval_at`` its
    cross-entropy H*(x | h) = -sum_x p(x) log p_theta(x | h(x)) is computed exactly over all 512 images,
    and at the end the NCE is also estimated on ``n_test`` fresh samples, as the layer chapters must.
    """
    c = ctx.config
    states, p = toy_distribution(c.flip)
    rng = np.random.default_rng(c.seed)
    train_ix, test_ix = rng.choice(512, size=c.n_train, p=p), rng.choice(512, size=c.n_test, p=p)
    exact = toy_exact_entropies(c.flip, c.contexts)
    steps = sorted(set(int(s) for s in c.eval_at))
    curves, final = {}, {}
    with torch_threads(1 if ctx.device.type == "cpu" else torch.get_num_threads()):
        for kind in c.contexts:
            curves[kind], final[kind] = _toy_one(ctx, kind, states, p, train_ix, test_ix, steps)
            final[kind].update(true_nce=-exact[kind], gap=curves[kind][-1] - exact[kind])
            ctx.log(f"{kind}: exact NCE {-curves[kind][-1]:.3f} vs -H(x|h) = {-exact[kind]:.3f}")
    ctx.save_npz("curves.npz", steps=np.array(steps), **{k: np.array(v) for k, v in curves.items()})
    return dict(exact=exact, final=final, steps=steps, curves=curves)


def _toy_one(ctx: Context, kind: str, states, p, train_ix, test_ix, steps) -> tuple[list[float], dict]:
    """Train one toy inversion model; its exact cross-entropy at each of ``steps`` and its final test NCE."""
    c = ctx.config
    h_all = toy_context(states, kind)

    def images(ix):
        return torch.from_numpy(states[ix][:, None].astype(np.uint8) * 255)

    def context(ix):
        return None if h_all is None else torch.from_numpy(h_all[ix])

    torch.manual_seed(c.seed)
    model = PixelCNNpp.from_config((1, 3, 3), None if h_all is None else (h_all.shape[1],), c.pixelcnn(0))
    everything = np.arange(512)
    ce = []
    for n in steps:
        if n > 0:  # train_pixelcnn resumes from ctx.work/<kind>, so each call continues the same run
            train_pixelcnn(model, images(train_ix), context(train_ix), ctx.work / kind, c.pixelcnn(n),
                           device=ctx.device, progress=ctx.progress, desc=f"toy {kind}")
        else:  # the untrained (data-initialised) model
            model.data_init(images(train_ix[: c.batch_size]), context(train_ix[: c.batch_size]))
        lp = per_image_log_prob(model, images(everything), context(everything), batch_size=512, progress=False)
        ce.append(float(-(p * lp.numpy()).sum()))  # exact H(p(x|h), p_theta(x|h))
    est = summarize(per_image_log_prob(model, images(test_ix), context(test_ix), batch_size=512, progress=False),
                    dims=9)
    return ce, dict(nce_exact=-ce[-1], nce_test=est.nats, nce_test_stderr=est.stderr)


TOY_BOUND = toy_bound
STAGES = (TOY_BOUND,)


@dataclass(frozen=True)
class BackgroundSettings:
    """The ``background`` section: the worked example's settings."""

    toy: ToyConfig = field(default_factory=ToyConfig)


def background_plan(P: Params) -> dict:
    return {"toy": ref(TOY_BOUND, P.section("background").toy)}
