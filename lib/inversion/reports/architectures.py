"""§5.2 in numbers and pictures: accuracy, NCE and sample geometry per architecture on affNIST.

``architecture_summary`` turns the stage results of ``pipeline.architectures`` into an
``ArchitectureSummary``; ``figure4`` draws the paper's Fig. 4; ``architecture_claims`` checks the paper's
claims (numbers from ``inversion.paper``) by stated criteria. The geometry of samples (position,
orientation, ink) is measured by ``inversion.digit_geometry``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from inversion import digit_geometry, paper
from inversion.bounds import SeedPairedDifference, difference_noise, paired_difference, seed_paired_difference
from inversion.reports.common import Claim, Difference, Estimate, Power, SeedSpread, decide, fmt, \
    image_grid, mostly, share_pm, share_stderr, undecided_why

ARCH_LABELS = {"fc": "fully connected", "conv": "conv", "conv_gmp": "conv + global max pool"}
# The geometry ratio (error to own input / error to other same-class inputs) at or above which samples count
# as about as far from their own input as from any other digit of the class, i.e. the property discarded.
DISCARDED = 0.75
PAIRS = (("conv", "fc"), ("conv", "conv_gmp"), ("conv_gmp", "fc"))  # NCE differences, as the paper states them


def arch_label(arch: str) -> str:
    return ARCH_LABELS.get(arch, arch)


@dataclass(frozen=True)
class ArchitectureSummary:
    """The numbers of one §5.2 run. ``differences[(a, b)]`` is the FC3 NCE of network a minus that of b
    (paired over the same test images) with its noise. Where both networks' inversion models were trained
    with the same seeds (``replicate_seeds``), the seeds pair up as common random numbers and ``paired``
    holds the per-seed analysis (``inversion.bounds.seed_paired_difference``: the mean over seeds, its
    noise from the spread of the per-seed differences and the test-set s.e.); otherwise the noise is the
    main models' paired test-set s.e. combined with the seed-to-seed spread (``seed_spread``, pooled over the
    networks with replicates; sd 0 over 0 models when there are none)."""

    dataset: str
    archs: list[str]
    accuracy: dict[str, float]
    nce: dict[str, Estimate]
    bits_per_dim: dict[str, float]
    mse: dict[str, float]  # the MSE decoder's test MSE
    kept: dict[str, dict[str, digit_geometry.Kept]]  # network -> property -> how much the samples kept
    kept_mse: dict[str, dict[str, digit_geometry.Kept]]  # the same for the MSE reconstructions
    n_images: int  # test images whose samples were measured
    n_samples: int  # samples per image
    seed_spread: SeedSpread
    differences: dict[tuple[str, str], Difference]
    paired: dict[tuple[str, str], SeedPairedDifference] = field(default_factory=dict)  # where seeds pair up
    gain: dict[str, Estimate] = field(default_factory=dict)  # NCE − log p(x) of the warm start's model (if any)
    agreement: dict[str, float] = field(default_factory=dict)  # samples the network's classifier gives the input's class
    agreement_stderr: dict[str, float | None] = field(default_factory=dict)  # its s.e. across the input images

    def mostly_digits(self, arch: str) -> bool | None:
        """Are most of the network's FC3 samples digits of their input's class? True or False beyond twice the
        class agreement's s.e. across images, None when this run cannot tell it from half (``mostly``)."""
        return mostly(self.agreement[arch], self.agreement_stderr.get(arch))

    def _digits(self, verdict: bool | None) -> list[str]:
        return [a for a in self.archs if a in self.agreement and self.mostly_digits(a) is verdict]

    @property
    def few_digits(self) -> list[str]:
        """The networks most of whose FC3 samples are, beyond the noise, not digits of their input's class."""
        return self._digits(False)

    @property
    def about_half_digits(self) -> list[str]:
        """The networks whose share of samples that keep the class cannot be told from half by this run."""
        return self._digits(None)

    @property
    def many_digits(self) -> list[str]:
        """The networks most of whose FC3 samples are, beyond the noise, digits of their input's class."""
        return self._digits(True)


