"""§5.3 in numbers and pictures: the NCE of each layer over the classifier's training, regular vs overfitted.

``dynamics_summary`` reads the results of ``pipeline.dynamics`` into a ``DynamicsSummary``; ``figure5b`` draws the paper's
Fig. 5b (plus the classifiers' accuracies) and ``figure_nce_change`` the same curves as the differences the claims
judge, with their noise; ``dynamics_claims`` checks the paper's two claims by stated
criteria. Differences between checkpoints or regimes are paired over the same test images, so per-image
difficulty cancels and the standard errors are those of the differences.
"""

from __future__ import annotations

import math

from collections.abc import Mapping
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np

from inversion import paper
from inversion.bounds import difference_noise, paired_difference, seed_paired_difference
from inversion.reports.common import FIGURE_WIDTH_IN, REGIME_COLOURS, Claim, Difference, Estimate, Power, SeedSpread, \
    decide, decimals, layer_label, regime_label, undecided_why


@dataclass(frozen=True)
class Accuracy:
    test: float
    train: float


@dataclass(frozen=True)
class DynamicsSummary:
    """The numbers of one §5.3 run: per regime, layer and checkpoint the NCE and the per-image
    log-likelihoods behind it, the classifiers' accuracies per checkpoint, and per layer the seed spread
    of the inversion models (``seed_spread``)."""

    steps: list[int]
    layers: list[str]
    regimes: list[str]
    nce: dict[str, dict[str, dict[int, Estimate]]]  # regime -> layer -> step
    log_probs: dict[str, dict[str, dict[int, np.ndarray]]]  # regime -> layer -> step -> [test images]
    accuracy: dict[str, dict[int, Accuracy]]  # regime -> step
    seed_spread: dict[str, SeedSpread]  # layer
    # regime -> layer -> step -> seed -> [test images], every seed including the main one; empty unless the
    # run paired its seeds (``paired_seeds``): then differences are per seed (common random numbers)
    by_seed: dict = field(default_factory=dict)
    # layer -> per-image log p(x) of the unconditional model the layer's inversion models were warm-started
    # from (empty when they trained from scratch); ``gain`` is each NCE's paired difference to it
    unconditional: dict[str, np.ndarray] = field(default_factory=dict)

    def gain(self, regime: str, layer: str, step: int) -> Estimate:
        """What h adds at one snapshot: its NCE minus the unconditional model's, paired over the test images."""
        d, se = paired_difference(self.log_probs[regime][layer][step], self.unconditional[layer])
        return Estimate(d, se)


def dynamics_summary(R: Mapping) -> DynamicsSummary:
    """The numbers of ``pipeline.dynamics``' results, for the figure, tables and claims."""
    steps, layers, regimes = list(R["steps"]), list(R["layers"]), list(R["regimes"])
    nce, log_probs, accuracy = {}, {}, {}
    for g in regimes:
        rr = R["regimes"][g]
        accuracy[g] = {t: Accuracy(test=rr["snapshots"][t].metrics["test_accuracy"],
                                   train=rr["snapshots"][t].metrics["train_accuracy"]) for t in steps}
        nce[g] = {l: {t: Estimate(rr["nce"][l][t].metrics["nats"], rr["nce"][l][t].metrics["stderr"]) for t in steps}
                  for l in layers}
        log_probs[g] = {l: {t: rr["nce"][l][t].arrays("log_probs.npy")["array"] for t in steps} for l in layers}
    by_seed = per_seed_log_probs(R)
    unconditional = {l: r.arrays("log_probs.npy")["array"] for l, r in (R.get("unconditional_nce") or {}).items()}
    return DynamicsSummary(steps=steps, layers=layers, regimes=regimes, nce=nce, log_probs=log_probs,
                           accuracy=accuracy, seed_spread={l: seed_spread(R, l) for l in layers}, by_seed=by_seed,
                           unconditional=unconditional)


