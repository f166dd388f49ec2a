"""§5.1 in numbers and pictures: what each layer of a classifier keeps about its input.

``layer_summary`` reads one dataset's stage results (the classifier, and per layer the inversion model, its
NCE, the MSE decoder, samples and nearest neighbours) into a ``LayerSummary``; ``figure1``, ``figure2`` and
``nce_plot`` draw the paper's Fig. 1, Fig. 2 and Fig. 5a; ``layer_claims`` checks §5.1's claims against
the paper's numbers (``inversion.paper``) by stated criteria.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np

from inversion import paper
from inversion.bounds import paired_difference
from inversion.reports.common import FIGURE_WIDTH_IN, MARGIN, Claim, Difference, Estimate, Power, dataset_label, \
    decide, image_grid, layer_label, share_stderr, undecided_why


def figure1(inputs: np.ndarray, layers: Mapping[str, tuple[np.ndarray, np.ndarray]], n_samples: int = 3,
            title: str | None = None):
    """Fig. 1: one row per layer; for each test image its input, ``n_samples`` inversion samples from that
    layer and the layer's MSE reconstruction (framed in orange).

    ``layers`` maps layer name -> (samples [n, K, C, H, W], reconstructions [n, C, H, W]).
    """
    names = list(layers)
    columns, groups, frames = [], [], []
    for i in range(len(inputs)):
        k = min(n_samples, layers[names[0]][0].shape[1])
        columns.append(("input", np.stack([inputs[i]] * len(names))))
        columns += [(f"sample {j + 1}", np.stack([layers[l][0][i, j] for l in names])) for j in range(k)]
        columns.append(("MSE", np.stack([layers[l][1][i] for l in names])))
        frames += [None] * (k + 1) + ["tab:orange"]
        groups.append((f"test image {i + 1}", k + 2))
    return image_grid(columns, groups, frames, title=title, row_labels=[layer_label(l) for l in names])


def figure2(inputs: np.ndarray, top_samples: np.ndarray, neighbours: np.ndarray, layer: str = "fc3",
            n_drawn: int | None = None, title: str | None = None):
    """Fig. 2: inputs | the top-k of N samples by L1 distance at ``layer`` | the k nearest training images."""
    k = top_samples.shape[1]
    columns = [("input", inputs)] + [(f"#{j + 1}", top_samples[:, j]) for j in range(k)] + \
              [(f"#{j + 1}", neighbours[:, j]) for j in range(k)]
    drawn = f" of {n_drawn}" if n_drawn else ""
    groups = [("", 1), (f"top-{k}{drawn} samples ({layer_label(layer)} L1)", k),
              (f"{k} nearest training images ({layer_label(layer)} L1)", k)]
    return image_grid(columns, groups, title=title, lead=1)


def nce_plot(summaries: Mapping[str, LayerSummary]):
    """Fig. 5a, and what it is judged on. Left: the NCE per layer relative to |NCE(CONV1)|, one line per
    dataset, as in the paper (± 2 paired standard errors, delta method). Right: the paired differences
    between consecutive layers in nats (same test images, so per-image difficulty cancels), ± 2 standard
    errors: a bar clear of zero is a change the run resolves, however close the two NCEs look on the left.
    ``summaries`` maps dataset -> its ``LayerSummary``.
    """
    fig, (rel_ax, step_ax) = plt.subplots(1, 2, figsize=(FIGURE_WIDTH_IN, 3.3), gridspec_kw=dict(width_ratios=[1, 1.1]))
    markers = "osD^v"
    n = len(summaries)
    for i, (ds, s) in enumerate(summaries.items()):
        x = np.arange(len(s.layers))
        rel = np.array([s.relative[l].value for l in s.layers])
        rel_err = np.array([s.relative[l].stderr for l in s.layers])
        rel_ax.errorbar(x, rel, yerr=2 * rel_err, marker=markers[i % 5], color=f"C{i}", capsize=3,
                        label=dataset_label(ds))
        offset = (i - (n - 1) / 2) * 0.18  # side by side when several datasets share a step
        xs = np.arange(len(s.steps)) + offset
        step_ax.errorbar(xs, [t.diff for t in s.steps], yerr=[2 * t.stderr for t in s.steps], fmt=markers[i % 5],
                         color=f"C{i}", capsize=3, label=dataset_label(ds))
    first = next(iter(summaries.values()))
    rel_ax.set_xticks(np.arange(len(first.layers)), [layer_label(l) for l in first.layers], fontsize=8)
    rel_ax.set_ylabel("NCE / |NCE(CONV1)|", fontsize=9)
    rel_ax.set_title("NCE per layer (paper's Fig. 5a)", fontsize=9.5)
    rel_ax.tick_params(axis="y", labelsize=8)
    rel_ax.grid(alpha=0.3)
    step_ax.axhline(0, color="0.3", lw=0.8)
    step_ax.set_xticks(np.arange(len(first.steps)),
                       [f"{layer_label(t.shallower)}\n→ {layer_label(t.deeper)}" for t in first.steps], fontsize=8)
    step_ax.set_ylabel("paired NCE change [nats/image]", fontsize=9)
    step_ax.set_title("change to the next layer", fontsize=9.5)
    step_ax.tick_params(axis="y", labelsize=8)
    step_ax.grid(alpha=0.3)
    if n > 1:
        rel_ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------------
# The summary of one dataset
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerStep:
    """The paired NCE difference from one layer to the next (``deeper`` − ``shallower``, same test images)."""

    shallower: str
    deeper: str
    diff: float
    stderr: float


@dataclass(frozen=True)
class Table1Distances:
    """Mean L1 distance per unit at one layer between a test input's representation and that of its
    nearest training image (nn1), one sample (im_s), the closest of ``nn_of`` samples (im_nn); and each
    sample distance minus nn1, paired over the same test images (mean and standard error): the side of 1NN
    that Table 1 reads is decided against that noise."""

    nn1: float
    im_s: float
    im_nn: float
    im_s_minus_nn1: Estimate
    im_nn_minus_nn1: Estimate


def table1_distances(dist: np.ndarray, test_index: np.ndarray, nn_dist: np.ndarray, nn_of: int) -> Table1Distances:
    """One layer's Table 1 row, paired by test image: ``dist`` [n, k] the samples' distances to h (the
    samples stage's ``samples.npz``), ``test_index`` [n] their test images, ``nn_dist`` [n_test, >=1] the
    nearest training images' distances for the first ``n_test`` test images (``neighbours.npz``)."""
    index = np.asarray(test_index)
    if index.max() >= len(nn_dist):
        raise ValueError(f"the samples reach test image {index.max()} but the neighbour search covers the first "
                         f"{len(nn_dist)}: give the neighbours stage an n_test of at least {index.max() + 1}")
    nn1 = np.asarray(nn_dist)[index, 0]
    im_s, im_nn = np.asarray(dist)[:, 0], np.asarray(dist)[:, :nn_of].min(1)
    return Table1Distances(nn1=float(nn1.mean()), im_s=float(im_s.mean()), im_nn=float(im_nn.mean()),
                           im_s_minus_nn1=Estimate(*paired_difference(im_s, nn1)),
                           im_nn_minus_nn1=Estimate(*paired_difference(im_nn, nn1)))


@dataclass(frozen=True)
class OwnVsSameClass:
    """Style beyond the class: the samples' pixel distance to their own input over that to other test
    inputs of the same class (``ratio``, mean over inputs), and the mean difference of the two distances
    with its standard error, over ``n_inputs`` inputs that have a same-class partner."""

    ratio: float
    n_inputs: int
    diff: float
    stderr: float


@dataclass(frozen=True)
class Figure2Summary:
    """Fig. 2: the best of ``n_drawn`` samples per image at ``layer`` against the nearest training image,
    mean L1 per unit over ``n_images`` images; ``top_k`` of each are shown."""

    layer: str
    n_drawn: int
    n_images: int
    top1: float
    nn1: float
    top_k: int


@dataclass(frozen=True)
class LayerSummary:
    dataset: str
    layers: list[str]
    accuracy: float  # the classifier's test accuracy
    nce: dict[str, Estimate]  # nats per image
    bits_per_dim: dict[str, float]
    relative: dict[str, Estimate]  # NCE / |NCE(first layer)|, paired (delta method)
    steps: list[LayerStep]  # consecutive layers
    mse: dict[str, float]  # the MSE decoder's test MSE
    mse_train: dict[str, float]  # its MSE on as many training images: far below the test MSE is overfitting
    table1: dict[str, Table1Distances]
    nn_of: int  # IM-NN: the closest of this many samples
    agreement: dict[str, float]  # fraction of samples classified like their input
    pixel_l1: dict[str, float]  # mean |sample − input| per pixel, 0–1 scale
    own_vs_same_class: dict[str, OwnVsSameClass]
    figure2: Figure2Summary | None
    gain: dict[str, Estimate] = field(default_factory=dict)  # NCE − log p(x) of the warm start's model (if any)
    agreement_stderr: dict[str, float | None] = field(default_factory=dict)  # its s.e. across the input images


def ratio_stderr(a: np.ndarray, b: np.ndarray) -> Estimate:
    """mean(a) / |mean(b)| over the same images and its standard error (delta method on paired data)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    A, B = a.mean(), b.mean()
    r = A / abs(B)
    influence = (a - A) / abs(B) - r * (b - B) / B  # d r / d A = 1/|B|, d r / d B = -r / B
    return Estimate(float(r), float(influence.std(ddof=1) / math.sqrt(len(a))))


def own_vs_same_class(pixel_l1_to_inputs: np.ndarray, labels: np.ndarray) -> OwnVsSameClass:
    """``pixel_l1_to_inputs[i, j]``: mean pixel distance of input i's samples to test input j."""
    d, y = pixel_l1_to_inputs, labels
    ratios, diffs = [], []
    for i in range(len(y)):
        same = [j for j in range(len(y)) if j != i and y[j] == y[i]]
        if same:
            ratios.append(d[i, i] / d[i, same].mean())
            diffs.append(d[i, i] - d[i, same].mean())
    if len(diffs) >= 2:
        return OwnVsSameClass(float(np.mean(ratios)), len(ratios), float(np.mean(diffs)),
                              float(np.std(diffs, ddof=1) / math.sqrt(len(diffs))))
    return OwnVsSameClass(float("nan"), len(ratios), float("nan"), float("nan"))


def layer_summary(dataset: str, res: Mapping) -> LayerSummary:
    """The numbers of one dataset's §5.1 results (``pipeline.layers``), for tables, prose and claims."""
    layers = list(res["layers"])
    R = res["layers"]
    lp = {l: R[l]["nce"].arrays("log_probs.npy")["array"] for l in layers}
    steps = []
    for a, b in zip(layers, layers[1:]):
        d = lp[b] - lp[a]
        steps.append(LayerStep(a, b, float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))))
    m = {l: R[l]["samples"].metrics for l in layers}
    style, agreement_se, table1 = {}, {}, {}
    for l in layers:
        z = R[l]["samples"].arrays("samples.npz")
        style[l] = own_vs_same_class(z["pixel_l1_to_inputs"], z["labels"])
        agreement_se[l] = share_stderr(z["agree"]) if "agree" in z else None
        table1[l] = table1_distances(z["dist"], z["test_index"], R[l]["neighbours"].arrays("neighbours.npz")["dist"],
                                     m[l]["nn_of"])
    figure2 = None
    f2 = res.get("figure2")
    if f2 is not None:
        lay = [l for l in layers if R[l]["inversion"].dir.name == f2.info["deps"]["inversion"]][0]
        z = f2.arrays("samples.npz")
        nn = R[lay]["neighbours"].arrays("neighbours.npz")
        n = len(z["test_index"])
        figure2 = Figure2Summary(layer=lay, n_drawn=f2.config["n_samples"], n_images=n,
                                 top1=float(z["dist"].min(1).mean()), nn1=float(nn["dist"][:n, 0].mean()),
                                 top_k=f2.config["keep_topk"])
    return LayerSummary(
        dataset=dataset, layers=layers, accuracy=res["classifier"].metrics["test_accuracy"],
        nce={l: Estimate(R[l]["nce"].metrics["nats"], R[l]["nce"].metrics["stderr"]) for l in layers},
        bits_per_dim={l: R[l]["nce"].metrics["bits_per_dim"] for l in layers},
        relative={l: ratio_stderr(lp[l], lp[layers[0]]) for l in layers},
        steps=steps,
        mse={l: R[l]["decoder"].metrics["test_mse"] for l in layers},
        mse_train={l: R[l]["decoder"].metrics["train_mse"] for l in layers},
        table1=table1,
        nn_of=m[layers[0]]["nn_of"],
        agreement={l: m[l]["class_agreement"] for l in layers}, agreement_stderr=agreement_se,
        pixel_l1={l: m[l]["pixel_l1"] for l in layers},
        own_vs_same_class=style, figure2=figure2,
        gain={l: Estimate(*paired_difference(lp[l], R[l]["unconditional_nce"].arrays("log_probs.npy")["array"]))
              for l in layers if "unconditional_nce" in R[l]})


