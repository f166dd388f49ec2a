"""The presentation toolkit shared by the chapters' report modules: labels and colours, image grids,
Markdown tables, the ``Claim`` record and its table, and the provenance of every figure and page.

Everything takes plain arrays (uint8 images [N, C, H, W] or [N, K, C, H, W]), numbers or stage results, and
returns a matplotlib figure, a string or an ``IPython.display.Markdown`` object, so chapters stay a few
lines per cell. Nothing here knows about a particular section of the paper.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np

from inversion.provenance import committed_result

LAYER_LABELS = {"conv1": "CONV1", "conv2": "CONV2", "fc1": "FC1", "fc2": "FC2", "fc3": "FC3", "logits": "LOGITS"}
DATASET_LABELS = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "affnist": "affNIST", "svhn": "SVHN",
                  "cifar10": "CIFAR-10"}
REGIME_LABELS = {"regular": "regular", "overfit": "overfitted (100 examples, no dropout)"}
REGIME_COLOURS = {"regular": "tab:blue", "overfit": "tab:red"}  # the paper's Fig. 5b: blue regular, red overfitted
# Samples count as digits of their input's class when the classifier gives most of them the class it gives
# their input (chance: 10 %): then they show *what* a layer keeps (§5.1's FC3 and LOGITS, §5.2's geometry);
# below it they are strokes and blotches, and show mainly *that* the layer leaves much undetermined.
DIGITS = 0.5


def share_stderr(agree: np.ndarray) -> float | None:
    """The standard error of a share of samples (e.g. the class agreement), taken across the input images:
    ``agree`` is [images, samples per image] of 0/1. The samples of one image share its context, so they are
    not independent draws and the binomial s.e. over all samples would understate the noise; the images are
    independent. The per-image share's sample sd over sqrt(images); None for a single image."""
    agree = np.asarray(agree, dtype=np.float64)
    if agree.ndim != 2:
        raise ValueError(f"agree must be [images, samples per image], got shape {agree.shape}")
    per_image = agree.mean(axis=1)
    return float(per_image.std(ddof=1) / math.sqrt(len(per_image))) if len(per_image) > 1 else None


def mostly(share: float, stderr: float | None) -> bool | None:
    """Are most samples (e.g. of those that keep their input's class) in the share, i.e. is it above DIGITS?
    True (False) when it lies more than MARGIN standard errors above (below) DIGITS, the margin of every claim
    in the book; None inside, where this run cannot tell it from half. Without an s.e. (a stage that kept no
    per-sample record) the point estimate decides; an s.e. of 0 (every image alike) decides by the sign."""
    if stderr is None:
        return share >= DIGITS
    if stderr == 0:
        return None if share == DIGITS else share > DIGITS
    return decide(Difference(share - DIGITS, stderr))


def share_pm(share: float, stderr: float | None, digits: int = 0) -> str:
    """A share in percent with its standard error where there is one: "54 ± 4 %" (or "54 %")."""
    return f"{100 * share:.{digits}f}" + ("" if stderr is None else f" ± {100 * stderr:.{digits}f}") + " %"


def layer_label(name: str) -> str:
    return LAYER_LABELS.get(name, name.upper())


def dataset_label(name: str) -> str:
    return DATASET_LABELS.get(name, name)


def regime_label(regime: str) -> str:
    return REGIME_LABELS.get(regime, regime)


def join_names(items: Iterable[str]) -> str:
    """"A", "A and B", "A, B and C" ("" for none)."""
    items = list(items)
    return "" if not items else items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


@dataclass(frozen=True)
class Estimate:
    """A mean over test images and its standard error."""

    value: float
    stderr: float


@dataclass(frozen=True)
class Difference:
    """A paired difference and its noise: the paired test-set standard error, combined where measured with
    the seed-to-seed spread of the models behind it (``inversion.bounds.difference_noise``)."""

    value: float
    noise: float

    def pm(self) -> str:
        """"value ± noise", both to the noise's precision (``decimals``): +1.1 ± 1.0, +1.20 ± 0.12, -0.052 ± 0.031."""
        d = decimals(self.noise)
        return f"{self.value:+.{d}f} ± {self.noise:.{d}f}"