def per_seed_log_probs(R: Mapping) -> dict:
    """regime -> layer -> step -> seed -> per-image log-probs of the inversion models, every seed including the
    main one, when the run paired its seeds (``R["paired"]``), else empty. ``R`` is the dynamics results, or
    any results with the same "regimes" (with "inversion" and "nce") and "paired" entries."""
    out = {}
    for g, per_layer in (R.get("paired") or {}).items():
        rr = R["regimes"][g]
        out[g] = {l: {t: {rr["inversion"][l][t].config["seed"]: rr["nce"][l][t].arrays("log_probs.npy")["array"],
                          **{seed: r.arrays("log_probs.npy")["array"] for seed, r in reps.items()}}
                      for t, reps in per_step.items()} for l, per_step in per_layer.items()}
    return out


def seed_mean_curve(per_step: Mapping, steps) -> np.ndarray:
    """The NCE at each step averaged over seeds, from ``per_step[step][seed]`` per-image log-probs."""
    return np.array([np.mean([lp.mean() for lp in per_step[t].values()]) for t in steps])


def nce_difference(s: DynamicsSummary, layer: str, a: tuple[str, int], b: tuple[str, int]) -> Difference:
    """NCE(regime a[0], step a[1]) − NCE(b) at ``layer`` with its noise: per seed as common random numbers
    when the run paired its seeds (``seed_paired_difference``), else the main models' paired test-set s.e.
    combined with the layer's seed spread (``difference_noise``)."""
    if s.by_seed:
        p = seed_paired_difference(s.by_seed[a[0]][layer][a[1]], s.by_seed[b[0]][layer][b[1]])
        return Difference(p.value, p.noise)
    d, se = paired_difference(s.log_probs[a[0]][layer][a[1]], s.log_probs[b[0]][layer][b[1]])
    return Difference(d, difference_noise(se, s.seed_spread[layer].sd))


def seed_spread(R: Mapping, layer: str) -> SeedSpread:
    """The spread (sd, number of models) of the NCE of ``layer``'s inversion models that differ only in their seed: the
    main one at the last snapshot of the first regime and its replicates; (0, 1) without replicates.
    ``R`` is the dynamics results, or any results with the same "regimes"/"replicates" entries."""
    first = next(iter(R["regimes"].values()))
    values = [first["nce"][layer][max(first["nce"][layer])].metrics["nats"]]
    values += [r.metrics["nats"] for r in R.get("replicates", {}).get(layer, {}).values()]
    return SeedSpread(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, len(values))


def _x(steps) -> np.ndarray:
    """Step 0 cannot sit on a log axis: plot it one decade below the first non-zero step."""
    steps = np.asarray(steps, float)
    pos = steps[steps > 0]
    zero_at = pos.min() / 10 if len(pos) else 1.0
    return np.where(steps > 0, steps, zero_at)


def figure5b(s: DynamicsSummary):
    """Fig. 5b: one panel per layer, NCE (± 2 s.e.) against classifier updates for each regime; a last panel
    with the classifiers' test (solid) and training (dashed) accuracy. Three panels to a row (the text
    column's width)."""
    layers, steps = s.layers, s.steps
    x = _x(steps)
    n = len(layers) + 1
    fig, axes = _panels(n)
    for ax, l in zip(axes, layers):
        for g in s.regimes:
            v = np.array([(s.nce[g][l][t].value, s.nce[g][l][t].stderr) for t in steps])
            ax.errorbar(x, v[:, 0], yerr=2 * v[:, 1], marker="o", ms=4, capsize=2, color=REGIME_COLOURS.get(g),
                        label=regime_label(g).split(" (")[0])
        ax.set_title(f"{layer_label(l)}: NCE [nats]", fontsize=9)
    ax = axes[n - 1]
    for g in s.regimes:
        a = np.array([(s.accuracy[g][t].test, s.accuracy[g][t].train) for t in steps])
        ax.plot(x, 100 * a[:, 0], marker="o", ms=4, color=REGIME_COLOURS.get(g), label="test")
        ax.plot(x, 100 * a[:, 1], marker=".", ls="--", color=REGIME_COLOURS.get(g), label="train")
    ax.set_title("classifier accuracy [%]", fontsize=9)
    axes[0].legend(fontsize=7)
    _step_axes(axes, steps)
    fig.tight_layout()
    return fig