def biggest_drop(s: LayerSummary) -> LayerStep:
    """The consecutive pair of layers with the most negative NCE difference."""
    return min(s.steps, key=lambda t: t.diff)


# ---------------------------------------------------------------------------------------------------------
# Claims
# ---------------------------------------------------------------------------------------------------------

ACCURACY_TOLERANCE = 0.01  # "reproduced": within 1 percentage point of the paper's test accuracy


def _monotone(values: Sequence[float], increasing: bool) -> bool:
    pairs = list(zip(values, values[1:]))
    return all((b > a) if increasing else (b < a) for a, b in pairs)


def _table1_pattern(layers: Sequence[str], signs: Sequence[str]) -> str:
    below = [layer_label(l) for l, g in zip(layers, signs) if g == "<"]
    above = [layer_label(l) for l, g in zip(layers, signs) if g == ">"]
    return "; ".join(p for p in (("closer at " + ", ".join(below)) if below else "",
                                 ("farther at " + ", ".join(above)) if above else "") if p)


def _steps_verdict(steps: Sequence[LayerStep]) -> tuple[bool | None, str | None]:
    """Every consecutive NCE difference below 0 beyond 2 s.e.: reproduced; any above 0 beyond 2 s.e.:
    contradicted (the NCE rises there); otherwise undecided, naming the steps inside their noise."""
    outcomes = [decide(Difference(t.diff, t.stderr), -1) for t in steps]
    if all(o is True for o in outcomes):
        return True, None
    rises = [t for t, o in zip(steps, outcomes) if o is False]
    if rises:
        return False, "the NCE rises beyond its noise at " + ", ".join(
            f"{layer_label(t.shallower)} → {layer_label(t.deeper)} ({t.diff:+.1f} ± {t.stderr:.1f} nats)" for t in rises)
    inside = [t for t, o in zip(steps, outcomes) if o is None]
    return None, "inside the noise at " + ", ".join(
        f"{layer_label(t.shallower)} → {layer_label(t.deeper)} ({t.diff:+.1f} ± {t.stderr:.1f}: a drop of "
        f"{2 * t.stderr:.1f} nats or more would have been decided)" for t in inside)