def decimals(noise: float) -> int:
    """Decimals that show a noise to two significant digits below 1 and to one decimal above (1 to 4)."""
    if not (noise > 0 and math.isfinite(noise)):
        return 1
    return min(4, max(1, 1 - math.floor(math.log10(noise))))


@dataclass(frozen=True)
class SeedSpread:
    """Standard deviation of the NCE over inversion models that differ only in their seed, and how many
    models it was measured on (sd 0 when there are no replicates)."""

    sd: float
    n_models: int


# ---------------------------------------------------------------------------------------------------------
# Figures: drawn for the page they are read on
# ---------------------------------------------------------------------------------------------------------

DPI = 110  # the chapters' figure and savefig dpi: one inch of figure is DPI CSS px on the page, at most
COLUMN_PX = 672  # a figure's width in the book's text column at a 1280-px window (the browser check measures it)
MIN_TEXT_PX = 10  # the smallest text a figure may show on the page, in CSS px
PAD_IN = 0.1  # the white margin around a saved figure (matplotlib's default)
FIGURE_WIDTH_IN = COLUMN_PX / DPI - 2 * PAD_IN  # a figure this wide is shown at its own size: its text keeps its size


def shown_width_in(fig) -> float:
    """The width of ``fig``'s PNG in inches: its tight bounding box and the padding, as ``figure_png`` saves it."""
    fig.draw_without_rendering()  # tick labels exist only once drawn
    return fig.get_tightbbox().width + 2 * PAD_IN


def smallest_text_px(fig, column_px: int = COLUMN_PX, width_in: float | None = None) -> tuple[float, str]:
    """The smallest visible text of ``fig`` as the page shows it, in CSS px, and that text.

    A figure's PNG is ``width x DPI`` px wide; the page shows it at that size, or scaled down to the
    column's width when wider. Text drawn at s points is then s / 72 x DPI x min(1, column / width) px.
    ``width_in``: the width of the image ``fig`` is shown in, when the caller has drawn it and measured that
    (``shown_width_in``, or the widest of the figures it is stacked with); otherwise it is measured here.
    """
    import matplotlib.text

    width_in = width_in if width_in is not None else shown_width_in(fig)
    scale = min(1.0, column_px / (width_in * DPI))
    sizes = [(t.get_fontsize() / 72 * DPI * scale, t.get_text()) for t in fig.findobj(matplotlib.text.Text)
             if t.get_visible() and t.get_text().strip() and _drawn(t)]
    return min(sizes, default=(float("inf"), ""))


def _drawn(t) -> bool:
    """A tick label is drawn only when its tick is inside the axis' view."""
    axis = getattr(t, "axes", None)
    if axis is None:
        return True
    for ax_ in (axis.xaxis, axis.yaxis):
        for tick in ax_.get_major_ticks() + ax_.get_minor_ticks():
            if t in (tick.label1, tick.label2):
                lo, hi = sorted(ax_.get_view_interval())
                return tick.get_visible() and lo - 1e-9 * abs(hi - lo) <= tick.get_loc() <= hi + 1e-9 * abs(hi - lo)
    return True


def check_legible(fig, name: str = "figure", column_px: int = COLUMN_PX, width_in: float | None = None) -> None:
    """Raise if some text of ``fig`` would be shown smaller than ``MIN_TEXT_PX`` on the page."""
    px, text = smallest_text_px(fig, column_px, width_in)
    if px < MIN_TEXT_PX:
        raise ValueError(f"{name}: the text {text!r} would be {px:.1f} px on the page (at least {MIN_TEXT_PX} px): "
                         f"draw the figure narrower than {column_px / DPI:.1f} in or its text larger")