def _panels(n: int):
    """A figure of ``n`` panels, three to a row (the text column's width): (figure, the n axes)."""
    columns = min(3, n)
    rows = math.ceil(n / columns)
    fig, grid = plt.subplots(rows, columns, figsize=(FIGURE_WIDTH_IN, 2.35 * rows), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _step_axes(axes, steps) -> None:
    """Classifier updates on a log axis (step 0 one decade left, see ``_x``), labelled under the bottom row."""
    columns = min(3, len(axes))
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(_x(steps), [str(t) for t in steps], fontsize=7, rotation=45)
        ax.minorticks_off()
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[max(0, len(axes) - columns):]:
        ax.set_xlabel("classifier updates", fontsize=8)


def nce_changes(s: DynamicsSummary) -> dict[str, dict[str, list[Difference]]]:
    """regime -> layer -> [NCE(regime, t) − NCE(step 0) for every step t]: the differences the claims judge,
    each with its noise (``nce_difference``). Before its first update a classifier is its random
    initialisation, so both regimes are measured from the same step-0 models (the regular network's)."""
    first = ("regular" if "regular" in s.regimes else s.regimes[0], s.steps[0])
    return {g: {l: [nce_difference(s, l, (g, t), first) for t in s.steps] for l in s.layers} for g in s.regimes}


def figure_nce_change(s: DynamicsSummary):
    """The NCE along training as the claims see it: per layer, NCE(t) − NCE(step 0) for each regime, ± 2 × the
    noise of that difference (seed-paired when the run paired its seeds). Fig. 5b's ± 2 s.e. of each NCE
    is mostly the spread of the test images' difficulty, which cancels in every difference; this is the scale
    on which the claims are decided (a rise, a fall, or the gap between the curves; the noise of a fall or a
    gap itself is in the claims table)."""
    changes = nce_changes(s)
    fig, axes = _panels(len(s.layers))
    x = _x(s.steps)
    for ax, l in zip(axes, s.layers):
        ax.axhline(0.0, color="0.5", lw=0.8)
        for g in s.regimes:
            d = changes[g][l]
            ax.errorbar(x, [c.value for c in d], yerr=[2 * c.noise for c in d], marker="o", ms=4, capsize=2,
                        color=REGIME_COLOURS.get(g), label=regime_label(g).split(" (")[0])
        ax.set_title(f"{layer_label(l)}: ΔNCE [nats]", fontsize=9)
    axes[0].legend(fontsize=7)
    _step_axes(axes, s.steps)
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class RiseAndFall:
    """The pattern of one regime at one layer: the peak checkpoint, the rise from step 0 to it and the fall
    from it to the last checkpoint (paired differences with their noise), and whether both clear twice
    their noise with the peak in the interior (``shown``)."""

    peak: int
    rise: Difference
    fall: Difference
    shown: bool


def rise_and_fall(s: DynamicsSummary, regime: str, layer: str) -> RiseAndFall:
    steps = s.steps
    if s.by_seed:  # the peak of the seed-averaged curve
        nats = seed_mean_curve(s.by_seed[regime][layer], steps)
    else:
        nats = [s.nce[regime][layer][t].value for t in steps]
    peak = steps[int(np.argmax(nats))]
    rise = nce_difference(s, layer, (regime, peak), (regime, steps[0]))
    fall = nce_difference(s, layer, (regime, steps[-1]), (regime, peak))
    return RiseAndFall(peak=peak, rise=rise, fall=fall,
                       shown=bool(peak not in (steps[0], steps[-1]) and rise.value > 2 * rise.noise
                                  and -fall.value > 2 * fall.noise))


def rise_and_fall_verdict(s: DynamicsSummary, r: RiseAndFall) -> tuple[bool | None, str | None]:
    """Reproduced when the peak is interior and both the rise and the fall clear 2 × their noise;
    contradicted when the peak is an end point and the NCE moves away from it beyond its noise (it only
    falls from the first checkpoint, or still rises at the last); undecided otherwise, with the noise."""
    if r.shown:
        return True, None
    first, last = s.steps[0], s.steps[-1]
    if r.peak == last and decide(r.rise, +1):
        return False, (f"the NCE is highest at the last checkpoint ({last} updates), {r.rise.pm()} nats above "
                       "step 0: no fall within these checkpoints")
    if r.peak == first and decide(r.fall, -1):
        return False, (f"the NCE only falls from step 0 ({r.fall.pm()} nats by {last} updates): no rise at these "
                       "checkpoints")
    parts = [f"{name} {d.pm()}" for name, d in (("rise", r.rise), ("fall", r.fall))
             if decide(d, +1 if name == "rise" else -1) is not True]
    return None, ("inside the noise: " + ", ".join(parts) + " nats (decided beyond 2 × noise)"
                  + ("; the peak is an end point" if r.peak in (first, last) else ""))


def overfit_minus_regular(s: DynamicsSummary, layer: str) -> Difference:
    """The overfitted network's NCE minus the regular one's at the last checkpoint, paired, with its noise."""
    last = s.steps[-1]
    return nce_difference(s, layer, ("overfit", last), ("regular", last))


def dynamics_claims(s: DynamicsSummary) -> list[Claim]:
    """§5.3's claims per layer (each with a ``kind`` the chapter counts by): the regular net's NCE rises then
    falls; the overfitted net keeps more. Every difference is judged against its noise: the paired test-set
    standard error combined with the seed-to-seed spread of the inversion models (``difference_noise``),
    written "± noise" below."""
    out = []
    steps = s.steps
    noise_kind = ("spread of the per-seed paired differences and test-set s.e." if s.by_seed else
                  "paired s.e. and seed spread")
    for l in s.layers:
        spread = s.seed_spread[l]
        seeds = (f"; means over {spread.n_models} seeds, each a paired difference (common random numbers)"
                 if s.by_seed else
                 f"; seed spread {spread.sd:.1f} nats over {spread.n_models} seeds" if spread.n_models > 1
                 else "; one seed (no spread measured)")
        if "regular" in s.regimes:
            r = rise_and_fall(s, "regular", l)
            ok, why = rise_and_fall_verdict(s, r)
            out.append(Claim(
                kind="rise_and_fall", layer=l,
                claim=f"{layer_label(l)}: the regular network's NCE first rises, then falls (Fig. 5b)",
                paper="yes, every layer",
                ours=f"peak at {r.peak} updates; rise {r.rise.pm()}, then {r.fall.pm()} nats by {steps[-1]}{seeds}",
                reproduced=ok, why=why, power=Power(max(r.rise.noise, r.fall.noise)),
                criterion="an interior checkpoint beats step 0 and the last checkpoint, each by more than 2 × the "
                          f"noise of the difference ({noise_kind}); contradicted when the NCE moves "
                          "away from an end point beyond its noise"))
        if {"regular", "overfit"} <= set(s.regimes):
            d = overfit_minus_regular(s, l)
            ok = decide(d, +1)
            out.append(Claim(
                kind="overfit_keeps_more", layer=l,
                claim=f"{layer_label(l)}: the overfitted network keeps more about the input", paper="yes, every layer",
                ours=f"overfitted − regular at {steps[-1]} updates: {d.pm()} nats{seeds}",
                reproduced=ok, power=Power(d.noise),
                why={True: None, None: undecided_why(d, " nats", decimals(d.noise)),
                     False: "the overfitted network's NCE is lower, beyond the noise: it keeps less"}[ok],
                criterion=f"NCE difference at the last checkpoint > 2 × its noise ({noise_kind}); "
                          "< −2 × noise: contradicted"))
    if {"regular", "overfit"} <= set(s.regimes):
        regular, overfit = s.accuracy["regular"][steps[-1]], s.accuracy["overfit"][steps[-1]]
        out.append(Claim(
            kind="overfit_generalises_worse",
            claim=f"the overfitted network memorises its {paper.DYNAMICS.overfit_train_examples} examples and "
                  "generalises worse", paper="by construction",
            ours=f"train {overfit.train:.1%}, test {overfit.test:.1%} (regular: test {regular.test:.1%})",
            reproduced=bool(overfit.train >= 0.99 and overfit.test < regular.test),
            why=None if overfit.train >= 0.99 and overfit.test < regular.test else
                ("it has not memorised its training set (train < 99 %)" if overfit.train < 0.99 else
                 "its test accuracy is not below the regular network's"),
            criterion="training accuracy ≥ 99 % and test accuracy below the regular network's"))
    return out
