"""A sample scrubber that needs no kernel: pick dataset, layer and test image, then slide (or play) through
the inversion model's samples beside the input and the MSE reconstruction.

Every image is a ``widgets.Image`` (PNG bytes) inside nested ``widgets.Stack``s; the controls are linked to
the stacks' ``selected_index`` with ``widgets.jslink``, so the browser does all the work. That is what lets
the same widget work in live Jupyter and, from the widget state saved by the run, in the static site.

    scrubber({"mnist": {"inputs": uint8 [n, C, H, W],
                        "layers": {"conv1": {"samples": uint8 [n, K, C, H, W], "recon": uint8 [n, C, H, W]}, ...},
                        "labels": ["7", "2", ...]}})
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np

from inversion.reports.common import dataset_label, layer_label

SCRUBBER_CLASS = "inversion-scrubber"


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


def scrubber(panels: Mapping[str, Mapping], scale: int = 4, interval_ms: int = 350, group_label: str = "dataset"):
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
    sample_view = _stack(_stack(_stack(_stack(_image(s, scale) for s in panels[ds]["layers"][l]["samples"][i])
                                       for i in range(n_images)) for l in layers) for ds in datasets)

    for view, cls in ((input_view, "scrub-input"), (recon_view, "scrub-recon"), (sample_view, "scrub-samples")):
        view.add_class(cls)

    dataset_dd = w.Dropdown(options=[(dataset_label(d), i) for i, d in enumerate(datasets)], value=0,
                            description=group_label, layout=w.Layout(width="300px"))
    layer_tb = w.ToggleButtons(options=[(layer_label(l), i) for i, l in enumerate(layers)], value=0,
                               description="layer", style={"button_width": "72px"})
    labels = first.get("labels")
    if any(panels[ds].get("labels") != labels for ds in datasets):
        labels = None  # the image menu is shared: name labels only when every panel has the same ones
    image_dd = w.Dropdown(options=[(f"test image {i + 1}" + (f" (label {labels[i]})" if labels is not None else ""), i)
                                   for i in range(n_images)], value=0, description="image",
                          layout=w.Layout(width="260px"))
    play = w.Play(value=0, min=0, max=n_samples - 1, step=1, interval=interval_ms, repeat=True, description="play")
    slider = w.IntSlider(value=0, min=0, max=n_samples - 1, step=1, description="sample",
                         continuous_update=True, layout=w.Layout(width="360px"))

    links = [w.jslink((play, "value"), (slider, "value"))]
    for view in (input_view, recon_view, sample_view):
        links.append(w.jslink((dataset_dd, "index"), (view, "selected_index")))
    for d in range(len(datasets)):
        links.append(w.jslink((image_dd, "index"), (input_view.children[d], "selected_index")))
        for view in (recon_view, sample_view):
            links.append(w.jslink((layer_tb, "index"), (view.children[d], "selected_index")))
        for l in range(len(layers)):
            links.append(w.jslink((image_dd, "index"), (recon_view.children[d].children[l], "selected_index")))
            links.append(w.jslink((image_dd, "index"), (sample_view.children[d].children[l], "selected_index")))
            for i in range(n_images):
                links.append(w.jslink((slider, "value"),
                                      (sample_view.children[d].children[l].children[i], "selected_index")))

    def panel(title, view):
        return w.VBox([w.HTML(f"<b>{title}</b>"), view], layout=w.Layout(margin="0 18px 0 0", align_items="center"))

    images = w.HBox([panel("input", input_view), panel("MSE reconstruction", recon_view),
                     panel(f"inversion sample ({n_samples} drawn per image)", sample_view)])
    box = w.VBox([w.HBox([dataset_dd, image_dd]), layer_tb, w.HBox([play, slider]), images])
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
            layers[layer] = {"samples": s["samples"][:n], "recon": rec[:n]}
            if inputs is None:
                x, y = data.load(ds, "test")
                idx = s["test_index"][:n]
                inputs, labels = x[idx].numpy(), [str(int(v)) for v in y[idx]]
        out[ds] = {"inputs": inputs, "layers": layers, "labels": labels}
    return out