def figure_png(*figs, gap_px: int = 12) -> bytes:
    """PNG bytes of ``figs`` one below the other (as the page would show each, at ``DPI``), each checked
    with ``check_legible`` and then closed. Figures drawn in a loop (one per dataset) become one figure
    of the page, with one number and one caption."""
    import io

    from PIL import Image

    parts, widest = [], max((shown_width_in(f) for f in figs), default=0.0)  # draws each figure once
    for i, fig in enumerate(figs):
        check_legible(fig, f"part {i + 1} of {len(figs)} of the figure", width_in=widest)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pad_inches=PAD_IN, facecolor="white")
        plt.close(fig)
        parts.append(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    if not parts:
        raise ValueError("figure_png needs at least one figure")
    out = Image.new("RGB", (max(p.width for p in parts), sum(p.height for p in parts) + gap_px * (len(parts) - 1)),
                    "white")
    y = 0
    for p in parts:
        out.paste(p, (0, y))
        y += p.height + gap_px
    buf = io.BytesIO()
    out.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def chunks(items: Sequence, size: int) -> list[list]:
    """``items`` in consecutive lists of ``size`` (the last may be shorter): panels to a row, layers to a block."""
    items = list(items)
    return [items[i : i + size] for i in range(0, len(items), size)]


def text_figure(text: str):
    """A small figure that says why the figure it stands in for is not drawn (keeps its number and caption)."""
    fig = plt.figure(figsize=(6.0, 0.6))
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, wrap=True, color="0.3")
    return fig


def glue_figure(name: str, *figs, results: Iterable = (), param_set: str | None = None) -> None:
    """Glue ``figs`` (stacked, ``figure_png``) under ``name`` for a ``{glue:figure}`` directive, whose
    caption the chapter writes; with ``results``, also glue their provenance line under ``name + "_run"``
    for the end of that caption."""
    from IPython.display import Image
    from myst_nb import glue

    glue(name, Image(data=figure_png(*figs), format="png"), display=False)
    if param_set is not None:
        glue(name + "_run", md(provenance_caption(results, param_set)), display=False)


def to_display(img: np.ndarray) -> np.ndarray:
    """[C, H, W] uint8 -> [H, W] (grey) or [H, W, 3] for imshow."""
    img = np.asarray(img)
    return img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))


def _show(ax, img, frame=None):
    ax.imshow(to_display(img), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(frame is not None)
        if frame is not None:
            s.set_edgecolor(frame)
            s.set_linewidth(2)


def image_grid(columns: Sequence[tuple[str, np.ndarray]], groups: Sequence[tuple[str, int]] | None = None,
               frames: Sequence[str | None] | None = None, cell: float = 0.5, title: str | None = None,
               row_labels: Sequence[str] | None = None, max_width_px: int | None = None, lead: int = 0):
    """A grid of images: ``columns`` is a list of (column title, images [rows, C, H, W]).

    ``groups`` [(label, n_columns), ...] puts a label over consecutive columns, separated by a gap;
    ``frames`` gives a frame colour per column (None: no frame); ``row_labels`` name the rows on the left.
    Groups that do not fit side by side in ``max_width_px`` (default: the text column, ``COLUMN_PX``) wrap
    into bands, one below the other, each with its own column titles: the figure is then shown at its own
    size and its text stays legible (``smallest_text_px``). A single group wider than that is kept whole.
    The first ``lead`` groups (the inputs) start every band, so each band reads on its own.
    """
    n_rows = len(columns[0][1])
    groups = groups or [("", len(columns))]
    if sum(n for _, n in groups) != len(columns):
        raise ValueError("groups must cover every column")
    gap = 0.35  # width of the space between groups, in cells
    left_in, right_in = (0.8 if row_labels else 0.05), 0.05
    limit_in = (max_width_px or COLUMN_PX) / DPI
    starts = np.cumsum([0] + [n for _, n in groups]).tolist()  # first column of each group
    cells = lambda band: sum(groups[gi][1] for gi in band) + gap * (len(band) - 1)  # noqa: E731  (a band's width)
    bands = [list(range(lead))]  # group indices per band
    for gi in range(lead, len(groups)):
        if len(bands[-1]) > lead and left_in + right_in + cell * cells(bands[-1] + [gi]) > limit_in:
            bands.append(list(range(lead)))
        bands[-1].append(gi)
    width_cells = [cells(b) for b in bands]
    label_in = 0.45 if any(groups[gi][0] for gi in range(len(groups))) else 0.25  # column titles (+ group labels)
    title_in = 0.3 if title else 0.0
    band_in = label_in + cell * n_rows
    sep_in = 0.1  # between bands
    height = title_in + len(bands) * band_in + (len(bands) - 1) * sep_in + 0.05
    width = left_in + right_in + cell * max(width_cells)
    fig = plt.figure(figsize=(width, height))
    for b, (band, w_cells) in enumerate(zip(bands, width_cells)):
        widths = []
        for i, gi in enumerate(band):
            widths += [1.0] * groups[gi][1] + ([gap] if i < len(band) - 1 else [])
        top = 1 - (title_in + b * (band_in + sep_in) + label_in) / height
        bottom = top - cell * n_rows / height
        gs = fig.add_gridspec(n_rows, len(widths), width_ratios=widths, wspace=0.04, hspace=0.04,
                              left=left_in / width, right=(left_in + cell * w_cells) / width, top=top, bottom=bottom)
        slot = 0
        for gi in band:
            label, n = groups[gi]
            first = last = None
            for col in range(starts[gi], starts[gi] + n):
                name, imgs = columns[col]
                for r in range(n_rows):
                    ax = fig.add_subplot(gs[r, slot])
                    _show(ax, imgs[r], frames[col] if frames else None)
                    if slot == 0 and row_labels:
                        ax.set_ylabel(row_labels[r], fontsize=9, rotation=0, ha="right", va="center", labelpad=4)
                    if r == 0:
                        ax.set_title(name, fontsize=8, pad=2)
                        first = first if first is not None else ax
                        last = ax
                slot += 1
            slot += 1  # the gap
            if label and first is not None:
                x0, x1 = first.get_position().x0, last.get_position().x1
                fig.text((x0 + x1) / 2, top + 0.24 / height, label, ha="center", va="bottom", fontsize=9,
                         fontweight="bold")
    if title:
        fig.text(0.5, 1 - 0.04 / height, title, ha="center", va="top", fontsize=10)
    return fig


# ---------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------


def fmt(v, spec: str = ".3g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, str):
        return v
    return format(v, spec)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence], align: str | None = None) -> str:
    header = list(header)
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else (":---:" if a == "c" else "---") for a in align]
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def md(text: str):
    from IPython.display import Markdown

    return Markdown(text)


