"""A sample scrubber that needs no kernel: pick dataset, layer and test image, then slide (or play) through
the inversion model's samples beside the input and the MSE reconstruction; below them a filmstrip of all
samples of the image, numbered from 1, the current one marked, each with what Table 1 measures of it.

Every image is a ``widgets.Image`` (PNG bytes) inside nested ``widgets.Stack``s; the controls are linked to
the stacks' ``selected_index`` with ``widgets.jslink``, so the browser does all the work. That is what lets
the same widget work in live Jupyter and, from the widget state saved by the run, in the static site.

    scrubber({"mnist": {"inputs": uint8 [n, C, H, W],
                        "layers": {"conv1": {"samples": uint8 [n, K, C, H, W], "recon": uint8 [n, C, H, W],
                                             # optional, per sample [n, K]: the classifier's class for it; is
                                             # that the input's class; pixel L1 to the input (0-1); L1 per
                                             # unit to h (IM-S)
                                             "pred": int, "agree": bool, "pixel_l1": float, "dist": float},
                                   ...},
                        "labels": ["7", "2", ...]}})

Samples are numbered from 1 as in the figures: every sample Stack has an empty child 0, so the slider's
value is the sample's number. The filmstrip's marker under sample j is one Stack per position j, shared by
every filmstrip (a widget may be shown in several places), so marking costs K x (K + 1) tiny widgets.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np

from inversion.reports.common import dataset_label, layer_label

SCRUBBER_CLASS = "inversion-scrubber"
STAT_KEYS = ("pred", "agree", "pixel_l1", "dist")  # a panel layer's optional per-sample statistics (the samples files')


def png(image: np.ndarray, scale: int = 4) -> bytes:
    """uint8 [C, H, W] -> PNG bytes, enlarged ``scale`` times with nearest-neighbour (crisp pixels)."""
    from PIL import Image

    img = np.asarray(image, dtype=np.uint8)
    img = img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))
    img = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _image(arr, scale):
    import ipywidgets as w

    return w.Image(value=png(arr, scale), format="png")


def _stack(children):
    import ipywidgets as w

    return w.Stack(children=list(children), selected_index=0)


STATS_TOOLTIP = ("class: the classifier's class for this sample, ✓ when it is the input's class; px: mean pixel |sample - input| "
                 "(0-1); h: mean L1 per unit between the sample's representation and the input's (Table 1's IM-S)")


def _caption(j: int, layer: Mapping, i: int) -> str:
    """The filmstrip caption of sample j (0-based) of image i: its number and, when given, its statistics."""
    lines = [f"<b>{j + 1}</b>"]
    if "agree" in layer:
        cls = f"class {int(layer['pred'][i][j])}" if "pred" in layer else "class"
        lines.append(f"{cls} ✓" if bool(layer["agree"][i][j]) else f"{cls} ✗")
    if "pixel_l1" in layer and "dist" in layer:
        lines.append(f"px {float(layer['pixel_l1'][i][j]):.2f} · h {float(layer['dist'][i][j]):.2g}")
    return (f'<div class="scrub-caption" title="{STATS_TOOLTIP}" style="text-align:center;font-size:11px;'
            f'line-height:1.25">' + "<br>".join(lines) + "</div>")


def scrubber(panels: Mapping[str, Mapping], scale: int = 4, interval_ms: int = 350, group_label: str = "dataset",
             film_scale: int = 2):
    """The scrubber widget (an ``ipywidgets.VBox`` with CSS class ``inversion-scrubber``).

    ``panels`` maps dataset -> {"inputs", "layers": {layer: {"samples", "recon"}}, "labels" (optional)}. All
    datasets must have the same layers, number of test images and samples per image. The first menu is
    named ``group_label``: its entries need not be datasets (§5.2 scrubs through networks of one dataset).
    """
    import ipywidgets as w

    datasets = list(panels)
    first = panels[datasets[0]]
    layers = list(first["layers"])
    n_images = len(first["inputs"])
    n_samples = first["layers"][layers[0]]["samples"].shape[1]
    for ds in datasets:
        p = panels[ds]
        if list(p["layers"]) != layers or len(p["inputs"]) != n_images:
            raise ValueError(f"{ds}: every dataset needs the same layers and number of test images")
        if any(p["layers"][l]["samples"].shape[:2] != (n_images, n_samples) for l in layers):
            raise ValueError(f"{ds}: samples must be [n_images={n_images}, n_samples={n_samples}, C, H, W]")

    # The three views: input (dataset -> image), reconstruction (dataset -> layer -> image),
    # samples (dataset -> layer -> image -> sample).
    input_view = _stack(_stack(_image(x, scale) for x in panels[ds]["inputs"]) for ds in datasets)
    recon_view = _stack(_stack(_stack(_image(x, scale) for x in panels[ds]["layers"][l]["recon"]) for l in layers)
                        for ds in datasets)
    blank = w.HTML("")  # child 0 of every sample Stack: the slider counts samples from 1
    sample_view = _stack(_stack(_stack(w.Stack(children=[blank] + [_image(s, scale) for s in
                                                                    panels[ds]["layers"][l]["samples"][i]],
                                               selected_index=1)
                                       for i in range(n_images)) for l in layers) for ds in datasets)
    markers = [w.Stack(children=[w.HTML('<div style="text-align:center;color:#c0392b">▲</div>' if k == j + 1 else
                                        "<div>&nbsp;</div>") for k in range(n_samples + 1)], selected_index=1)
               for j in range(n_samples)]
    for j, m in enumerate(markers):
        m.add_class("scrub-marker")

    def film(ds, l, i):
        layer = panels[ds]["layers"][l]
        items = [w.VBox([_image(layer["samples"][i][j], film_scale), w.HTML(_caption(j, layer, i)), markers[j]],
                        layout=w.Layout(align_items="center", margin="0 3px"))
                 for j in range(n_samples)]
        for item in items:
            item.add_class("scrub-film-item")
        return w.HBox(items, layout=w.Layout(flex_flow="row wrap"))

    film_view = _stack(_stack(_stack(film(ds, l, i) for i in range(n_images)) for l in layers) for ds in datasets)

    for view, cls in ((input_view, "scrub-input"), (recon_view, "scrub-recon"), (sample_view, "scrub-samples"),
                      (film_view, "scrub-filmstrip")):
        view.add_class(cls)

    dataset_dd = w.Dropdown(options=[(dataset_label(d), i) for i, d in enumerate(datasets)], value=0,
                            description=group_label, layout=w.Layout(width="300px"),
                            tooltip=f"the {group_label} whose samples are shown")
    layer_tb = w.ToggleButtons(options=[(layer_label(l), i) for i, l in enumerate(layers)], value=0,
                               description="layer", style={"button_width": "72px"},
                               tooltips=[f"samples of p(x | h) with h the classifier's {layer_label(l)}" for l in layers])
    def label(i):  # the image menu is shared by the panels: one label, or each panel's where they differ
        per = [(ds, panels[ds].get("labels")) for ds in datasets]
        if all(lab is None for _, lab in per):
            return ""
        if len({None if lab is None else str(lab[i]) for _, lab in per}) == 1:
            return f" (label {per[0][1][i]})"
        return " (" + ", ".join(f"{dataset_label(ds)}: {lab[i]}" for ds, lab in per if lab is not None) + ")"

    image_dd = w.Dropdown(options=[(f"test image {i + 1}{label(i)}", i) for i in range(n_images)], value=0,
                          description="image",
                          layout=w.Layout(width="260px"), tooltip="the test image whose representation is inverted")
    play = w.Play(value=1, min=1, max=n_samples, step=1, interval=interval_ms, repeat=False, description="play",
                  tooltip="step through the samples")
    slider = w.IntSlider(value=1, min=1, max=n_samples, step=1, description="sample",
                         continuous_update=True, layout=w.Layout(width="360px"),
                         tooltip=f"which of the {n_samples} samples drawn for this image is shown")

    links = [w.jslink((play, "value"), (slider, "value"))]
    for view in (input_view, recon_view, sample_view, film_view):
        links.append(w.jslink((dataset_dd, "index"), (view, "selected_index")))
    for m in markers:
        links.append(w.jslink((slider, "value"), (m, "selected_index")))
    for d in range(len(datasets)):
        links.append(w.jslink((image_dd, "index"), (input_view.children[d], "selected_index")))
        for view in (recon_view, sample_view, film_view):
            links.append(w.jslink((layer_tb, "index"), (view.children[d], "selected_index")))
        for l in range(len(layers)):
            for view in (recon_view, sample_view, film_view):
                links.append(w.jslink((image_dd, "index"), (view.children[d].children[l], "selected_index")))
            for i in range(n_images):
                links.append(w.jslink((slider, "value"),
                                      (sample_view.children[d].children[l].children[i], "selected_index")))

    def panel(title, view):
        return w.VBox([w.HTML(f"<b>{title}</b>"), view], layout=w.Layout(margin="0 18px 0 0", align_items="center"))

    images = w.HBox([panel("input", input_view), panel("MSE reconstruction", recon_view),
                     panel(f"inversion sample ({n_samples} drawn per image)", sample_view)])
    film_panel = w.VBox([w.HTML(f"<b>all {n_samples} samples of this image</b> (the shown one marked ▲; hover a "
                                f"caption for what its numbers are)"), film_view])
    # a menu or toggle with one option is no choice: leave it out (the §5.2 page scrubs one layer)
    menus = [c for c, n in ((dataset_dd, len(datasets)), (image_dd, n_images)) if n > 1]
    rows = [w.HBox(menus)] if menus else []
    rows += [layer_tb] if len(layers) > 1 else []
    box = w.VBox(rows + [w.HBox([play, slider]), images, film_panel])
    for control, cls in ((dataset_dd, "scrub-dataset"), (layer_tb, "scrub-layer"), (image_dd, "scrub-image"),
                         (play, "scrub-play"), (slider, "scrub-slider")):
        control.add_class(cls)
    box.add_class(SCRUBBER_CLASS)
    box._links = links  # keep the link widgets alive with the box
    return box


def panels_from_results(per_dataset: Mapping[str, Mapping], n_images: int) -> dict:
    """Scrubber panels from the layers chapter's results: {dataset: pipeline.layers(...) result dict}."""
    from inversion import data

    out = {}
    for ds, res in per_dataset.items():
        layers = {}
        inputs = labels = None
        for layer, r in res["layers"].items():
            s = r["samples"].arrays("samples.npz")
            rec = r["decoder"].arrays("reconstructions.npz")["images"]
            n = min(n_images, len(s["samples"]), len(rec))
            layers[layer] = {"samples": s["samples"][:n], "recon": rec[:n],
                             **{k: s[k][:n] for k in STAT_KEYS if k in s}}
            if inputs is None:
                x, y = data.load(ds, "test")
                idx = s["test_index"][:n]
                inputs, labels = x[idx].numpy(), [str(int(v)) for v in y[idx]]
        out[ds] = {"inputs": inputs, "layers": layers, "labels": labels}
    return out