def architecture_summary(R: Mapping[str, Mapping]) -> ArchitectureSummary:
    """The numbers of ``pipeline.architectures``' results, for tables, prose and claims."""
    from inversion import data

    archs = list(R)
    accuracy, nce, bits, mse, kept, kept_mse, lp, agreement, agreement_se = {}, {}, {}, {}, {}, {}, {}, {}, {}
    dataset = R[archs[0]]["classifier"].config["dataset"]
    x_test, y_test = data.load(dataset, "test")
    for a in archs:
        r = R[a]
        accuracy[a] = r["classifier"].metrics["test_accuracy"]
        nce[a] = Estimate(r["nce"].metrics["nats"], r["nce"].metrics["stderr"])
        bits[a] = r["nce"].metrics["bits_per_dim"]
        lp[a] = r["nce"].arrays("log_probs.npy")["array"]
        mse[a] = r["decoder"].metrics["test_mse"]
        agreement[a] = r["samples"].metrics["class_agreement"]
        z = r["samples"].arrays("samples.npz")
        agreement_se[a] = share_stderr(z["agree"]) if "agree" in z else None
        idx = z["test_index"]
        inputs, labels = x_test[idx].numpy(), y_test[idx].numpy()
        kept[a] = digit_geometry.kept_table(inputs, z["samples"], labels)
        rec = r["decoder"].arrays("reconstructions.npz")
        n = min(len(rec["images"]), len(idx))
        kept_mse[a] = digit_geometry.kept_table(inputs[:n], rec["images"][:n, None], labels[:n])
        n_images, n_samples = len(idx), z["samples"].shape[1]
    # seed-to-seed spread of the NCE, pooled over the networks that have replicate inversion models
    spreads = [np.var([R[a]["nce"].metrics["nats"]] + [r.metrics["nats"] for r in R[a].get("replicates", {}).values()],
                      ddof=1) for a in archs if R[a].get("replicates")]
    spread = SeedSpread(float(np.sqrt(np.mean(spreads))) if spreads else 0.0,
                        sum(1 + len(R[a]["replicates"]) for a in archs if R[a].get("replicates")))
    differences, paired = {}, {}
    by_seed = {a: {R[a]["inversion"].config["seed"]: lp[a],
                   **{s: r.arrays("log_probs.npy")["array"] for s, r in R[a].get("replicates", {}).items()}}
               for a in archs}
    for a, b in PAIRS:
        if a in lp and b in lp:
            if len(set(by_seed[a]) & set(by_seed[b])) >= 2:  # common random numbers: one difference per seed
                p = paired[(a, b)] = seed_paired_difference(by_seed[a], by_seed[b])
                differences[(a, b)] = Difference(p.value, p.noise)
            else:
                d, se = paired_difference(lp[a], lp[b])
                differences[(a, b)] = Difference(d, difference_noise(se, spread.sd))
    return ArchitectureSummary(dataset=dataset, archs=archs, accuracy=accuracy, nce=nce, bits_per_dim=bits, mse=mse,
                               kept=kept, kept_mse=kept_mse, n_images=n_images, n_samples=n_samples,
                               seed_spread=spread, differences=differences, paired=paired, agreement=agreement,
                               agreement_stderr=agreement_se,
                               gain={a: Estimate(*paired_difference(lp[a], R[a]["unconditional_nce"].arrays(
                                   "log_probs.npy")["array"])) for a in archs if "unconditional_nce" in R[a]})


def figure4(inputs: np.ndarray, per_arch: Mapping[str, tuple[np.ndarray, np.ndarray]], n_samples: int = 4,
            title: str | None = None):
    """Fig. 4: one row per test image; the input, then per architecture ``n_samples`` inversion samples from
    FC3 and the MSE reconstruction (framed in orange). ``per_arch`` maps arch -> (samples [n, K, C, H, W],
    reconstructions [n, C, H, W])."""
    columns, groups, frames = [("input", inputs)], [("", 1)], [None]
    for a, (smp, rec) in per_arch.items():
        k = min(n_samples, smp.shape[1])
        columns += [(f"sample {j + 1}", smp[:, j]) for j in range(k)] + [("MSE", rec)]
        frames += [None] * k + ["tab:orange"]
        groups.append((arch_label(a), k + 1))
    return image_grid(columns, groups, frames, title=title, row_labels=[f"image {i + 1}" for i in range(len(inputs))],
                      lead=1)