VERDICTS = {"reproduced": "✓ reproduced", "contradicted": "✗ **contradicted**", "undecided": "○ undecided",
            "no test": "— no test"}


MARGIN = 2.0  # a difference is decided when it is more than this many times its noise from zero


@dataclass(frozen=True)
class Power:
    """What an NCE comparison could detect: the noise of its difference, the smallest effect it decides
    (``MARGIN`` x noise), and, where the paper reports the effect, whether it is that large (the run had the
    power to see it). ``noise`` 0 means none was measured."""

    noise: float
    unit: str = " nats"
    paper_effect: float | None = None

    @property
    def detectable(self) -> float:
        return MARGIN * self.noise

    @property
    def powered(self) -> bool | None:
        if self.paper_effect is None or not (self.noise > 0):
            return None
        return abs(self.paper_effect) > self.detectable

    def text(self) -> str:
        """"detectable: 4.0 nats or more; the paper's 4.46 nats: within reach" (or "below it")."""
        if not (self.noise > 0):
            return "no noise measured: nothing decidable"
        size = f"{self.detectable:.1f}" if self.detectable >= 1 else f"{self.detectable:.2g}"
        out = f"detectable: {size}{self.unit} or more"
        if self.paper_effect is not None:
            out += (f"; the paper's {abs(self.paper_effect):.2f}{self.unit}: "
                    + ("within reach" if self.powered else "below it, too small for this run to see"))
        return out


def decide(d: Difference, sign: int = +1, margin: float = MARGIN) -> bool | None:
    """A difference against its noise: True when it has the claimed ``sign`` beyond ``margin`` noise units
    (reproduced), False when it has the other sign beyond them (contradicted), None inside (undecided at
    this budget, and also when there is no noise to judge by)."""
    if not (d.noise > 0) or not math.isfinite(d.value):
        return None
    z = sign * d.value / d.noise
    return True if z > margin else False if z < -margin else None


