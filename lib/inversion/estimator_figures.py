"""Summaries, figures, tables and claims of the appendix on other estimators (the paper's Appendix B).

Everything here reads the results of ``inversion.estimator_stages.estimators`` (and, through it, the NCE
results of the training-dynamics chapter) and returns plain numbers, matplotlib figures or Markdown, so the
chapter's cells stay short.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from inversion.bounds import difference_noise
from inversion.dynamics_figures import seed_spread

from inversion.figures import layer_label, markdown_table, md

REGIME_COLOURS = {"regular": "C0", "overfit": "C3"}  # the paper's Fig. 5b: blue regular, red overfitted
PAPER_QUOTES = {
    "binning": "\"the choice [of binning] can significantly impact the mutual information estimates\" (App. B, "
               "after Saxe et al.)",
    "kde": "\"the performance of kernel density estimates deteriorate[s] significantly in higher dimensions\" "
           "(§3.3)",
    "kraskov": "\"this non-parametric estimate may be problematic for analysis of network layers with very many "
               "units\" (App. B)",
    "nce": "the NCE is a test-set average with a standard error (§4.1); it has no bin width or noise scale",
    "dynamics": "Saxe et al.'s missing compression \"can potentially be explained by their use of non-parametric "
                "methods\" (§5.3)",
}
SATURATION_TOLERANCE = 0.01  # "at log N": within 1 % of log N
WIDE_LAYER_UNITS = 100  # "a layer with very many units": more than this


# ---------------------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------------------


def nce_on_subsets(log_probs: np.ndarray, sizes: Sequence[int]) -> dict:
    """The NCE (mean log p(x | h)) and its standard error on the first n test images, for each n in sizes.

    The subsets are nested prefixes of the NCE's test images, the same prefixes the estimators' N sweep
    uses, so the NCE's only knob (the test-set size) is turned exactly like theirs.
    """
    lp = np.asarray(log_probs, dtype=np.float64)
    sizes = [int(n) for n in sizes]
    if lp.ndim != 1 or len(lp) < 2:
        raise ValueError(f"need at least 2 per-image log-probabilities, got shape {lp.shape}")
    bad = [n for n in sizes if not 2 <= n <= len(lp)]
    if bad:
        raise ValueError(f"subset sizes must lie in [2, {len(lp)}] (the NCE's test images), got {bad}")
    mean = np.array([lp[:n].mean() for n in sizes])
    se = np.array([lp[:n].std(ddof=1) / math.sqrt(n) for n in sizes])
    return {"sizes": np.array(sizes), "mean": mean, "stderr": se}


NCE_SUBSET_Z = 3.0  # several nested subsets are tested at once: see ``derived``


def _nce_sizes(n: int, count: int = 6) -> list[int]:
    """About ``count`` geometrically spaced subset sizes from 30 up to n (from n // 4 for sets of at most 60
    images): below about 30 log-likelihoods the standard error of their mean is itself too noisy to test
    a deviation against."""
    start = 30 if n > 60 else max(2, n // 4)
    return sorted({int(round(v)) for v in np.geomspace(start, n, count)} | {n})


def summary(R: Mapping) -> dict:
    """The numbers of the appendix: estimates per regime/layer/checkpoint, NCEs, sweeps, NCE subsets."""
    steps, layers, nce_layers = list(R["steps"]), list(R["layers"]), list(R["nce_layers"])
    regimes = list(R["regimes"])
    first = R["regimes"][regimes[0]]["estimates"][layers[0]][steps[0]]
    cfg = first.config
    s = dict(steps=steps, layers=layers, nce_layers=nce_layers, regimes=regimes, sweep_regime=R["sweep"]["regime"],
             sweep_step=R["sweep"]["step"], n=first.metrics["n"], log_n=first.metrics["log_n"],
             n_bins=cfg["n_bins"], noise_var=cfg["noise_var"], k=cfg["k"],
             label_entropy=first.metrics["label_entropy"])
    keys = ("binning_xt", "binning_ty", "kde_upper", "kde_lower", "kraskov_xt", "ksg_xt", "distinct", "dims",
            "nn_sq_dist_median")
    s["est"] = {rg: {l: {k: np.array([_num(R["regimes"][rg]["estimates"][l][st].metrics[k]) for st in steps])
                         for k in keys} for l in layers} for rg in regimes}
    s["nce"] = {rg: {l: (np.array([R["regimes"][rg]["nce"][l][st].metrics["nats"] for st in steps]),
                         np.array([R["regimes"][rg]["nce"][l][st].metrics["stderr"] for st in steps]))
                     for l in nce_layers if l in R["regimes"][rg]["nce"]} for rg in regimes}
    # seed-to-seed spread of the NCE per layer (the dynamics chapter's replicate inversion models): the part
    # of an NCE difference between checkpoints that the test-set standard error does not see
    s["seed_sd"] = {l: seed_spread(R, l)[0] for l in nce_layers if l in R["regimes"][regimes[0]]["nce"]}
    s["sweep"] = {}
    for l, res in R["sweep"]["layers"].items():
        z = res.arrays("sweep.npz")
        z.update(dims=res.metrics["dims"], nn_sq_dist_median=res.metrics["nn_sq_dist_median"], n=res.metrics["n"],
                 log_n=res.metrics["log_n"])
        s["sweep"][l] = z
    s["sweep_config"] = next(iter(R["sweep"]["layers"].values())).config
    s["nce_sweep"] = {}
    for l in nce_layers:
        nce = R["regimes"][s["sweep_regime"]]["nce"].get(l, {}).get(s["sweep_step"])
        if nce is None:
            continue
        lp = nce.arrays("log_probs.npy")["array"]
        sub = nce_on_subsets(lp, _nce_sizes(len(lp)))
        sub.update(full=(float(nce.metrics["nats"]), float(nce.metrics["stderr"]), len(lp)))
        s["nce_sweep"][l] = sub
    return s


def _num(v):
    return np.nan if v is None else float(v)


# ---------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------


def _step_axis(ax, steps):
    positive = [st for st in steps if st > 0]
    if positive:
        ax.set_xscale("symlog", linthresh=min(positive), linscale=0.5)
    ax.set_xticks(steps, [str(st) for st in steps], fontsize=7)
    ax.minorticks_off()


def dynamics_figure(s: Mapping):
    """Each estimator (rows) at each layer (columns) over the classifier's training, both regimes, with
    log N (or H(Y)) as the reference line; the last row is the NCE of the dynamics chapter (± 2 s.e.)."""
    rows = [
        ("binning_xt", f"binning I(X;T)\n{s['n_bins']} bins", "logN"),
        ("kde", f"KDE bounds on\nI(X;T+ε), σ²={s['noise_var']:g}", "logN"),
        ("kraskov_xt", f"Kraskov I(X;T+ε)\nσ²={s['noise_var']:g}, k={s['k']}", "logN"),
        ("ksg_xt", f"KSG I(X;T)\nk={s['k']}", "logN"),
        ("binning_ty", f"binning I(T;Y)\n{s['n_bins']} bins", "HY"),
        ("nce", "NCE [nats/image]\n(inversion model)", None),
    ]
    layers, steps = s["layers"], s["steps"]
    fig, axes = plt.subplots(len(rows), len(layers), figsize=(2.7 * len(layers) + 0.8, 1.75 * len(rows) + 0.6),
                             squeeze=False)
    for j, l in enumerate(layers):
        axes[0, j].set_title(f"{layer_label(l)} (D = {int(s['est'][s['regimes'][0]][l]['dims'][0])})", fontsize=9.5)
        for i, (key, label, ref) in enumerate(rows):
            ax = axes[i, j]
            if key == "nce" and not any(l in s["nce"][rg] for rg in s["regimes"]):
                ax.text(0.5, 0.5, "no inversion model\nat this layer\nin this run", ha="center", va="center",
                        fontsize=8, color="0.4", transform=ax.transAxes)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            for rg in s["regimes"]:
                c = REGIME_COLOURS.get(rg, None)
                e = s["est"][rg][l]
                if key == "kde":
                    ax.fill_between(steps, e["kde_lower"], e["kde_upper"], color=c, alpha=0.3, lw=0)
                    ax.plot(steps, e["kde_upper"], color=c, marker="v", ms=3, lw=1, label=rg)
                    ax.plot(steps, e["kde_lower"], color=c, marker="^", ms=3, lw=1)
                elif key == "nce":
                    if l in s["nce"][rg]:
                        nats, se = s["nce"][rg][l]
                        ax.errorbar(steps, nats, yerr=2 * se, color=c, marker="o", ms=3, capsize=2, label=rg)
                else:
                    ax.plot(steps, e[key], color=c, marker="o", ms=3, label=rg)
            # Bounded estimators on a fixed [0, bound] scale: a zoomed axis would turn a value pinned at log N
            # (up to 1e-4 nats) into an apparent trend. Kraskov's is unbounded and keeps its own scale.
            if ref == "logN":
                ax.axhline(s["log_n"], color="k", ls="--", lw=0.8)
                if key != "kraskov_xt":
                    ax.set_ylim(-0.04 * s["log_n"], 1.1 * s["log_n"])
            elif ref == "HY":
                ax.axhline(s["label_entropy"], color="k", ls=":", lw=0.8)
                ax.set_ylim(-0.04 * s["label_entropy"], 1.15 * s["label_entropy"])
            _step_axis(ax, steps)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
        axes[-1, j].set_xlabel("classifier training step", fontsize=8)
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.text(0.5, 0.003, f"dashed: log N = {s['log_n']:.3f} nats (N = {s['n']} test images); dotted: H(Y) of their "
             "labels; NCE error bars ± 2 standard errors", ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    return fig


def _nce_twin(ax, l, s):
    """The layer's NCE at the swept checkpoint as a flat grey band (± 2 s.e.) on a right-hand axis."""
    if l not in s["nce_sweep"]:
        return
    nats, se, _ = s["nce_sweep"][l]["full"]
    tw = ax.twinx()
    tw.axhspan(nats - 2 * se, nats + 2 * se, color="0.6", alpha=0.2, lw=0)
    tw.axhline(nats, color="0.35", lw=1.2, label="NCE (no such knob)")
    half = max(12 * se, 1e-6)
    tw.set_ylim(nats - half, nats + half)
    tw.tick_params(labelsize=6.5, colors="0.35")
    tw.set_ylabel("NCE [nats/image]", fontsize=7, color="0.35")
    return tw


