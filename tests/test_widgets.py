"""The kernel-free scrubber: samples numbered from 1, a filmstrip with one shared marker per position, the
statistics in each caption, image menus that name each panel's label, no single-option controls."""

from __future__ import annotations

import numpy as np
import pytest

from inversion.reports import widgets


def _panel(labels, n=2, k=3, stats=True, layers=("conv1", "fc3"), seed=0):
    rng = np.random.default_rng(seed)
    img = lambda *s: rng.integers(0, 256, s, dtype=np.uint8)  # noqa: E731
    extra = dict(pred=np.array([[7, 1, 7]] * n), agree=np.array([[True, False, True]] * n), pixel_l1=np.full((n, k), 0.25),
                 dist=np.full((n, k), 0.5)) if stats else {}
    return {"inputs": img(n, 1, 4, 4), "labels": labels,
            "layers": {l: {"samples": img(n, k, 1, 4, 4), "recon": img(n, 1, 4, 4), **extra} for l in layers}}


def _find(box, cls):
    out, todo = [], [box]
    while todo:
        w = todo.pop(0)
        if cls in getattr(w, "_dom_classes", ()):
            out.append(w)
        todo += list(getattr(w, "children", ()))
    return out


def test_samples_are_numbered_from_one_and_the_filmstrip_marks_the_slider_position():
    box = widgets.scrubber({"mnist": _panel(["7", "2"]), "fashion_mnist": _panel(["9", "2"], seed=1)})
    slider, play = _find(box, "scrub-slider")[0], _find(box, "scrub-play")[0]
    assert (slider.min, slider.max, slider.value) == (1, 3, 1) and (play.min, play.max, play.repeat) == (1, 3, False)
    found = _find(box, "scrub-marker")
    markers = list({id(m): m for m in found}.values())  # in the order of the first filmstrip
    assert len(markers) == 3 and len(found) == 3 * 2 * 2 * 2  # one per position, shared by every filmstrip
    for j, m in enumerate(markers):
        assert "▲" in m.children[j + 1].value and all("▲" not in c.value for i, c in enumerate(m.children) if i != j + 1)
    linked = {(l.source[0].model_id, l.target[0].model_id) for l in box._links}
    assert all((slider.model_id, m.model_id) in linked for m in markers)
    # every sample Stack starts with an empty child, so the slider's value is the sample's number
    deepest = _find(box, "scrub-samples")[0].children[0].children[0].children[0]
    assert len(deepest.children) == 4 and deepest.children[0].value == ""
    captions = [next(c.value for c in item.children
                     if hasattr(c, "value") and isinstance(c.value, str) and "scrub-caption" in c.value)
                for item in _find(_find(box, "scrub-filmstrip")[0], "scrub-film-item")]
    assert "<b>1</b>" in captions[0] and "class 7 ✓" in captions[0] and "px 0.25 · h 0.5" in captions[0]
    assert "<b>2</b>" in captions[1] and "class 1 ✗" in captions[1]
    image_menu = _find(box, "scrub-image")[0]
    assert image_menu.options[0][0] == "test image 1 (MNIST: 7, Fashion-MNIST: 9)"
    assert image_menu.options[1][0] == "test image 2 (label 2)"


def test_single_option_controls_are_left_out_and_captions_work_without_statistics():
    box = widgets.scrubber({"affnist": _panel(["3", "4"], stats=False, layers=("fc3",))}, group_label="network")
    shown = {c for row in box.children for c in ([row] + list(getattr(row, "children", ())))}
    assert not any("scrub-layer" in w._dom_classes or "scrub-dataset" in w._dom_classes
                   for w in shown if hasattr(w, "_dom_classes"))
    assert any("scrub-image" in w._dom_classes for w in shown if hasattr(w, "_dom_classes"))
    caption = next(c.value for c in _find(box, "scrub-film-item")[0].children
                   if isinstance(getattr(c, "value", None), str) and "scrub-caption" in c.value)
    assert "<b>1</b>" in caption and "class ✓" not in caption and "class ✗" not in caption


def test_panels_must_agree():
    with pytest.raises(ValueError, match="same layers"):
        widgets.scrubber({"a": _panel(["1", "2"]), "b": _panel(["1", "2"], layers=("conv1",))})