def undecided_why(d: Difference, unit: str = "", digits: int = 2, margin: float = MARGIN) -> str:
    """Why an undecided row is undecided, and what effect the run could have detected."""
    if not (d.noise > 0):
        return "no noise measured for this comparison, so the run cannot judge it"
    return (f"inside its noise: this run would have decided a difference of {margin * d.noise:.{digits}f}{unit} or "
            "more either way")


@dataclass(frozen=True)
class Claim:
    """One checked claim: what is claimed, what the paper reports, what this run gives, and the outcome by
    the stated criterion: reproduced (True), contradicted (False), or undecided at this budget (None, when the
    difference lies inside its noise or there is none to judge by). ``discriminates`` is False for a test
    that cannot tell the claim from its negation on this run (its control behaves the same): the row then
    reads "no test" whatever ``reproduced`` says. ``why`` explains a row that is not reproduced, from the
    run's own numbers. ``kind`` and ``layer`` let a chapter count claims. ``power``, on every comparison of
    NCEs, says what effect the run could have detected."""

    claim: str
    paper: str
    ours: str
    reproduced: bool | None
    criterion: str
    kind: str | None = None
    layer: str | None = None
    why: str | None = None
    discriminates: bool = True
    power: Power | None = None

    def __post_init__(self):
        if self.reproduced is not None:  # numpy booleans compare and hash like bools but are not ``True``
            object.__setattr__(self, "reproduced", bool(self.reproduced))

    @property
    def status(self) -> str:
        """reproduced / contradicted / undecided / no test."""
        if not self.discriminates:
            return "no test"
        return {True: "reproduced", False: "contradicted", None: "undecided"}[self.reproduced]

    @property
    def label(self) -> str:
        return VERDICTS[self.status]


def claims_table(claims: Sequence[Claim]):
    """Markdown, four columns for the page's full width: the claim with the test it was judged by under it,
    the paper's value, this run's with what it could detect under it (``Power``), and the verdict with its
    reason ("why not") under it when it has one."""
    rows = [(f"{c.claim}<br><small>test: {c.criterion}</small>", c.paper,
             c.ours + (f"<br><small>{c.power.text()}</small>" if c.power else ""),
             c.label + (f"<br><small>{c.why}</small>" if c.why else "")) for c in claims]
    return md(markdown_table(["claim (and its test)", "paper", "this run", "verdict (and why not)"], rows, "llll"))


def count_reproduced(claims: Iterable[Claim]) -> tuple[int, int]:
    """(claims reproduced, claims decided either way: reproduced or contradicted)."""
    claims = list(claims)
    return (sum(c.status == "reproduced" for c in claims),
            sum(c.status in ("reproduced", "contradicted") for c in claims))


def _commit(p: Mapping) -> str:
    dirty = {True: " (dirty)", False: "", None: " (?)"}[p.get("dirty")]
    return f"{str(p.get('commit', '?'))[:10]}{dirty}"


def inversion_recipe(warm_start_steps: int) -> str:
    """A chapter's sentence on how its inversion models were trained (the page says which recipe it used)."""
    if not warm_start_steps:
        return "The inversion models here are trained from scratch, the paper's recipe."
    return (f"The inversion models here are warm-started (not the paper's recipe, which trains each from scratch): "
            f"each begins as an unconditional PixelCNN++ of the same architecture, trained once for "
            f"{warm_start_steps:,} steps on the dataset's images, with its conditioning at zero, so that training only "
            "has to learn what h adds. Beside each NCE stands its gain over that unconditional model on the same "
            "test images: with one model family, this difference estimates the information in h that such a model "
            "can use (Xu et al. 2020). A negative gain means that training cost the model more than h gave it: "
            "it is then worse than p(x), and its NCE says little about the layer.")


def plural(n: int, one: str, many: str | None = None) -> str:
    """"1 seed", "3 seeds": a count with its noun in the right number."""
    return f"{n:,} {one if n == 1 else (many or one + 's')}"