def geometry_rows(s: ArchitectureSummary) -> list[tuple]:
    """Table rows: architecture, property, samples' ratio (diff ± s.e.), MSE reconstruction's ratio."""
    rows = []
    for a in s.archs:
        for p in digit_geometry.PROPERTIES:
            k, m = s.kept[a][p], s.kept_mse[a][p]
            rows.append((arch_label(a), p, f"{fmt(k.error, '.2f')} / {fmt(k.baseline, '.2f')}", fmt(k.ratio, ".2f"),
                         f"{fmt(k.diff, '+.2f')} ± {fmt(k.diff_stderr, '.2f')}", "yes" if k.kept else "no",
                         fmt(m.ratio, ".2f"), "yes" if m.kept else "no"))
    return rows


GEOMETRY_HEADER = ["network", "property", "samples: error own / other", "ratio", "difference ± s.e.", "kept?",
                   "MSE recon.: ratio", "kept?"]


def _accuracy_claims(s: ArchitectureSummary) -> list[Claim]:
    acc, archs = s.accuracy, s.archs
    out = []
    if {"fc", "conv", "conv_gmp"} <= set(archs):
        paper_values = ", ".join(f"{arch_label(a)} {paper.ARCHITECTURES[a].accuracy:.1%}" for a in ("fc", "conv", "conv_gmp"))
        ours = ", ".join(f"{arch_label(a)} {acc[a]:.2%}" for a in ("fc", "conv", "conv_gmp"))
        least = acc["fc"] < min(acc["conv"], acc["conv_gmp"])
        most = acc["conv_gmp"] >= max(acc["conv"], acc["fc"])
        out.append(Claim(claim="affNIST: the fully connected network is the least accurate", paper=paper_values,
                         ours=ours, reproduced=least, criterion="FC test accuracy below both convolutional networks'",
                         why=None if least else "a convolutional network is no more accurate than the FC one: "
                                                "at this training length their order is not yet the paper's"))
        out.append(Claim(claim="affNIST: global max pooling gives the most accurate network", paper=paper_values,
                         ours=ours, reproduced=most, criterion="conv + global max pool test accuracy ≥ the other two",
                         why=None if most else "another network is more accurate at this training length"))
    return out


def _nce_claims(s: ArchitectureSummary) -> list[Claim]:
    out, archs = [], s.archs

    def row(a, b, claim):
        diff = s.differences[(a, b)]
        paper_gap = paper.ARCHITECTURES[a].fc3_nce - paper.ARCHITECTURES[b].fc3_nce
        p = s.paired.get((a, b))
        detail = (f" (mean over {p.n_seeds} seeds paired as common random numbers; treated as independent models "
                  f"the noise would be {p.independent_noise:.2f})" if p else
                  f" (seed spread {s.seed_spread.sd:.2f} included)" if s.seed_spread.n_models else
                  " (test-set s.e. only: no replicate seeds)")
        ok = decide(diff, +1)
        power = Power(diff.noise, paper_effect=paper_gap)
        # Warm-started models report their gain over p(x): the whole of what each bound credits to h. Gains
        # far below the paper's gaps mean loose bounds, whose order need not be that of the information.
        gains = [s.gain[x].value for x in (a, b) if x in s.gain]
        loose = (f"; each model gained at most {max(gains):.1f} nats over p(x), so both bounds are far from tight "
                 "and their order need not be that of the information in h" if len(gains) == 2 else "")
        why = {True: None, None: undecided_why(diff, " nats", 2) + (
                   f"; the paper's {paper_gap:+.2f} nats would {'' if power.powered else 'not '}have "
                   "been detected") + loose,
               False: f"a significant reversal: {arch_label(a)} keeps less than {arch_label(b)} here, against the "
                      f"paper's {paper_gap:+.2f} nats" + loose}[ok]
        if len(gains) == 2:
            detail += f"; gains over p(x) {arch_label(a)} {gains[0]:+.2f}, {arch_label(b)} {gains[1]:+.2f} nats"
        return Claim(claim=claim, paper=f"{paper_gap:+.2f} nats", ours=f"{diff.value:+.2f} ± {diff.noise:.2f} nats" + detail,
                     reproduced=ok, why=why, power=power,
                     criterion=f"NCE difference {arch_label(a)} − {arch_label(b)} > 2 × its noise (< −2 × noise: "
                               "contradicted)")

    if {"conv", "fc"} <= set(archs):
        out.append(row("conv", "fc", "FC3 of the conv network keeps more about the input than the FC network's"))
    if {"conv", "conv_gmp"} <= set(archs):
        out.append(row("conv", "conv_gmp", "global max pooling discards information "
                                           f"(≈ {paper.pooling_loss():.1f} nats in the paper)"))
    if {"conv_gmp", "fc"} <= set(archs):
        out.append(row("conv_gmp", "fc", "even with global pooling, the conv network keeps more than the FC one"))
    return out


