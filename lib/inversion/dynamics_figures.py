"""§5.3 in numbers and pictures: the NCE of each layer over the classifier's training, regular vs overfitted.

``dynamics_summary`` reads the results of ``inversion.stages.dynamics``; ``figure5b`` draws the paper's
Fig. 5b (plus the classifiers' accuracies); ``dynamics_claims`` checks the paper's two claims by stated
criteria. Differences between checkpoints or regimes are paired over the same test images, so per-image
difficulty cancels and the standard errors are those of the differences.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np

from inversion.bounds import difference_noise, paired_difference
from inversion.figures import layer_label

REGIME_LABELS = {"regular": "regular", "overfit": "overfitted (100 examples, no dropout)"}
REGIME_COLOURS = {"regular": "tab:blue", "overfit": "tab:red"}


def regime_label(regime: str) -> str:
    return REGIME_LABELS.get(regime, regime)


def dynamics_summary(R: Mapping) -> dict:
    """{"steps", "layers", "regimes", "nce": {regime: {layer: {step: (nats, se)}}}, "log_probs": same shape of
    arrays, "accuracy": {regime: {step: (test, train)}}, "seed_sd": {layer: (sd, n_seeds)}}.

    ``seed_sd`` is the standard deviation of the NCE over inversion models that differ only in their seed
    (the main one and the replicates, at the last snapshot of the first regime), or (0, 1) without
    replicates: the training noise of one inversion model, which the test-set standard error leaves out."""
    steps, layers, regimes = list(R["steps"]), list(R["layers"]), list(R["regimes"])
    s = {"steps": steps, "layers": layers, "regimes": regimes, "nce": {}, "log_probs": {}, "accuracy": {},
         "seed_sd": {}}
    for g in regimes:
        rr = R["regimes"][g]
        s["accuracy"][g] = {t: (rr["snapshots"][t].metrics["test_accuracy"], rr["snapshots"][t].metrics["train_accuracy"])
                            for t in steps}
        s["nce"][g], s["log_probs"][g] = {}, {}
        for l in layers:
            s["nce"][g][l] = {t: (rr["nce"][l][t].metrics["nats"], rr["nce"][l][t].metrics["stderr"]) for t in steps}
            s["log_probs"][g][l] = {t: rr["nce"][l][t].arrays("log_probs.npy")["array"] for t in steps}
    s["seed_sd"] = {l: seed_spread(R, l) for l in layers}
    return s


def seed_spread(R: Mapping, layer: str) -> tuple[float, int]:
    """(sd, number of models) of the NCE of ``layer``'s inversion models that differ only in their seed: the
    main one at the last snapshot of the first regime and its replicates; (0, 1) without replicates.
    ``R`` is the dynamics results, or any results with the same "regimes"/"replicates" entries."""
    first = next(iter(R["regimes"].values()))
    values = [first["nce"][layer][max(first["nce"][layer])].metrics["nats"]]
    values += [r.metrics["nats"] for r in R.get("replicates", {}).get(layer, {}).values()]
    return (float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, len(values))



def _x(steps) -> np.ndarray:
    """Step 0 cannot sit on a log axis: plot it one decade below the first non-zero step."""
    steps = np.asarray(steps, float)
    pos = steps[steps > 0]
    zero_at = pos.min() / 10 if len(pos) else 1.0
    return np.where(steps > 0, steps, zero_at)


def figure5b(s: Mapping):
    """Fig. 5b: one panel per layer, NCE (± 2 s.e.) against classifier updates for each regime; a last panel
    with the classifiers' test (solid) and training (dashed) accuracy."""
    layers, steps = s["layers"], s["steps"]
    x = _x(steps)
    n = len(layers) + 1
    fig, axes = plt.subplots(1, n, figsize=(3.1 * n, 3.2))
    for ax, l in zip(axes, layers):
        for g in s["regimes"]:
            v = np.array([s["nce"][g][l][t] for t in steps])
            ax.errorbar(x, v[:, 0], yerr=2 * v[:, 1], marker="o", capsize=3, color=REGIME_COLOURS.get(g),
                        label=regime_label(g))
        ax.set_title(f"{layer_label(l)}: NCE [nats]", fontsize=9.5)
    ax = axes[-1]
    for g in s["regimes"]:
        a = np.array([s["accuracy"][g][t] for t in steps])
        ax.plot(x, 100 * a[:, 0], marker="o", color=REGIME_COLOURS.get(g), label=f"{g}: test")
        ax.plot(x, 100 * a[:, 1], marker=".", ls="--", color=REGIME_COLOURS.get(g), label=f"{g}: train")
    ax.set_title("classifier accuracy [%]", fontsize=9.5)
    ax.legend(fontsize=7)
    axes[0].legend(fontsize=7)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(x, [str(t) for t in steps], fontsize=7.5)
        ax.minorticks_off()
        ax.set_xlabel("classifier updates", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def rise_and_fall(s: Mapping, regime: str, layer: str) -> dict:
    """The regular net's pattern at one layer: the peak checkpoint, its rise over step 0 and the fall from
    it to the last checkpoint, each a paired difference ± s.e."""
    steps = s["steps"]
    lp = s["log_probs"][regime][layer]
    nats = [s["nce"][regime][layer][t][0] for t in steps]
    peak = steps[int(np.argmax(nats))]
    sd = s["seed_sd"][layer][0]
    rise = paired_difference(lp[peak], lp[steps[0]])
    fall = paired_difference(lp[steps[-1]], lp[peak])
    rise = (rise[0], difference_noise(rise[1], sd))
    fall = (fall[0], difference_noise(fall[1], sd))
    return dict(peak=peak, rise=rise, fall=fall,
                shown=bool(peak not in (steps[0], steps[-1]) and rise[0] > 2 * rise[1] and -fall[0] > 2 * fall[1]))


def dynamics_claims(s: Mapping) -> list[dict]:
    """§5.3's claims per layer (each with a ``kind`` the chapter counts by): the regular net's NCE rises then
    falls; the overfitted net keeps more. Every difference is judged against its noise: the paired test-set
    standard error combined with the seed-to-seed spread of the inversion models (``difference_noise``),
    written "± noise" below."""
    out = []
    steps = s["steps"]
    for l in s["layers"]:
        sd, n_seeds = s["seed_sd"][l]
        seeds = f"; seed spread {sd:.1f} nats over {n_seeds} seeds" if n_seeds > 1 else "; one seed (no spread measured)"
        if "regular" in s["regimes"]:
            r = rise_and_fall(s, "regular", l)
            out.append(dict(
                kind="rise_and_fall", layer=l,
                claim=f"{layer_label(l)}: the regular network's NCE first rises, then falls (Fig. 5b)",
                paper="yes, every layer",
                ours=f"peak at {r['peak']} updates; rise {r['rise'][0]:+.1f} ± {r['rise'][1]:.1f}, "
                     f"then {r['fall'][0]:+.1f} ± {r['fall'][1]:.1f} nats by {steps[-1]}{seeds}",
                reproduced=r["shown"],
                criterion="an interior checkpoint beats step 0 and the last checkpoint, each by more than 2 × the "
                          "noise of the difference (paired s.e. and seed spread)"))
        if {"regular", "overfit"} <= set(s["regimes"]):
            d, se = paired_difference(s["log_probs"]["overfit"][l][steps[-1]], s["log_probs"]["regular"][l][steps[-1]])
            noise = difference_noise(se, sd)
            out.append(dict(
                kind="overfit_keeps_more", layer=l,
                claim=f"{layer_label(l)}: the overfitted network keeps more about the input", paper="yes, every layer",
                ours=f"overfitted − regular at {steps[-1]} updates: {d:+.1f} ± {noise:.1f} nats{seeds}",
                reproduced=bool(d > 2 * noise),
                criterion="NCE difference at the last checkpoint > 2 × its noise (paired s.e. and seed spread)"))
    if {"regular", "overfit"} <= set(s["regimes"]):
        (te_r, _), (te_o, tr_o) = s["accuracy"]["regular"][steps[-1]], s["accuracy"]["overfit"][steps[-1]]
        out.append(dict(
            kind="overfit_generalises_worse",
            claim="the overfitted network memorises its 100 examples and generalises worse", paper="by construction",
            ours=f"train {tr_o:.1%}, test {te_o:.1%} (regular: test {te_r:.1%})",
            reproduced=bool(tr_o >= 0.99 and te_o < te_r),
            criterion="training accuracy ≥ 99 % and test accuracy below the regular network's"))
    return out
