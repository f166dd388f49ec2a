"""Figures drawn for the page: text legible at the column's width (``smallest_text_px``), image grids that
wrap into bands instead of shrinking, several figures stacked into one numbered figure, and the column width
shared with the browser check."""

from __future__ import annotations

import io
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from inversion.reports import common as C  # noqa: E402


def _text_figure(width_in, size_pt):
    fig = plt.figure(figsize=(width_in, 1.0))
    ax = fig.add_axes([0.0, 0.05, 1.0, 0.3])  # a frame across the whole width: the saved figure is that wide
    ax.set_xticks([])
    ax.set_yticks([])
    fig.text(0.5, 0.6, "label", fontsize=size_pt, ha="center")
    return fig


def test_text_size_on_the_page_follows_the_scaling_to_the_column():
    # a narrow figure is shown at its own size: 9 pt at 110 dpi is 9 / 72 * 110 = 13.75 px
    px, text = C.smallest_text_px(_text_figure(3.0, 9))
    assert text == "label" and px == pytest.approx(9 / 72 * C.DPI)
    # twice the column's width: shown at half size
    wide = _text_figure(2 * C.COLUMN_PX / C.DPI, 9)
    px, _ = C.smallest_text_px(wide)
    assert px == pytest.approx(9 / 72 * C.DPI * C.COLUMN_PX / (C.shown_width_in(wide) * C.DPI))
    with pytest.raises(ValueError, match=r"'label' would be \d+\.\d px on the page .* narrower than"):
        C.check_legible(wide)
    C.check_legible(_text_figure(3.0, 7))  # 10.7 px


def test_tick_labels_count_and_hidden_text_does_not():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 1])
    ax.tick_params(labelsize=5)
    assert C.smallest_text_px(fig)[0] == pytest.approx(5 / 72 * C.DPI)
    ax.tick_params(labelsize=9)
    fig.text(0.5, 0.5, "hidden", fontsize=3).set_visible(False)
    assert C.smallest_text_px(fig)[0] == pytest.approx(9 / 72 * C.DPI)


def _columns(n_groups, per_group, rows=3):
    rng = np.random.default_rng(0)
    cols, groups = [("input", rng.integers(0, 256, (rows, 1, 8, 8), dtype=np.uint8))], [("", 1)]
    for g in range(n_groups):
        cols += [(f"sample {j + 1}", rng.integers(0, 256, (rows, 1, 8, 8), dtype=np.uint8)) for j in range(per_group)]
        groups.append((f"group {g + 1}", per_group))
    return cols, groups


def test_a_wide_image_grid_wraps_into_bands_that_fit_the_column_and_repeat_the_inputs():
    cols, groups = _columns(n_groups=6, per_group=4)
    one_row = C.image_grid(cols, groups, max_width_px=10_000, row_labels=["a", "b", "c"])
    wrapped = C.image_grid(cols, groups, row_labels=["a", "b", "c"], lead=1)
    assert C.shown_width_in(one_row) * C.DPI > 2 * C.COLUMN_PX  # it would have been shrunk to under half
    assert C.shown_width_in(wrapped) * C.DPI <= C.COLUMN_PX
    assert wrapped.get_figheight() > 2 * one_row.get_figheight()  # several bands
    titles = [ax.get_title() for ax in wrapped.axes if ax.get_title()]
    n_bands = titles.count("input")
    assert n_bands >= 3 and titles.count("sample 1") == 6  # the input column starts every band
    C.check_legible(wrapped)
    with pytest.raises(ValueError):
        C.check_legible(one_row)


def test_figures_are_stacked_into_one_png_checked_and_closed():
    a, b = _text_figure(3.0, 9), _text_figure(5.0, 9)
    png = C.figure_png(a, b)
    img = Image.open(io.BytesIO(png))
    assert img.width == pytest.approx(max(C.shown_width_in(f) for f in (a, b)) * C.DPI, abs=3)
    assert not plt.fignum_exists(a.number) and not plt.fignum_exists(b.number)
    with pytest.raises(ValueError, match="part 1 of 1"):
        C.figure_png(_text_figure(3.0, 4))
    with pytest.raises(ValueError, match="at least one"):
        C.figure_png()


def test_chunks():
    assert C.chunks("abcde", 2) == [["a", "b"], ["c", "d"], ["e"]]


def test_the_browser_check_measures_the_column_the_figures_are_sized_for():
    js = (Path(__file__).parent / "browser" / "check_book.mjs").read_text()
    assert int(re.search(r"const FIGURE_COLUMN_PX = (\d+);", js).group(1)) == C.COLUMN_PX