def agreement_pm(s: ArchitectureSummary, arch: str) -> str:
    """The class agreement of a network's samples, with its s.e. across the input images where the samples
    stage kept one: "54 ± 4 %" (or "54 %")."""
    return share_pm(s.agreement[arch], s.agreement_stderr.get(arch))


def _not_digits(why: str | None, s: ArchitectureSummary, archs) -> str | None:
    """``why`` (a geometry row that is not reproduced) with, for the networks among ``archs`` whose samples
    mostly are not digits of the input's class, how often they are: "; only 17 % of the conv network's samples
    keep their input's class (chance 10 %): ...". Such samples have no digit geometry to compare."""
    few = [a for a in archs if a in s.few_digits]
    if why is None or not few:
        return why
    shares = " and ".join(f"{100 * s.agreement[a]:.0f} % of the {arch_label(a)} network's" for a in few)
    return (why + f"; only {shares} samples keep their input's class (chance 10 %): most are not yet digits whose "
            "geometry could be compared")


def _geometry_claims(s: ArchitectureSummary) -> list[Claim]:
    out, archs, kept = [], s.archs, s.kept

    def closer(k) -> bool | None:  # closer to the own input than to other same-class inputs, by the noise
        return decide(Difference(k.diff, k.diff_stderr), -1)

    controls = [a for a in ("fc", "conv") if a in archs]
    controls_keep = [a for a in controls if kept[a]["position"].kept]
    if "conv_gmp" in archs:
        k = kept["conv_gmp"]["position"]
        lost = k.ratio >= DISCARDED and not k.kept
        out.append(Claim(
            claim="global pooling: FC3 samples do not keep the digit's position (Fig. 4)", paper="yes (by eye)",
            ours=_kept_text("position", k, " px"),
            reproduced=lost if k.kept or lost else None, discriminates=bool(controls_keep) or not controls,
            criterion=f"centroid error to own input / to other same-class inputs ≥ {DISCARDED}, and not "
                      "significantly closer to the own input (2 s.e.); a test only where a network without global "
                      "pooling keeps position",
            why=_not_digits(None if lost and (controls_keep or not controls) else
                            f"no test: the samples of {' and '.join(arch_label(a) for a in controls)} lose position "
                            "too, so position lost says nothing about pooling" if controls and not controls_keep else
                            "the samples keep position, beyond the noise" if k.kept else
                            f"between kept and discarded (ratio below {DISCARDED}, not significantly kept)",
                            s, ["conv_gmp", *controls])))
        for p, what in (("orientation", "rotation"), ("ink", "style (ink)")):
            k = kept["conv_gmp"][p]
            ok = closer(k)
            out.append(Claim(
                claim=f"global pooling: FC3 samples keep the digit's {what}", paper="yes (by eye)",
                ours=_kept_text(p, k), reproduced=ok,
                criterion=f"samples closer in {p} to their own input than to other same-class inputs, by more than "
                          "2 standard errors (farther by 2: contradicted)",
                why=_not_digits({True: None, None: undecided_why(Difference(k.diff, k.diff_stderr), "", 2),
                                 False: f"the samples are farther in {p} from their own input than from other "
                                        "inputs"}[ok], s, ["conv_gmp"])))
        km, ks = s.kept_mse["conv_gmp"]["orientation"], kept["conv_gmp"]["orientation"]
        # "does not show" is judged against the samples, not by the reconstruction's own test missing 2 s.e.: one
        # reconstruction per input is noisier than K samples, so failing that test alone would read as a loss.
        # The reconstruction must be farther from its input's orientation than the samples are, by 2 s.e. of
        # the difference (the two errors' s.e. combined as if independent: conservative, they share inputs).
        gap = Difference(km.diff - ks.diff, float(np.hypot(km.diff_stderr, ks.diff_stderr)))
        shown_less = decide(gap) is True
        rot_ok = None if not ks.kept else True if shown_less else False if km.kept else None
        out.append(Claim(
            claim="global pooling: the MSE reconstruction does not show the rotation that the samples keep",
            paper="yes (by eye)", ours=f"orientation ratio: samples {fmt(ks.ratio, '.2f')}, MSE reconstruction "
                                       f"{fmt(km.ratio, '.2f')} (reconstruction − samples {gap.value:+.2f} ± "
                                       f"{fmt(gap.noise, '.2f')})",
            reproduced=rot_ok, discriminates=ks.kept,
            criterion="the samples keep the orientation (2 s.e.), and the MSE reconstruction is farther from its "
                      "input's orientation than the samples by 2 s.e. of the difference (keeps it itself and is "
                      "not farther: contradicted); a test only where the samples keep it",
            why=_not_digits({True: None,
                             False: "the MSE reconstruction keeps the rotation too",
                             None: "no test: the samples do not keep the rotation either" if not ks.kept else
                                   undecided_why(gap, "", 2)}[rot_ok], s, ["conv_gmp"])))
    for a in controls:
        k = kept[a]["position"]
        ok = True if (k.kept and k.ratio < DISCARDED) else False if closer(k) is False else None
        out.append(Claim(
            claim=f"{arch_label(a)}: FC3 samples keep the digit's position", paper="yes (by eye)",
            ours=_kept_text("position", k, " px"), reproduced=ok,
            criterion=f"closer to the own input's centroid by more than 2 s.e., and ratio < {DISCARDED} (farther by "
                      "2 s.e.: contradicted)",
            why=_not_digits({True: None,
                             False: "the samples are farther from their own input's position than from others'",
                             None: (f"closer to the own input's position, but the ratio {fmt(k.ratio, '.2f')} is ≥ "
                                    f"{DISCARDED}: only partly kept" if k.kept else
                                    "not significantly closer to the own input's position (ratio "
                                    f"{fmt(k.ratio, '.2f')})")}[ok], s, [a])))
    if {"conv_gmp", "conv", "fc"} <= set(archs):
        mse = s.mse
        blurriest = mse["conv_gmp"] > max(mse["conv"], mse["fc"])
        out.append(Claim(
            claim="global pooling gives the blurriest MSE reconstructions", paper="\"very blurry\" (Fig. 4)",
            ours="decoder test MSE " + ", ".join(f"{arch_label(a)} {mse[a]:.4f}" for a in archs),
            reproduced=blurriest, criterion="the conv + global max pool decoder has the highest test MSE",
            why=None if blurriest else "another network's decoder has a higher test MSE"))
    return out


def _kept_text(prop: str, k, unit: str = "") -> str:
    """"position ratio 0.97 (+0.12 ± 0.30 px)", or why there is no ratio: no sample with ink to measure, or no
    other test image of the same class to compare with."""
    if not np.isfinite(k.ratio):
        return f"{prop} ratio not measurable (no sample ink to measure, or no same-class image to compare)"
    return f"{prop} ratio {k.ratio:.2f} ({k.diff:+.2f} ± {fmt(k.diff_stderr, '.2f')}{unit})"


def architecture_claims(s: ArchitectureSummary) -> list[Claim]:
    """The §5.2 claims, each with the paper's value, this run's and a criterion that could fail."""
    return _accuracy_claims(s) + _nce_claims(s) + _geometry_claims(s)