def parameter_sets_table(sets: Mapping) -> str:
    """Markdown: what each parameter set trains and evaluates, one column per set (``sets``: name ->
    ``pipeline.Params``), a row per quantity a reader compares across sets. Sections a set lacks read "—"."""

    def get(P, section, fn):
        try:
            return fn(P.section(section)) if section in P else "—"
        except (KeyError, AttributeError):
            return "—"

    rows = [
        ("§5.1 datasets", lambda P: get(P, "layers", lambda S: ", ".join(dataset_label(d) for d in S.datasets))),
        ("§5.1 classifier", lambda P: get(P, "layers", lambda S: f"{S.classifier.steps:,} steps")),
        ("§5.1 PixelCNN++", lambda P: get(P, "layers", lambda S: f"{S.inversion.n_filters} filters, "
                                          f"{plural(S.inversion.n_resnet, 'gated resnet')} per block, {S.inversion.steps:,} steps")),
        ("§5.1 NCE test images", lambda P: get(P, "layers", lambda S: f"{S.evaluation.n_test_nce:,}")),
        ("§5.1 Table 1", lambda P: get(P, "layers", lambda S: f"{S.evaluation.n_images} images × "
                                       f"{S.evaluation.n_samples} samples")),
        ("§5.2 inversion models", lambda P: get(P, "architectures", lambda S: f"{S.inversion.n_filters} filters, "
                                                f"{S.inversion.steps:,} steps, {plural(1 + len(S.replicate_seeds), 'seed')}")),
        ("§5.3 inversion models", lambda P: get(P, "dynamics", lambda S: f"{S.inversion.steps:,} steps at "
                                                f"{len(S.steps)} snapshots, {plural(1 + len(S.replicate_seeds), 'seed')}")),
        ("other inverters", lambda P: get(P, "inverters", lambda S: f"flow {S.flow.steps:,}, VAE {S.vae.steps:,}, "
                                          f"GAN {S.gan.steps:,} steps; bounds on {S.evaluation.n_test:,} images")),
        ("appendix estimators", lambda P: get(P, "estimators", lambda S: f"{S.n_test:,} test images")),
    ]
    names = list(sets)
    return markdown_table(["", *[f"`{n}`" for n in names]],
                          [(label, *[fn(sets[n]) for n in names]) for label, fn in rows], "l" + "l" * len(names))


def _lineage(result) -> list[dict]:
    """The configs of a result and of every stage it was computed from, nearest first (read from the
    result.json files next to it in the cache; a missing one is skipped)."""
    out, todo, seen = [], [(result.dir, result.info)], set()
    while todo:
        directory, info = todo.pop(0)
        out.append(info.get("config", {}))
        for dirname in info.get("deps", {}).values():
            dep = directory.parent / dirname
            if dirname not in seen and (dep / "result.json").exists():
                seen.add(dirname)
                todo.append((dep, json.loads((dep / "result.json").read_text())))
    return out


def describe_result(result) -> str:
    """What a stage result is, for a reader: the dataset, network, regime, snapshot, layer, family and seed
    it belongs to (from it and the stages it was computed from), then its own sizes."""
    lineage = _lineage(result)
    own = lineage[0]

    def first(key):
        return next((c[key] for c in lineage if c.get(key) is not None), None)

    parts = []
    if first("dataset"):
        parts.append(dataset_label(first("dataset")))
    if first("arch"):
        parts.append(f"{first('arch')} network")
    if first("overfit_n"):
        parts.append(f"overfitted ({first('overfit_n')} examples)")
    snapshot = next((c["step"] for c in lineage if "step" in c and "n_eval" in c), None)
    if snapshot is not None:
        parts.append(f"snapshot after {snapshot} updates")
    if first("layer"):
        parts.append(layer_label(first("layer")))
    if own.get("family"):
        parts.append(own["family"])
    # the seed of the trained model the result is or evaluates (a replicate differs from the main one by it)
    seed = next((c.get("seed") for c in lineage if "layer" in c), None) or own.get("seed")
    if seed:
        parts.append(f"seed {seed}")
    parts += [f"{k}={own[k]}" for k in ("steps", "n_test", "n_images", "n_samples") if own.get(k) is not None]
    return ", ".join(parts)


