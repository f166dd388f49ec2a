"""What several chapters' stages share: dataset splits, loading a stage's trained model, layer activations.

Everything here reads inputs for a stage body; nothing here declares a stage.
"""

from __future__ import annotations

import contextlib
import functools
import json

import torch

from inversion import data
from inversion.models.classifier import Classifier, compute_features, load_classifier as _load_classifier_dir
from inversion.models.pixelcnn import PixelCNNpp
from inversion.pipeline.cache import Result
from inversion.training import load_checkpoint

__all__ = ["load_split", "test_split", "first", "load_classifier", "load_inversion", "features",
           "features_and_logits", "torch_threads"]


@functools.lru_cache(maxsize=8)
def load_split(dataset: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``inversion.data.load``, memoised per process: the stages of one run read the same splits many times."""
    return data.load(dataset, split)


def test_split(dataset: str, n: int | None = None, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Test images offset..offset+n (all when n is None) and their labels; an error if there are fewer."""
    x, y = load_split(dataset, "test")
    stop = None if n is None else offset + n
    if stop is not None and stop > len(x):
        raise ValueError(f"{dataset} has {len(x)} test images; asked for {offset}..{stop}")
    return x[offset:stop], y[offset:stop]


def first(t, n: int | None):
    """The first ``n`` rows of ``t`` (all when n is None): how ``n_train``-style settings take a subset."""
    return t if n is None else t[:n]


def load_classifier(result: Result, device=None) -> Classifier:
    """The classifier of a ``classifier`` or ``snapshot`` stage result, in eval mode."""
    return _load_classifier_dir(result.dir, "model.pt", device=device).eval()


def load_inversion(result: Result, device=None) -> PixelCNNpp:
    """The PixelCNN++ of an ``inversion`` stage result (model.json + model.pt), in eval mode."""
    model = PixelCNNpp(**json.loads(result.path("model.json").read_text()))
    state = load_checkpoint(result.path("model.pt"), map_location="cpu")
    model.load_state_dict(state)
    return model.to(device or "cpu").eval()


def features(clf: Classifier, images: torch.Tensor, layer: str, device, batch_size: int = 500) -> torch.Tensor:
    """``layer``'s activations of ``images`` (float32, CPU): the h of every (x, h) pair."""
    return compute_features(clf, images, layer, batch_size=batch_size, device=device)


@torch.no_grad()
def features_and_logits(clf: Classifier, images: torch.Tensor, layer: str, device,
                        batch_size: int = 500) -> dict[str, torch.Tensor]:
    """{layer: activations, "logits": logits} of ``images`` in one pass per batch (float32, CPU)."""
    out: dict[str, list] = {layer: [], "logits": []}
    for i in range(0, len(images), batch_size):
        f = clf.features(images[i : i + batch_size].to(device))
        for name in out:
            out[name].append(f[name].float().cpu())
    return {k: torch.cat(v) for k, v in out.items()}


@contextlib.contextmanager
def torch_threads(n: int):
    """Run with ``n`` torch threads: for tiny models every op is overhead, and a second thread only adds
    synchronisation (badly so when other processes share the cores)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