def _symlog_from_zero(ax, log_n, *values):
    """A y axis linear on [0, log N] and logarithmic above (Kraskov's values of wide layers run to 1000s of
    nats), starting just below 0 or the smallest value (Kraskov's estimate can be slightly negative)."""
    ax.set_yscale("symlog", linthresh=max(log_n, 1.0), linscale=1.5)
    low = min([0.0, *[float(np.nanmin(v)) for v in values if np.isfinite(v).any()]])
    ax.set_ylim(bottom=low - 0.04 * max(log_n, 1.0))


def bins_figure(s: Mapping):
    """Binning I(X;T) and I(T;Y) of each layer against the bin count, at the swept checkpoint."""
    layers = list(s["sweep"])
    fig, axes = plt.subplots(1, len(layers), figsize=(2.9 * len(layers) + 0.6, 3.0), squeeze=False)
    for ax, l in zip(axes[0], layers):
        z = s["sweep"][l]
        ax.plot(z["bins"], z["binning_xt_by_bins"], marker="o", ms=3.5, color="C0", label="I(X;T)")
        ax.plot(z["bins"], z["binning_ty_by_bins"], marker="s", ms=3.5, color="C2", label="I(T;Y)")
        ax.axhline(z["log_n"], color="k", ls="--", lw=0.8, label="log N")
        ax.axhline(s["label_entropy"], color="k", ls=":", lw=0.8, label="H(Y)")
        ax.axvline(s["n_bins"], color="C1", lw=0.8, alpha=0.7)
        ax.set_ylim(-0.04 * z["log_n"], 1.1 * z["log_n"])
        ax.set_xscale("log")
        ax.set_title(f"{layer_label(l)} (D = {z['dims']})", fontsize=9.5)
        ax.set_xlabel("bins per unit", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        tw = _nce_twin(ax, l, s)
        if tw is not None and ax is axes[0, -1]:
            tw.legend(fontsize=6.5, loc="center right")
    axes[0, 0].set_ylabel("nats", fontsize=8)
    axes[0, 0].legend(fontsize=7, loc="center right")  # between the I(X;T) and I(T;Y) curves
    fig.tight_layout()
    return fig


def noise_figure(s: Mapping):
    """The KDE bounds and Kraskov's I(X;T+ε) of each layer against the noise variance σ² (symlog y: the
    Kraskov values of wide layers are orders of magnitude above log N)."""
    layers = list(s["sweep"])
    fig, axes = plt.subplots(1, len(layers), figsize=(2.9 * len(layers) + 0.6, 3.2), squeeze=False)
    for ax, l in zip(axes[0], layers):
        z = s["sweep"][l]
        v = z["noise_vars"]
        ax.fill_between(v, z["kde_lower_by_var"], z["kde_upper_by_var"], color="C0", alpha=0.3, lw=0)
        ax.plot(v, z["kde_upper_by_var"], color="C0", marker="v", ms=3.5, label="KDE upper")
        ax.plot(v, z["kde_lower_by_var"], color="C0", marker="^", ms=3.5, label="KDE lower")
        ax.plot(v, z["kraskov_xt_by_var"], color="C4", marker="o", ms=3.5, label="Kraskov")
        ax.axhline(z["log_n"], color="k", ls="--", lw=0.8, label="log N")
        ax.axvline(s["noise_var"], color="C1", lw=0.8, alpha=0.7)
        ax.axvline(z["nn_sq_dist_median"], color="0.4", ls="-.", lw=0.8, label="median d²(NN)")
        ax.set_xscale("log")
        _symlog_from_zero(ax, z["log_n"], z["kde_lower_by_var"], z["kraskov_xt_by_var"])
        ax.set_title(f"{layer_label(l)} (D = {z['dims']})", fontsize=9.5)
        ax.set_xlabel("noise variance σ²", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("estimate of I(X;T+ε) [nats]", fontsize=8)
    axes[0, 0].legend(fontsize=6.5, loc="upper right")
    fig.tight_layout()
    return fig


def size_figure(s: Mapping):
    """Top: every estimator of each layer against N, the number of test images (log N dashed). Bottom: the
    NCE of the same layer and checkpoint on the first N of its test images (± 2 s.e.), its full-set value
    as a flat line."""
    layers = list(s["sweep"])
    fig, axes = plt.subplots(2, len(layers), figsize=(2.9 * len(layers) + 0.6, 5.6), squeeze=False,
                             gridspec_kw={"height_ratios": [1.3, 1]})
    all_sizes = [*s["sweep"][layers[0]]["sizes"]] + [n for v in s["nce_sweep"].values() for n in v["sizes"]]
    xlim = (min(all_sizes) / 1.3, max(all_sizes) * 1.3)
    for j, l in enumerate(layers):
        z = s["sweep"][l]
        n = z["sizes"]
        ax = axes[0, j]
        ax.fill_between(n, z["kde_lower_by_n"], z["kde_upper_by_n"], color="C0", alpha=0.3, lw=0)
        ax.plot(n, z["kde_upper_by_n"], color="C0", marker="v", ms=3.5, label=f"KDE bounds, σ²={s['noise_var']:g}")
        ax.plot(n, z["kde_lower_by_n"], color="C0", marker="^", ms=3.5)
        ax.plot(n, z["binning_xt_by_n"], color="C1", marker="o", ms=6, mfc="none", lw=1,  # hollow: KDE shows through
                label=f"binning, {s['n_bins']} bins")
        ax.plot(n, z["ksg_xt_by_n"], color="C2", marker="s", ms=3.5, label="KSG")
        ax.plot(n, z["kraskov_xt_by_n"], color="C4", marker="D", ms=3, label="Kraskov")
        grid = np.geomspace(xlim[0], xlim[1], 50)
        ax.plot(grid, np.log(grid), color="k", ls="--", lw=0.8, label="log N")
        ax.set_xscale("log")
        _symlog_from_zero(ax, z["log_n"], z["kde_lower_by_n"], z["ksg_xt_by_n"], z["kraskov_xt_by_n"])
        ax.set_xlim(*xlim)
        ax.set_title(f"{layer_label(l)} (D = {z['dims']})", fontsize=9.5)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        bx = axes[1, j]
        if l in s["nce_sweep"]:
            q = s["nce_sweep"][l]
            nats, se, n_full = q["full"]
            bx.errorbar(q["sizes"], q["mean"], yerr=2 * q["stderr"], color="0.3", marker="o", ms=3, capsize=2,
                        label="NCE on the first N")
            bx.axhline(nats, color="0.3", lw=1, ls="--", label=f"NCE on all {n_full}")
        else:
            bx.text(0.5, 0.5, "no inversion model\nat this layer in this run", ha="center", va="center",
                    fontsize=8, color="0.4", transform=bx.transAxes)
            bx.set_yticks([])
        bx.set_xscale("log")
        bx.set_xlim(*xlim)
        bx.set_xlabel("N (test images)", fontsize=8)
        bx.tick_params(labelsize=7)
        bx.grid(alpha=0.3)
    axes[0, 0].set_ylabel("estimate [nats]", fontsize=8)
    axes[1, 0].set_ylabel("NCE [nats/image]", fontsize=8)
    axes[0, 0].legend(fontsize=6.5, loc="upper left")
    with_nce = [j for j, l in enumerate(layers) if l in s["nce_sweep"]]
    if with_nce:
        axes[1, with_nce[0]].legend(fontsize=6.5, loc="lower right")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------


def _f(v, spec=".3f"):
    return "n/a" if v is None or not np.isfinite(v) else format(v, spec)


def estimates_table(s: Mapping, step: int | None = None):
    """Markdown: every estimator and the NCE per regime and layer at one checkpoint (default: the last)."""
    step = s["steps"][-1] if step is None else step
    i = s["steps"].index(step)
    rows = []
    for rg in s["regimes"]:
        for l in s["layers"]:
            e = s["est"][rg][l]
            nce = s["nce"][rg].get(l)
            rows.append((rg, layer_label(l), int(e["dims"][i]), int(e["distinct"][i]), _f(e["binning_xt"][i]),
                         f"{_f(e['kde_lower'][i])} – {_f(e['kde_upper'][i])}", _f(e["kraskov_xt"][i], ".4g"),
                         _f(e["ksg_xt"][i]), _f(e["binning_ty"][i]),
                         f"{nce[0][i]:.1f} ± {nce[1][i]:.1f}" if nce is not None else "—"))
    header = ["regime", "layer", "D", "distinct rows", "binning I(X;T)", "KDE I(X;T+ε)", "Kraskov I(X;T+ε)",
              "KSG I(X;T)", "binning I(T;Y)", "NCE ± s.e."]
    return md(markdown_table(header, rows))


# ---------------------------------------------------------------------------------------------------------
# Claims
# ---------------------------------------------------------------------------------------------------------


def _slope(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(y)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(x[ok], y[ok], 1)[0])


def derived(s: Mapping) -> dict:
    """Numbers the prose and the claims quote, computed once: saturation, spans, slopes, NCE agreement."""
    log_n, tol = s["log_n"], SATURATION_TOLERANCE
    d = {"log_n": log_n}
    sw = s["sweep"]
    d["finest_bins"] = int(max(sw[next(iter(sw))]["bins"]))
    d["binning_finest"] = {l: float(z["binning_xt_by_bins"][np.argmax(z["bins"])]) for l, z in sw.items()}
    d["binning_span"] = {l: float(np.nanmax(z["binning_xt_by_bins"]) - np.nanmin(z["binning_xt_by_bins"]))
                         for l, z in sw.items()}
    d["kde_at_min_var"] = {l: float(z["kde_upper_by_var"][np.argmin(z["noise_vars"])]) for l, z in sw.items()}
    d["kde_at_max_var"] = {l: float(z["kde_upper_by_var"][np.argmax(z["noise_vars"])]) for l, z in sw.items()}
    d["min_var"] = float(min(sw[next(iter(sw))]["noise_vars"]))
    d["max_var"] = float(max(sw[next(iter(sw))]["noise_vars"]))
    d["slope_binning"] = {l: _slope(np.log(z["sizes"]), z["binning_xt_by_n"]) for l, z in sw.items()}
    d["slope_kde"] = {l: _slope(np.log(z["sizes"]), z["kde_upper_by_n"]) for l, z in sw.items()}
    d["slope_ksg"] = {l: _slope(np.log(z["sizes"]), z["ksg_xt_by_n"]) for l, z in sw.items()}
    d["slope_kraskov"] = {l: _slope(np.log(z["sizes"]), z["kraskov_xt_by_n"]) for l, z in sw.items()}
    # KDE pinned at log N over training, per layer (both regimes, every checkpoint)
    d["kde_pinned"] = {l: bool(all(np.all(s["est"][rg][l]["kde_upper"] >= (1 - tol) * log_n) for rg in s["regimes"]))
                       for l in s["layers"]}
    d["binning_pinned"] = {l: bool(all(np.all(s["est"][rg][l]["binning_xt"] >= (1 - tol) * log_n)
                                       for rg in s["regimes"])) for l in s["layers"]}
    wide = [l for l in s["layers"] if s["est"][s["regimes"][0]][l]["dims"][0] > WIDE_LAYER_UNITS]
    d["wide_layers"] = wide
    d["kraskov_min_wide"] = {l: float(min(np.nanmin(s["est"][rg][l]["kraskov_xt"]) for rg in s["regimes"]))
                                       for l in wide}
    # NCE on nested subsets vs on all its test images, in units of the subset's own standard error. The
    # claim's threshold is NCE_SUBSET_Z = 3, not 2: the largest of ~5 nested deviations exceeds 2 standard
    # errors in about one run in eight even when the mean does not depend on N (simulated with skewed
    # per-image log-likelihoods, N = 1000-10000), and exceeds 3 in about one in a hundred.
    d["nce_subset_z"] = {}
    for l, q in s["nce_sweep"].items():
        nats, _, n_full = q["full"]
        proper = q["sizes"] < n_full
        d["nce_subset_z"][l] = [float(abs(m - nats) / se) for m, se in zip(q["mean"][proper], q["stderr"][proper])]
        d["nce_subset_min"] = int(q["sizes"].min())
    # over training: ranges of NCE (in units of the noise of the difference: the paired test-set s.e. and, where
    # the dynamics chapter measured it, the seed spread of both inversion models) and of binning
    d["moves"] = []
    for rg in s["regimes"]:
        for l, (nats, se) in s["nce"][rg].items():
            if l not in s["est"][rg]:  # a dynamics layer this appendix does not estimate
                continue
            hi, lo = int(np.argmax(nats)), int(np.argmin(nats))
            z = (nats[hi] - nats[lo]) / difference_noise(math.sqrt(se[hi] ** 2 + se[lo] ** 2), s["seed_sd"].get(l, 0.0))
            b = s["est"][rg][l]["binning_xt"]
            d["moves"].append(dict(regime=rg, layer=l, nce_range=float(nats[hi] - nats[lo]), nce_z=float(z),
                                   binning_range=float(np.nanmax(b) - np.nanmin(b))))
    return d


def estimator_claims(s: Mapping, d: Mapping | None = None) -> list[dict]:
    """The appendix's claims, each with the paper's statement, this run's numbers and a criterion that can fail."""
    d = d or derived(s)
    log_n, tol = s["log_n"], SATURATION_TOLERANCE
    L = {l: layer_label(l) for l in s["layers"]}
    at = f"{s['sweep_regime']} classifier, step {s['sweep_step']}"
    out = []
    fin = d["binning_finest"]
    out.append(dict(
        claim=f"binning with fine bins gives log N at every layer: it measures N, not the layer ({at})",
        paper=PAPER_QUOTES["binning"],
        ours=f"{d['finest_bins']} bins: " + ", ".join(f"{L[l]} {v:.3f}" for l, v in fin.items())
             + f"; log N = {log_n:.3f}",
        reproduced=bool(all(v >= (1 - tol) * log_n for v in fin.values())),
        criterion=f"every layer within {tol:.0%} of log N at the finest swept bin count"))
    span = d["binning_span"]
    widest = max(span, key=span.get)
    out.append(dict(
        claim="the binning estimate moves with the bin count",
        paper=PAPER_QUOTES["binning"],
        ours=", ".join(f"{L[l]} {v:.2f}" for l, v in span.items()) + " nats between the fewest and most bins",
        reproduced=bool(span[widest] > 0.25 * log_n),
        criterion=f"some layer's estimate changes by more than a quarter of log N ({0.25 * log_n:.2f} nats) across "
                  "the swept bin counts"))
    lo, hi = d["kde_at_min_var"], d["kde_at_max_var"]
    out.append(dict(
        claim="the KDE bound runs from log N to 0 as σ² grows: the noise scale, not the layer, sets it",
        paper=PAPER_QUOTES["kde"],
        ours="upper bound at σ² = " + f"{d['min_var']:g} / {d['max_var']:g}: "
             + ", ".join(f"{L[l]} {lo[l]:.2f} / {hi[l]:.2f}" for l in lo),
        reproduced=bool(all(lo[l] >= (1 - tol) * log_n and hi[l] <= 0.1 * log_n for l in lo)),
        criterion=f"every layer: within {tol:.0%} of log N at the smallest σ² and below 10 % of log N at the "
                  "largest"))
    pinned = [L[l] for l, p in d["kde_pinned"].items() if p]
    first = s["layers"][0]
    out.append(dict(
        claim=f"at σ² = {s['noise_var']:g} the KDE bound of {L[first]} is at log N throughout training, in both "
              "regimes",
        paper=PAPER_QUOTES["kde"],
        ours="pinned at log N: " + (", ".join(pinned) if pinned else "no layer"),
        reproduced=bool(d["kde_pinned"][first]),
        criterion=f"{L[first]}'s upper bound within {tol:.0%} of log N at every checkpoint of every regime"))
    if d["wide_layers"]:
        mins = d["kraskov_min_wide"]
        out.append(dict(
            claim=f"Kraskov's I(X;T+ε) of the wide layers exceeds log N, which no mutual information with X "
                  f"uniform on N inputs can",
            paper=PAPER_QUOTES["kraskov"],
            ours="smallest over checkpoints: " + ", ".join(f"{L[l]} {v:.4g}" for l, v in mins.items())
                 + f"; log N = {log_n:.3f}",
            reproduced=bool(all(v > log_n for v in mins.values())),
            criterion=f"above log N at every checkpoint for every layer with more than {WIDE_LAYER_UNITS} units"))
    sb, sk = d["slope_binning"], d["slope_kde"]
    out.append(dict(
        claim=f"binning ({s['n_bins']} bins) and the KDE bound of {L[first]} rise one-for-one with log N",
        paper="— (the saturation noted by Saxe et al.; App. B)",
        ours=f"slope vs log N: binning " + ", ".join(f"{L[l]} {v:.2f}" for l, v in sb.items())
             + f"; KDE {L[first]} {sk[first]:.2f}",
        reproduced=bool(all(0.9 <= v <= 1.1 for v in sb.values()) and 0.9 <= sk[first] <= 1.1),
        criterion="least-squares slope against log N in [0.9, 1.1] over the swept N, for binning at every layer "
                  f"and for the KDE upper bound of {L[first]}"))
    zs = d["nce_subset_z"]
    flat = [z for v in zs.values() for z in v]
    out.append(dict(
        claim="the NCE's mean does not move with the number of test images, only its standard error shrinks",
        paper=PAPER_QUOTES["nce"],
        ours=(f"largest deviation {max(flat):.2f} s.e. over {len(flat)} subsets ("
              + ", ".join(L[l] for l in zs) + ")") if flat else "n/a (no NCE subsets in this run)",
        reproduced=bool(max(flat) < NCE_SUBSET_Z) if flat else None,
        criterion=f"on every nested subset of its test images (N ≥ {d.get('nce_subset_min', '—')}), the NCE lies "
                  "within "
                  f"{NCE_SUBSET_Z:g} of the subset's standard errors of the NCE on all of them"))
    moving = [m for m in d["moves"] if m["nce_z"] > 2]
    out.append(dict(
        claim=f"where the NCE moves over training, binning ({s['n_bins']} bins) does not",
        paper=PAPER_QUOTES["dynamics"],
        ours=("; ".join(f"{m['regime']} {L.get(m['layer'], m['layer'])}: NCE range {m['nce_range']:.1f} nats "
                        f"({m['nce_z']:.1f} × its noise), binning {m['binning_range']:.3f}" for m in moving))
             if moving else "the NCE moves by less than twice its noise (test-set s.e. and seed spread) everywhere "
                            "in this run",
        reproduced=bool(all(m["binning_range"] < tol * log_n for m in moving)) if moving else None,
        criterion=f"for every regime and layer whose NCE range over checkpoints exceeds twice the noise of the "
                  "difference (test-set s.e. and seed spread), "
                  f"the binning estimate changes by less than {tol:.0%} of log N"))
    return out


# ---------------------------------------------------------------------------------------------------------
# Sentences whose wording depends on the run
# ---------------------------------------------------------------------------------------------------------


def _names(items: Sequence[str]) -> str:
    """"A", "A and B", "A, B and C"."""
    items = list(items)
    return "" if not items else items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _by_width(layers: Sequence[str], coarse: Mapping[str, float], sweep: Mapping) -> bool:
    """Whether the coarse-bin estimates are ordered like the layers' widths (wider: higher)."""
    order = sorted(layers, key=lambda l: -int(sweep[l]["dims"]))
    return all(coarse[a] >= coarse[b] for a, b in zip(order, order[1:]))


def _at_log_n(v: float, log_n: float) -> bool:
    return v >= (1 - SATURATION_TOLERANCE) * log_n


def sentences(s: Mapping, d: Mapping | None = None) -> dict[str, str]:
    """Markdown sentences for the chapter whose *wording* follows the numbers (a rise or a fall, inside or
    outside a bound), so that no prose asserts a direction the run did not produce. Keys: kde_scale,
    kraskov_wide, kraskov_logits, ksg_depth, bins_wide, bins_narrow, kraskov_noise, n_slopes, nce_n, verdict,
    moves.
    Layers missing from the run give an empty sentence."""
    d = d or derived(s)
    log_n, layers, L = s["log_n"], s["layers"], layer_label
    i = s["steps"].index(s["sweep_step"])
    reg = {l: s["est"][s["sweep_regime"]][l] for l in layers}
    out = dict.fromkeys(("kde_scale", "kraskov_wide", "kraskov_logits", "ksg_depth", "bins_wide", "bins_narrow",
                         "kraskov_noise", "n_slopes", "nce_n", "verdict", "moves"), "")
    narrow = [l for l in layers if not d["kde_pinned"][l]]
    if narrow:
        l = "fc3" if "fc3" in narrow else narrow[0]
        e = reg[l]
        nn0, nn1, k0, k1 = e["nn_sq_dist_median"][0], e["nn_sq_dist_median"][i], e["kde_upper"][0], e["kde_upper"][i]
        grows, rises = nn1 > nn0, k1 > k0
        out["kde_scale"] = (
            f"Where it does move, it follows the layer's *scale*. At {L(l)} the median squared distance from a point "
            f"to its nearest neighbour {'grows' if grows else 'shrinks'} from {nn0:.3g} at step {s['steps'][0]} to "
            f"{nn1:.3g} at step {s['sweep_step']}, and the KDE upper bound {'rises' if rises else 'falls'} "
            f"{'with' if grows == rises else 'against'} it, from {k0:.2f} to {k1:.2f} nats. "
            + ("A network whose activations spread out during training looks as if it gained information, and one "
               "whose activations contract looks as if it compressed. This is close to Saxe et al.'s own reading of "
               "their tanh networks, in which they traced the estimated compression to the saturation of the units "
               "as the weights grow." if grows == rises else
               "Here the bound and the scale disagree, so something other than scale moved it."))
    wide = d["wide_layers"]
    if wide:
        vals = {l: float(reg[l]["kraskov_xt"][i]) for l in wide}
        above = [l for l, v in vals.items() if v > log_n]
        out["kraskov_wide"] = (
            "Kraskov's estimate of the same quantity is "
            + ", ".join(f"{v:.4g} nats at {L(l)}" for l, v in vals.items())
            + (f": {'all' if len(above) == len(vals) else 'some'} far above the log N = {log_n:.3f} that no mutual "
               "information with this X can exceed." if above else
               f", all below log N = {log_n:.3f} in this run."))
    if "logits" in layers:
        e = reg["logits"]
        kr, lo, up = float(e["kraskov_xt"][i]), float(e["kde_lower"][i]), float(e["kde_upper"][i])
        inside = lo <= kr <= up
        out["kraskov_logits"] = (
            f"At the {int(e['dims'][i])}-unit LOGITS it gives {kr:.3f}, "
            + (f"between the KDE bounds ({lo:.3f} – {up:.3f}), as an estimator of the same quantity should in low "
               "dimension." if inside else
               f"outside the KDE bounds ({lo:.3f} – {up:.3f})"
               + (" and above log N" if kr > log_n else "") + ", so even in low dimension it is off here."))
    ksg = [float(reg[l]["ksg_xt"][i]) for l in layers]
    decreasing = all(b < a for a, b in zip(ksg, ksg[1:]))
    listed = ", ".join(f"{v:.2f}" for v in ksg)
    out["ksg_depth"] = (
        (f"KSG decreases with depth ({listed} nats from {L(layers[0])} to {L(layers[-1])}), which looks like the "
         "data-processing inequality at work. It is not: every layer here is injective on the sample, so the true "
         "value is the same log N at every layer. The decrease measures how much of each layer's neighbour "
         "structure the rescaled pixel distances still share.") if decreasing else
        (f"KSG gives {listed} nats from {L(layers[0])} to {L(layers[-1])}, although every layer here is injective "
         "on the sample and the true value is the same log N at every layer."))
    sw = s["sweep"]
    coarse = {l: float(sw[l]["binning_xt_by_bins"][np.argmin(sw[l]["bins"])]) for l in layers}
    b0 = int(min(sw[layers[0]]["bins"]))
    sat = [l for l in layers if _at_log_n(coarse[l], log_n)]
    unsat = [l for l in layers if l not in sat]
    if sat:
        out["bins_wide"] = (
            f"{_names([L(l) for l in sat])} ({_names([str(int(sw[l]['dims'])) for l in sat])} units) "
            f"{'is' if len(sat) == 1 else 'are'} at log N already at {b0} bins per unit: with that many units even "
            "the coarsest grid gives every image a pattern of its own.")
    if unsat:
        fine = {l: float(sw[l]["binning_xt_by_bins"][np.argmax(sw[l]["bins"])]) for l in unsat}
        out["bins_narrow"] = (
            "; ".join(f"{L(l)} ({int(sw[l]['dims'])} units) gives {coarse[l]:.3f} nats at {b0} bins and "
                      f"{fine[l]:.3f} at {int(max(sw[l]['bins']))}" for l in unsat)
            + (": the narrower the layer, the finer the bins it takes to saturate." if _by_width(unsat, coarse, sw) else
               ": how fine the bins must be before a layer saturates depends on the layer's width and on how its "
               "activations spread over their range, not on what it discards."))
    if wide:
        l = wide[0]
        z = sw[l]
        j = int(np.argmax(z["noise_vars"]))
        kr, up = float(z["kraskov_xt_by_var"][j]), float(z["kde_upper_by_var"][j])
        out["kraskov_noise"] = (
            f"At σ² = {float(z['noise_vars'][j]):g}, where the KDE upper bound of {L(l)} is {up:.3f} nats, Kraskov's "
            f"estimate is {kr:.4g}"
            + (": it does not fall with the noise, because the D-dimensional noise dominates every distance and the "
               "estimator's error of order D remains." if kr > log_n else "."))
    def trend(v):
        return "grows with" if v > 0.1 else "falls with" if v < -0.1 else "barely moves with"

    ends = [l for l in (layers[0], layers[-1]) if l in d["slope_ksg"]]
    ksg = d["slope_ksg"][layers[0]]
    out["n_slopes"] = (
        f"KSG {trend(ksg)} N as well (slope " + " and ".join(f"{d['slope_ksg'][l]:.2f} at {L(l)}" for l in ends)
        + f"), and Kraskov's estimate {trend(d['slope_kraskov'][layers[0]]).replace('with', 'as')} N grows "
        f"(slope {d['slope_kraskov'][layers[0]]:.2f} at {L(layers[0])}).")
    zs = [z for v in d["nce_subset_z"].values() for z in v]
    if zs:
        out["nce_n"] = (
            ("Its mean stays where it is and only its error bar shrinks: " if max(zs) < NCE_SUBSET_Z else
             "Its mean moves more than its error bars allow: ")
            + f"the largest deviation of a subset's NCE from the NCE on all its test images is {max(zs):.2f} of the "
              "subset's standard errors.")
    moving = [m for m in d["moves"] if m["nce_z"] > 2]
    still = [m for m in moving if m["binning_range"] < SATURATION_TOLERANCE * log_n]
    listed = "; ".join(f"{m['regime']} {L(m['layer'])}: the NCE spans {m['nce_range']:.1f} nats ({m['nce_z']:.1f} "
                       f"times its noise), binning {m['binning_range']:.3f} nats" for m in moving)
    if not moving:
        out["moves"] = ("In this run the NCE itself moves over training by less than twice its noise (the test-set "
                        "standard error and the seed spread of the inversion models) at every layer.")
    elif len(still) == len(moving):
        out["moves"] = f"Wherever the NCE changes over training, binning does not: {listed}."
    else:
        out["moves"] = f"Where the NCE changes over training, binning moves too in some cases: {listed}."
    pinned_b = [l for l, p in d["binning_pinned"].items() if p]
    pinned_k = [l for l, p in d["kde_pinned"].items() if p]
    if pinned_b or pinned_k:
        out["verdict"] = (
            "The measurements above support that explanation. On the layers of this classifier, binning "
            f"(at {_names([L(l) for l in pinned_b]) or 'no layer'}) and the KDE bound "
            f"(at {_names([L(l) for l in pinned_k]) or 'no layer'}) at the customary settings stay at log N at every "
            "checkpoint and cannot register either expansion or compression.")
    else:
        out["verdict"] = ("In this run neither binning nor the KDE bound is pinned at log N at every checkpoint of "
                          "any layer, so the measurements here do not by themselves support that explanation.")
    return out