def _stored(r) -> str:
    """Where a stage result on the page came from: 'committed' (it came with the repository, under
    cache/<set>/) or 'this checkout' (computed here, or unpacked into the cache without being committed)."""
    return "committed" if committed_result(r.dir) else "this checkout"


def _n_committed(results: list) -> int:
    return sum(_stored(r) == "committed" for r in results)


def _stored_sentence(results: list) -> str:
    n = _n_committed(results)
    if n == len(results):
        return (f"Every one of them came with the repository (committed under `cache/{results[0].dir.parent.name}/`, "
                "computed where their commit, device and date say); a changed parameter recomputes only what "
                "depends on it.")
    if n == 0:
        return "None of them came with the repository: all were computed in this checkout (or unpacked into it)."
    return (f"{n} of them came with the repository (committed under `cache/{results[0].dir.parent.name}/`), the other "
            f"{len(results) - n} were computed in this checkout; the column *stored* says which.")


def provenance_table(results: Iterable, param_set: str):
    """Markdown: one row per stage result used on the page, with where and how it was computed. Commit,
    device and torch version go in the header when every result shares them, else into the table; so does
    whether each result came with the repository (committed) or was computed in this checkout."""
    results = list(results)
    total = sum(r.provenance.get("wall_s", 0) for r in results)
    shared, varying = {}, []
    for field, get in (("commit", lambda r: _commit(r.provenance)), ("device", lambda r: r.provenance.get("device", "?")),
                       ("torch", lambda r: r.provenance.get("torch", "?")), ("stored", _stored)):
        values = {get(r) for r in results}
        if len(values) == 1:
            shared[field] = values.pop()
        else:
            varying.append((field, get))
    shared.pop("stored", None)  # said in a sentence
    head = (f"Parameter set **{param_set}**; {len(results)} stage results, {total / 60:.1f} min of compute in "
            f"total (the sum of each stage's wall time when it was computed)")
    head += "".join(f"; {k} `{v}`" for k, v in shared.items()) + ". "
    head += (_stored_sentence(results) if results else "") + "\n\n"
    rows = []
    for r in results:
        what = describe_result(r)
        p = r.provenance
        rows.append((f"`{r.dir.name}`", what, *[get(r) for _, get in varying], f"{p.get('wall_s', float('nan')):.0f}",
                     str(p.get("date", "?"))[:16].replace("T", " ")))
    header = ["stage result", "what it is", *[k for k, _ in varying], "wall s", "date (UTC)"]
    return md(head + markdown_table(header, rows, "ll" + "l" * len(varying) + "rl"))


def provenance_caption(results: Iterable, param_set: str) -> str:
    """One line for under a figure: parameter set, commit(s), device(s), and whether the results came with
    the repository."""
    results = list(results)
    if not results:
        return f"Run: parameter set {param_set}; drawn from no stage result."
    commits = sorted({str(r.provenance.get("commit", "?"))[:10] + (" (dirty)" if r.provenance.get("dirty") else "")
                      for r in results})
    devices = sorted({r.provenance.get("device", "?") for r in results})
    n = _n_committed(results)
    stored = ("all committed with the repository" if n == len(results) else
              "computed in this checkout" if n == 0 else f"{n} committed with the repository")
    return (f"Run: parameter set {param_set}; commit {', '.join(commits)}; device {', '.join(devices)}; "
            f"{len(results)} stage results, {stored}.")


def flat_results(tree) -> list:
    """Every stage result in a nested dict/list of results and every stage each was computed from (the ``deps``
    its result.json records, found beside it in the cache), each once: a page's provenance names the models
    behind its numbers, not only the results it reads (an NCE's replicate model, a §5.2 model's p(x))."""
    out, seen = [], set()

    def add(r):
        if r.dir in seen:
            return
        seen.add(r.dir)
        out.append(r)
        for dep in r.info.get("deps", {}).values():
            d = r.dir.parent / dep
            if d not in seen and (d / "result.json").exists():  # each shared dependency read once
                add(type(r)(d))

    def rec(x):
        if hasattr(x, "provenance") and hasattr(x, "dir"):
            add(x)
        elif isinstance(x, Mapping):
            for v in x.values():
                rec(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                rec(v)

    rec(tree)
    return out


