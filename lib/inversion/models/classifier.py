"""The supervised image classifiers whose layers get inverted (§5.1, §5.2, Appendix A), and their training.

Three architectures, all ending in FC3 (256 ReLU units) and a linear LOGITS layer:

  "conv"      CONV1 -> CONV2 -> FC3 -> LOGITS. Each CONV is a 5x5 convolution with no padding, ReLU, and
              2x2 max-pooling (stride 2). 32/32 filters for 1-channel images (MNIST, affNIST), 64/128 for
              3-channel ones (SVHN, CIFAR-10). FC3 sees the flattened CONV2 map. Appendix A exactly.
  "conv_gmp"  the same, but FC3 sees the global max over CONV2's spatial map (one number per channel), so
              FC3 cannot know where in the image a feature was (§5.2, affNIST).
  "fc"        FC1 -> FC2 (2048 ReLU units each) in place of the two conv blocks, then FC3 -> LOGITS (§5.2).

Inputs are images [N, C, H, W], either uint8 in 0..255 (what ``inversion.data.load`` returns; divided by
255 inside) or floating point already scaled to [0, 1]. Nothing else is accepted, so a float image left in
0..255 fails loudly instead of silently saturating every ReLU.

Dropout ("at every layer", Appendix A; the rate is not given): applied to the output of each hidden layer,
i.e. to the inputs of CONV2/FC2, FC3 and LOGITS. Default rates (0.25, 0.25, 0.5): the usual choice for small
MNIST/CIFAR convnets (lighter on the conv maps, whose units are strongly correlated, heavier on the wide
FC3). The tapped features (``features``) are the activations *before* dropout, so in eval mode they are
exactly what the next layer sees.

Every setting of one classifier, architecture and training, is a field of ``ClassifierConfig`` with its
default written there once (the classifier stage's cache keys are these names); ``Classifier``'s keyword
defaults and ``train_classifier`` read them from it.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from inversion.training import TrainConfig, TrainResult, check_field, fit, load_trained, write_run_config

ARCHS = ("conv", "conv_gmp", "fc")


@dataclass(frozen=True)
class ClassifierConfig:
    """Every setting of one classifier (Appendix A), with the defaults of the book's classifier stage.

    Architecture (``ARCHITECTURE``): ``arch`` one of ARCHS; ``n_filters`` the (CONV1, CONV2) filter counts, or
    None for Appendix A's (32, 32) on 1-channel and (64, 128) on 3-channel images; ``fc_units`` of FC3 (256);
    ``dropout`` one rate or three (after layer 1, layer 2, FC3; see the module docstring for the choice).
    Training (``train_classifier``): Adam at ``lr`` 3e-4 for ``steps`` updates of ``batch_size`` images,
    validation accuracy every ``eval_every`` updates with early stopping after ``patience`` evaluations
    without improvement (0: never), weights saved after each of ``snapshot_steps`` updates (§5.3),
    ``overfit_n``: train on the first n images without dropout (§5.3's overfitted network), ``seed``: batch
    order and dropout noise. Lists are accepted for the tuple fields and stored as tuples.
    """

    ARCHITECTURE: ClassVar[tuple[str, ...]] = ("arch", "n_filters", "fc_units", "dropout")

    arch: str = "conv"
    n_filters: tuple[int, int] | None = None
    fc_units: int = 256
    dropout: float | tuple[float, float, float] = (0.25, 0.25, 0.5)
    steps: int = 10000
    batch_size: int = 64
    lr: float = 3e-4
    eval_every: int = 500
    patience: int = 10
    overfit_n: int | None = None
    snapshot_steps: tuple[int, ...] = ()  # whole numbers; floats such as 1e4 are accepted from Python
    seed: int = 0

    def __post_init__(self):
        for name in ("n_filters", "dropout", "snapshot_steps"):  # lists (from JSON or YAML) become tuples
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        check = lambda name, kind, ok, valid: check_field(self, name, kind, ok, valid)  # noqa: E731
        count = lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1  # noqa: E731
        rate = lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and 0 <= v < 1  # noqa: E731
        check("arch", str, lambda v: v in ARCHS, f"one of {ARCHS}")
        check("n_filters", (tuple, type(None)), lambda v: v is None or (len(v) == 2 and all(map(count, v))),
              "None or two integers >= 1 (CONV1, CONV2)")
        check("fc_units", int, lambda v: v >= 1, "an integer >= 1")
        check("dropout", (numbers.Real, tuple),
              lambda v: rate(v) if not isinstance(v, tuple) else len(v) == 3 and all(map(rate, v)),
              "one rate or three rates in [0, 1)")
        check("steps", int, lambda v: v >= 0, "an integer >= 0")
        check("batch_size", int, lambda v: v >= 1, "an integer >= 1")
        check("lr", float, lambda v: v > 0, "a number > 0")
        check("eval_every", int, lambda v: v >= 0, "an integer >= 0 (0: never)")
        check("patience", int, lambda v: v >= 0, "an integer >= 0 (0: never stop early)")
        check("overfit_n", (numbers.Integral, type(None)), lambda v: v is None or count(v),
              "None or an integer >= 1")
        check("snapshot_steps", tuple,
              lambda v: all(isinstance(s, numbers.Real) and not isinstance(s, bool) and s >= 0 and float(s) == int(s)
                            for s in v), "whole numbers >= 0 (1e4 is fine)")
        check("seed", int, lambda v: True, "an integer")

    def architecture(self) -> dict:
        """The architecture fields as keywords of ``Classifier``."""
        return {name: getattr(self, name) for name in self.ARCHITECTURE}


def layer_names(arch: str) -> tuple[str, ...]:
    """The tapped layers of ``arch``, in network order."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
    return ("fc1", "fc2", "fc3", "logits") if arch == "fc" else ("conv1", "conv2", "fc3", "logits")


def check_images(x: torch.Tensor, image_shape: Sequence[int], what: str = "images") -> torch.Tensor:
    """Validate images [N, *image_shape] (uint8 0..255, or float in [0, 1]) and return them as float in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(image_shape):
        raise ValueError(f"{what} must have shape [N, {', '.join(map(str, image_shape))}], got {list(x.shape)}")
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.is_floating_point():
        raise ValueError(f"{what} must be uint8 (0..255) or floating point scaled to [0, 1], got dtype {x.dtype}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(
            f"float {what} must be scaled to [0, 1], got values in [{x.min().item():.4g}, {x.max().item():.4g}]; "
            "pass uint8 0..255 images or divide by 255"
        )
    return x


class Classifier(nn.Module):
    def __init__(
        self,
        image_shape: Sequence[int],
        arch: str = ClassifierConfig.arch,
        n_classes: int = 10,
        n_filters: Sequence[int] | None = ClassifierConfig.n_filters,
        fc_units: int = ClassifierConfig.fc_units,
        hidden_units: int = 2048,
        dropout: float | Sequence[float] = ClassifierConfig.dropout,
    ):
        super().__init__()
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W) with positive sizes, got {image_shape}")
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
        C, H, W = image_shape
        if n_filters is None:
            if C not in (1, 3):
                raise ValueError(f"no default filter counts for {C}-channel images; pass n_filters=(F1, F2)")
            n_filters = (32, 32) if C == 1 else (64, 128)  # Appendix A: MNIST vs SVHN/CIFAR
        n_filters = tuple(int(f) for f in n_filters)
        if len(n_filters) != 2 or min(n_filters) < 1:
            raise ValueError(f"n_filters must be two positive ints (CONV1, CONV2), got {n_filters}")
        if isinstance(dropout, (int, float)):
            dropout = (float(dropout),) * 3
        dropout = tuple(float(p) for p in dropout)
        if len(dropout) != 3 or not all(0 <= p < 1 for p in dropout):
            raise ValueError(f"dropout must be one rate or three rates in [0, 1), got {dropout}")
        # Everything needed to rebuild the model: Classifier(**model.config).
        self.config = dict(image_shape=list(image_shape), arch=arch, n_classes=int(n_classes),
                           n_filters=list(n_filters), fc_units=int(fc_units), hidden_units=int(hidden_units),
                           dropout=list(dropout))
        self.image_shape, self.arch = image_shape, arch

        if arch == "fc":
            self.fc1 = nn.Linear(C * H * W, hidden_units)
            self.fc2 = nn.Linear(hidden_units, hidden_units)
            fc3_in = hidden_units
        else:
            # Two valid 5x5 convs and two floor-mode 2x2 pools: H -> (H - 4) // 2 -> ((H - 4) // 2 - 4) // 2.
            H2, W2 = ((H - 4) // 2 - 4) // 2, ((W - 4) // 2 - 4) // 2
            if H2 < 1 or W2 < 1:
                raise ValueError(f"images of {H}x{W} are too small for two 5x5 conv + 2x2 pool blocks (need >= 16x16)")
            self.conv1 = nn.Conv2d(C, n_filters[0], 5)
            self.conv2 = nn.Conv2d(n_filters[0], n_filters[1], 5)
            fc3_in = n_filters[1] if arch == "conv_gmp" else n_filters[1] * H2 * W2
        self.fc3 = nn.Linear(fc3_in, fc_units)
        self.logits = nn.Linear(fc_units, n_classes)
        self.drop1, self.drop2, self.drop3 = (nn.Dropout(p) for p in dropout)

    @classmethod
    def from_config(cls, image_shape: Sequence[int], config: ClassifierConfig) -> "Classifier":
        """The classifier ``config`` describes (its architecture fields) for images of ``image_shape``."""
        return cls(image_shape, **config.architecture())

    def set_dropout(self, p: float | Sequence[float]) -> None:
        """Change the dropout rates in place (and in ``config``); ``set_dropout(0)`` is the §5.3 overfit setting."""
        rates = (float(p),) * 3 if isinstance(p, (int, float)) else tuple(float(r) for r in p)
        if len(rates) != 3 or not all(0 <= r < 1 for r in rates):
            raise ValueError(f"dropout must be one rate or three rates in [0, 1), got {p}")
        for module, r in zip((self.drop1, self.drop2, self.drop3), rates):
            module.p = r
        self.config["dropout"] = list(rates)

    def features(self, x: torch.Tensor, until: str | None = None) -> dict[str, torch.Tensor]:
        """Activations of every tapped layer, in network order (``layer_names(arch)``).

        Conv layers are taken after ReLU and pooling ([N, F, H', W']); fc1/fc2/fc3 after ReLU; logits raw.
        ``until`` stops after that layer (cheaper when only an early layer is wanted).
        """
        names = layer_names(self.arch)
        if until is not None and until not in names:
            raise ValueError(f"unknown layer {until!r} for arch {self.arch!r}; expected one of {names}")
        h = check_images(x, self.image_shape)
        out: dict[str, torch.Tensor] = {}

        def tap(name, value):
            out[name] = value
            return name == until

        if self.arch == "fc":
            h = F.relu(self.fc1(h.flatten(1)))
            if tap("fc1", h):
                return out
            h = F.relu(self.fc2(self.drop1(h)))
            if tap("fc2", h):
                return out
        else:
            # relu(maxpool(.)) == maxpool(relu(.)) and pooling first makes the ReLU 4x cheaper.
            h = F.relu(F.max_pool2d(self.conv1(h), 2))
            if tap("conv1", h):
                return out
            h = F.relu(F.max_pool2d(self.conv2(self.drop1(h)), 2))
            if tap("conv2", h):
                return out
            # The 2x2 pools tile CONV2's pre-pool map exactly for even sizes, so this equals a global max
            # over CONV2 itself; position information is gone from here on.
            h = h.amax(dim=(2, 3)) if self.arch == "conv_gmp" else h.flatten(1)
        h = F.relu(self.fc3(self.drop2(h)))
        if tap("fc3", h):
            return out
        tap("logits", self.logits(self.drop3(h)))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N, n_classes]."""
        return self.features(x)["logits"]


def feature_shapes(model: Classifier) -> dict[str, tuple[int, ...]]:
    """Per-example shape of every tapped layer, in network order (from the architecture, no forward pass)."""
    c = model.config
    C, H, W = c["image_shape"]
    if c["arch"] == "fc":
        return dict(fc1=(c["hidden_units"],), fc2=(c["hidden_units"],), fc3=(c["fc_units"],), logits=(c["n_classes"],))
    F1, F2 = c["n_filters"]
    H1, W1 = (H - 4) // 2, (W - 4) // 2
    H2, W2 = (H1 - 4) // 2, (W1 - 4) // 2
    return dict(conv1=(F1, H1, W1), conv2=(F2, H2, W2), fc3=(c["fc_units"],), logits=(c["n_classes"],))


def _device_of(model: nn.Module, device) -> torch.device:
    return torch.device(device) if device is not None else next(model.parameters()).device


@torch.no_grad()
def compute_features(
    model: Classifier, images: torch.Tensor, layer: str, batch_size: int = 500, device=None
) -> torch.Tensor:
    """``layer``'s activations for all ``images`` in eval mode, batched; float32 on the CPU, [N, *shape].

    This builds the (x, h) pairs every inversion model and MSE decoder is trained on. ``device`` defaults to
    the model's; the model is moved there and its train/eval mode is restored afterwards.
    """
    if layer not in layer_names(model.arch):
        raise ValueError(f"unknown layer {layer!r} for arch {model.arch!r}; expected one of {layer_names(model.arch)}")
    check_images(images[:0], model.image_shape)  # shape/dtype only; values are checked per batch
    device = _device_of(model, device)
    was_training = model.training
    model.to(device).eval()
    try:
        chunks = [model.features(images[i : i + batch_size].to(device), until=layer)[layer].float().cpu()
                  for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(chunks) if chunks else torch.empty(0, *feature_shapes(model)[layer])


@torch.no_grad()
def accuracy(model: Classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500, device=None) -> float:
    """Fraction of ``images`` whose arg-max logit equals ``labels`` (eval mode, batched)."""
    _check_labels(images, labels, "images")
    logits = compute_features(model, images, "logits", batch_size=batch_size, device=device)
    return (logits.argmax(1) == labels.cpu()).float().mean().item()


def _check_labels(images, labels, what):
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.dtype != torch.int64:
        got = f"{labels.dtype} {list(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"{what} labels must be an int64 tensor [N], got {got}")
    if len(labels) != len(images):
        raise ValueError(f"{what}: {len(images)} images but {len(labels)} labels")


def train_classifier(
    model: Classifier,
    train: tuple[torch.Tensor, torch.Tensor],
    valid: tuple[torch.Tensor, torch.Tensor] | None,
    workdir: str | os.PathLike,
    config: ClassifierConfig,
    *,
    device=None,
    progress: bool = True,
    checkpoint_every: int = 500,
    eval_batch_size: int = 500,
) -> TrainResult:
    """Train with Adam on cross-entropy (Appendix A: lr 3e-4, early stopping on validation accuracy).

    Every training setting comes from ``config`` (its architecture fields are the model's business: build
    the model with ``Classifier.from_config``):
    - ``valid`` accuracy is evaluated every ``config.eval_every`` steps; training stops after
      ``config.patience`` evaluations without improvement (0: never). The best weights go to
      ``workdir/best.pt`` and are loaded into ``model`` when training ends. With ``valid=None`` there is no
      early stopping and ``model`` keeps the last weights.
    - ``config.snapshot_steps``: weights after exactly that many updates go to ``workdir/step_<k>.pt`` (§5.3
      uses 0, 1e2, 1e3, 1e4, 1e5). Steps after an early stop are never reached, so use ``patience=0`` when
      every snapshot is needed.
    - ``config.overfit_n``: the §5.3 overfitted network: train on ``train[:overfit_n]`` only, with the
      model's dropout set to 0 (in place, and in ``model.config``).
    - Killed runs resume from ``workdir/state.pt`` when called again with the same arguments (see
      ``inversion.training.fit``); ``workdir/config.json`` records the model config so
      ``load_classifier(workdir)`` can rebuild it. ``config.seed`` fixes batch order and dropout noise, not
      the initial weights (those are the model's as passed in).
    """
    images, labels = train
    check_images(images[:0], model.image_shape, "train images")
    _check_labels(images, labels, "train")
    if valid is not None:
        check_images(valid[0][:0], model.image_shape, "valid images")
        _check_labels(*valid, "valid")
    overfit_n = config.overfit_n
    if overfit_n is not None:
        if not 0 < overfit_n <= len(images):
            raise ValueError(f"overfit_n must be in 1..{len(images)} (the training set size), got {overfit_n}")
        images, labels = images[:overfit_n], labels[:overfit_n]
        model.set_dropout(0.0)
    snapshot_steps = tuple(sorted({int(s) for s in config.snapshot_steps}))
    workdir = Path(workdir)
    write_run_config(workdir, dict(model=model.config, overfit_n=overfit_n, seed=config.seed, lr=config.lr,
                                   batch_size=config.batch_size))

    def loss_fn(m, batch):
        x, y = batch
        return F.cross_entropy(m(x), y)

    def eval_fn(m):
        return dict(score=accuracy(m, *valid, batch_size=eval_batch_size))

    loop = TrainConfig(steps=config.steps, batch_size=config.batch_size, lr=config.lr, eval_every=config.eval_every,
                       patience=config.patience, checkpoint_every=checkpoint_every, snapshot_steps=snapshot_steps,
                       seed=config.seed, progress=progress)
    return fit(model, loss_fn, (images, labels), loop, workdir, eval_fn=eval_fn if valid is not None else None,
               device=device, desc=f"classifier {model.arch}", restore_best=True)


def load_classifier(workdir: str | os.PathLike, weights: str = "best.pt", device=None) -> Classifier:
    """Rebuild a classifier trained by ``train_classifier`` and load ``workdir/weights`` (best.pt, step_<k>.pt, state.pt)."""
    return load_trained(Classifier, workdir, weights, device)


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