def _table1_verdict(layers: Sequence[str], want: Sequence[str], got: Sequence[str],
                    gaps: Sequence[Estimate]) -> tuple[bool | None, str | None]:
    """Each layer's side of 1NN (``want``: the paper's "<" closer or ">" farther; ``got``: this run's means)
    decided by its paired gap sample − 1NN: every layer on the paper's side beyond ``MARGIN`` s.e.:
    reproduced; any on the other side beyond it: contradicted; otherwise undecided, naming the layers inside
    their noise."""
    outcomes = [decide(Difference(g.value, g.stderr), -1 if w == "<" else +1) for g, w in zip(gaps, want)]
    if all(o is True for o in outcomes):
        return True, None
    wrong = [(l, side) for l, side, o in zip(layers, got, outcomes) if o is False]
    if wrong:
        why = f"the other side of 1NN beyond the noise at {', '.join(layer_label(l) for l, _ in wrong)}"
        if all(side == ">" for _, side in wrong):
            why += ": samples of an inversion model that uses h less than the paper's land farther from h"
        return False, why
    return None, "inside the noise at " + ", ".join(
        f"{layer_label(l)} ({Difference(g.value, g.stderr).pm()}: a gap of {MARGIN * g.stderr:.2g} or more "
        "would have been decided)" for l, g, o in zip(layers, gaps, outcomes) if o is None)


def _biggest_drop_verdict(steps: Sequence[LayerStep]) -> tuple[bool | None, str | None]:
    """Is CONV1 → CONV2 (the first step) the biggest drop? Each other step against it, with the noise of
    the two steps' difference taken as independent (an overestimate when they share a layer's NCE)."""
    first = steps[0]
    outcomes = [decide(Difference(t.diff - first.diff, math.hypot(t.stderr, first.stderr)), +1) for t in steps[1:]]
    if all(o is True for o in outcomes):
        return True, None
    bigger = [t for t, o in zip(steps[1:], outcomes) if o is False]
    if bigger:
        return False, ", ".join(f"{layer_label(t.shallower)} → {layer_label(t.deeper)} drops more ({t.diff:+.1f} "
                                f"against {first.diff:+.1f} nats), beyond the noise" for t in bigger)
    return None, ("another drop is within the noise of CONV1 → CONV2's: " + ", ".join(
        f"{layer_label(t.shallower)} → {layer_label(t.deeper)} {t.diff:+.1f} ± {t.stderr:.1f}" for t, o in
        zip(steps[1:], outcomes) if o is None) + f" against {first.diff:+.1f} ± {first.stderr:.1f} nats")


def layer_claims(s: LayerSummary) -> list[Claim]:
    """The §5.1 claims for one dataset, each with the paper's value, this run's, and a stated criterion."""
    D = dataset_label(s.dataset)
    layers = s.layers
    L = [layer_label(l) for l in layers]
    out = []
    paper_acc = paper.CLASSIFIER_ACCURACY.get(s.dataset)
    acc_ok = (abs(s.accuracy - paper_acc) <= ACCURACY_TOLERANCE) if paper_acc else None
    out.append(Claim(
        claim=f"{D}: classifier test accuracy", paper=f"{paper_acc:.1%}" if paper_acc else "— (not in paper)",
        ours=f"{s.accuracy:.2%}", reproduced=acc_ok, criterion="within 1 percentage point of the paper",
        why=None if acc_ok else ("the paper gives no accuracy for this dataset" if paper_acc is None else
                                 f"{100 * (s.accuracy - paper_acc):+.2f} points from the paper's; this classifier "
                                 "trained for the parameter set's steps, not the paper's (up to 250k)")))
    ok, why = _steps_verdict(s.steps)
    out.append(Claim(
        claim=f"{D}: the NCE decreases through successive layers (Fig. 5a)", paper="yes, every dataset",
        ours="paired NCE differences between consecutive layers: " + ", ".join(
            f"{layer_label(t.shallower)} → {layer_label(t.deeper)} {t.diff:+.1f} ± {t.stderr:.1f}" for t in s.steps)
        + " nats", reproduced=ok, why=why, power=Power(max(t.stderr for t in s.steps)),
        criterion="every consecutive paired difference < 0 beyond 2 standard errors (> 0 beyond 2: contradicted)"))
    if len(s.steps) >= 2 and layers[:2] == ["conv1", "conv2"]:
        drops = [t.diff for t in s.steps]
        ok, why = _biggest_drop_verdict(s.steps)
        out.append(Claim(
            claim=f"{D}: the biggest drop is CONV1 → CONV2", paper="yes, \"by far\"",
            ours=f"largest drop: {L[int(np.argmin(drops))]} → {L[int(np.argmin(drops)) + 1]}, "
                 f"{min(drops):+.1f} nats", reproduced=ok, why=why,
            power=Power(max(math.hypot(t.stderr, s.steps[0].stderr) for t in s.steps[1:])),
            criterion="CONV1 → CONV2 drops more than every other step, beyond 2 standard errors of the difference"))
    table = paper.TABLE1
    t1 = [l for l in table.layers if l in s.table1]
    ptab = table.distances.get(s.dataset, table.distances["mnist"])
    source = "" if s.dataset in table.distances else " (paper's MNIST pattern)"
    for key, name in (("im_nn", f"IM-NN (best of {s.nn_of} samples)"), ("im_s", "IM-S (one sample)")):
        want = ["<" if getattr(ptab[l], key) < ptab[l].nn1 else ">" for l in t1]
        got = ["<" if getattr(s.table1[l], key) < s.table1[l].nn1 else ">" for l in t1]
        gaps = [getattr(s.table1[l], f"{key}_minus_nn1") for l in t1]
        ok, why = _table1_verdict(t1, want, got, gaps)
        out.append(Claim(
            claim=f"{D}: {name} vs the nearest training image, in representation space (Table 1)",
            paper=_table1_pattern(t1, want) + source,
            ours=_table1_pattern(t1, got) + " (sample − 1NN, L1 per unit, paired over the test images: " + ", ".join(
                f"{layer_label(l)} {Difference(g.value, g.stderr).pm()}" for l, g in zip(t1, gaps)) + ")",
            reproduced=ok, why=why, power=Power(max(g.stderr for g in gaps), unit=""),
            criterion="closer (<) or farther (>) than 1NN at the same layers as in the paper, each by more than "
                      "2 standard errors of the paired per-image difference (the other side beyond 2: contradicted)"))
    mse = [s.mse[l] for l in layers]
    rising = _monotone(mse, True)
    falls = [f"{L[i]} → {L[i + 1]}" for i in range(len(mse) - 1) if mse[i + 1] <= mse[i]]
    out.append(Claim(
        claim=f"{D}: MSE reconstructions get blurrier with depth (Fig. 1)", paper="yes (qualitative)",
        ours="decoder test MSE " + ", ".join(f"{l} {v:.4f}" for l, v in zip(L, mse)), reproduced=rising,
        criterion="decoder test MSE (pixels in 0–1) increases from each layer to the next",
        why=None if rising else f"the MSE does not rise at {', '.join(falls)}: a decoder that underfits the "
                                "shallower layer blurs it as much"))
    pix = [s.pixel_l1[l] for l in layers]
    out.append(Claim(
        claim=f"{D}: CONV1 samples are the closest to the input (Fig. 1)",
        paper="\"almost indistinguishable from the inputs\"",
        ours="mean pixel |sample − input| " + ", ".join(f"{l} {v:.3f}" for l, v in zip(L, pix)),
        reproduced=int(np.argmin(pix)) == 0,
        criterion="mean pixel |sample − input| (0–1 scale) is smallest at CONV1",
        why=None if int(np.argmin(pix)) == 0 else f"{L[int(np.argmin(pix))]}'s samples are closer to the input"))
    if "logits" in layers:
        st = s.own_vs_same_class["logits"]
        ok = st.n_inputs >= 2 and math.isfinite(st.stderr)
        d = Difference(st.diff, st.stderr)
        verdict = decide(d, -1) if ok else None
        out.append(Claim(
            claim=f"{D}: LOGITS samples keep the input's style, not just its class", paper="yes, for MNIST (Fig. 1)",
            ours=f"distance ratio {st.ratio:.3f} (difference {st.diff:+.4f} ± {st.stderr:.4f}) over {st.n_inputs} "
                 "images" if ok else "n/a (too few test images of one class)",
            reproduced=verdict,
            why=("too few test images of one class to compare" if not ok else
                 {True: None, None: undecided_why(d, " (pixel L1)", 4),
                  False: "the samples are farther from their own input than from other inputs of its class: they "
                         "keep the class, not the style"}[verdict]),
            criterion="samples are closer (pixel L1) to their own input than to other test inputs of the same "
                      "class, beyond 2 standard errors (farther beyond 2: contradicted)"))
    f2 = s.figure2
    if f2:
        out.append(Claim(
            claim=f"{D}: the best of N samples is closer in {layer_label(f2.layer)} than the nearest training "
                  "image (Fig. 2)", paper=f"yes (N = {paper.FIGURE2.n_samples})",
            ours=f"L1 per unit: best sample {f2.top1:.4g}, nearest training image {f2.nn1:.4g} (N = {f2.n_drawn})",
            reproduced=f2.top1 < f2.nn1,
            criterion="mean L1 per unit of the top-1 sample < that of the 1st nearest training image (means over "
                      f"{f2.n_images} images, no noise estimate)",
            why=None if f2.top1 < f2.nn1 else (f"even the best of {f2.n_drawn} samples is {f2.top1 / f2.nn1:.2f}x "
                                               "farther from h than the nearest training image")))
    return out
