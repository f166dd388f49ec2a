"""The other inverters in numbers and pictures: one bound in nats across families, Table 1's distances,
sample diversity, cost; claims that put the paper's case for autoregressive inverters (§2) to a measurement.

``inverters_summary`` turns the results of ``pipeline.inverters`` into an ``InvertersSummary``; ``table_rows``
gives the cross-family table; ``inverter_claims`` checks three claims by stated criteria, each against the
noise of its comparison; ``samples_figure`` and ``scrubber_panels`` draw the families' samples side by side.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from inversion.bounds import difference_noise, paired_difference
from inversion.reports.common import Claim, Difference, Estimate, Power, SeedSpread, decide, fmt, image_grid, \
    layer_label, undecided_why
from inversion.reports.widgets import STAT_KEYS

FAMILY_LABELS = {"pixelcnn": "PixelCNN++", "flow": "conditional flow (INN)", "vae": "conditional VAE",
                 "gan": "feedforward GAN"}
BOUND_NAMES = {"pixelcnn": "NCE (exact likelihood)", "flow": "dequantized bound", "vae": "ELBO", "gan": "none"}
DIVERSITY_LAYERS = ("fc3", "logits")  # where the paper argues a GAN's samples would collapse (§5.1)


def family_label(family: str) -> str:
    return FAMILY_LABELS.get(family, family)


@dataclass(frozen=True)
class InverterRow:
    """One family at one layer. ``bound``: nats per image on the first ``n_bound`` test images (PixelCNN++:
    its NCE; flow: the dequantized bound; VAE: the ELBO; GAN: None, it has no likelihood). ``diversity``: the
    mean pixel L1 (in [0, 1] units) between two samples of the same h, averaged over test images."""

    family: str
    layer: str
    bound: Estimate | None
    iwae: Estimate | None
    bits_per_dim: float | None
    n_bound: int
    im_s: float
    im_s_stderr: float | None
    im_nn: float
    class_agreement: float
    diversity: float
    train_minutes: float
    samples_per_second: float


@dataclass(frozen=True)
class InvertersSummary:
    """The numbers of one run of the chapter. ``tightest[layer]``: PixelCNN++'s NCE minus the best other
    family's bound (``best_other[layer]``), paired over the test images both used; its noise combines the
    paired test-set standard error with the seed-to-seed spread of both families' bounds where the run trained
    replicates (``seed_spread[(family, layer)]``, sd 0 over 1 model otherwise: then the noise is a lower bound).
    ``diversity_gap[layer]``: the GAN's diversity minus PixelCNN++'s, paired over the same test images.
    ``nn1[layer]``: the mean L1 from a test image's h to its nearest training image's (Table 1's 1NN)."""

    dataset: str
    layers: list[str]
    families: list[str]  # "pixelcnn" first, then the other families of the run
    rows: dict[tuple[str, str], InverterRow]
    seed_spread: dict[tuple[str, str], SeedSpread]
    tightest: dict[str, Difference]
    best_other: dict[str, str]
    diversity_gap: dict[str, Difference]
    nn1: dict[str, float]
    classifier_accuracy: float
    supervised_accuracy: float
    supervised_elbo: Estimate
    n_images: int
    n_samples: int


def per_image_diversity(samples: np.ndarray) -> np.ndarray:
    """Mean pixel L1 between every two samples of each image: [n, k, C, H, W] uint8 -> [n] (NaN if k < 2)."""
    n, k = samples.shape[:2]
    xs = samples.reshape(n, k, -1).astype(np.float64) / 255.0
    if k < 2:
        return np.full(n, np.nan)
    pairs = [np.abs(xs[:, a] - xs[:, b]).mean(1) for a in range(k) for b in range(a + 1, k)]
    return np.mean(pairs, axis=0)


def _paired(a: np.ndarray, b: np.ndarray) -> Difference:
    n = min(len(a), len(b))
    d, se = paired_difference(np.asarray(a[:n], dtype=np.float64), np.asarray(b[:n], dtype=np.float64))
    return Difference(d, se)


def inverters_summary(R: Mapping) -> InvertersSummary:
    """The numbers of ``pipeline.inverters_results``."""
    clf = R["classifier"]
    layers = list(R["pixelcnn"])
    others = list(R["families"])
    rows, bounds, diversity = {}, {}, {}
    for layer in layers:
        p = R["pixelcnn"][layer]
        nce, smp = p["nce"].metrics, p["samples"]
        bounds[("pixelcnn", layer)] = p["nce"].arrays("log_probs.npy")["array"]
        diversity[("pixelcnn", layer)] = per_image_diversity(smp.arrays("samples.npz")["samples"])
        rows[("pixelcnn", layer)] = InverterRow(
            "pixelcnn", layer, Estimate(nce["nats"], nce["stderr"]), None, nce["bits_per_dim"], p["nce"].config["n_test"],
            smp.metrics["im_s"], smp.metrics.get("im_s_stderr"), smp.metrics["im_nn"], smp.metrics["class_agreement"],
            float(np.nanmean(diversity[("pixelcnn", layer)])), p["inversion"].metrics["train_seconds"] / 60,
            smp.metrics["samples_per_second"])
        for family in others:
            m, ev = R["families"][family][layer]["model"], R["families"][family][layer]["evaluation"]
            e = ev.metrics
            has_bound = "bound_nats" in e
            if has_bound:
                bounds[(family, layer)] = ev.arrays("log_probs.npy")["array"]
            diversity[(family, layer)] = ev.arrays("samples.npz")["diversity"]
            rows[(family, layer)] = InverterRow(
                family, layer, Estimate(e["bound_nats"], e["bound_stderr"]) if has_bound else None,
                Estimate(e["iwae_nats"], e["iwae_stderr"]) if "iwae_nats" in e else None,
                e.get("bits_per_dim"), ev.config["n_test"] if has_bound else 0, e["im_s"], e.get("im_s_stderr"), e["im_nn"],
                e["class_agreement"], e["diversity"], m.metrics["train_seconds"] / 60, e["samples_per_second"])
    spread = {}
    for layer in layers:
        reps = R.get("replicates", {}).get(layer, {})
        for f in ["pixelcnn", *others]:
            if rows[(f, layer)].bound is None:
                continue
            values = [rows[(f, layer)].bound.value] + [
                r.metrics["nats"] if f == "pixelcnn" else r.metrics["bound_nats"] for r in reps.get(f, {}).values()]
            spread[(f, layer)] = SeedSpread(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, len(values))
    tightest, best_other, diversity_gap = {}, {}, {}
    for layer in layers:
        candidates = {f: rows[(f, layer)].bound.value for f in others if rows[(f, layer)].bound is not None}
        if candidates:
            best = max(candidates, key=candidates.get)
            best_other[layer] = best
            d = _paired(bounds[("pixelcnn", layer)], bounds[(best, layer)])
            # difference_noise takes one spread for both models: the root mean square of the two is the same sum
            sd = float(np.sqrt((spread[("pixelcnn", layer)].sd ** 2 + spread[(best, layer)].sd ** 2) / 2))
            tightest[layer] = Difference(d.value, difference_noise(d.noise, sd))
        if "gan" in others:
            diversity_gap[layer] = _paired(diversity[("gan", layer)], diversity[("pixelcnn", layer)])
    sv = R["supervised_vae"].metrics
    ev0 = R["families"][others[0]][layers[0]]["evaluation"] if others else None
    return InvertersSummary(
        dataset=clf.config["dataset"], layers=layers, families=["pixelcnn", *others], rows=rows, seed_spread=spread,
        tightest=tightest,
        best_other=best_other, diversity_gap=diversity_gap,
        nn1={layer: R["neighbours"][layer].metrics["nn1"] for layer in layers if layer in R.get("neighbours", {})},
        classifier_accuracy=clf.metrics["test_accuracy"], supervised_accuracy=sv["test_accuracy"],
        supervised_elbo=Estimate(sv["elbo_nats"], sv["elbo_stderr"]),
        n_images=ev0.config["n_images"] if ev0 else 0, n_samples=ev0.config["n_samples"] if ev0 else 0)


TABLE_HEADER = ["layer", "inverter", "bound (nats/image) ± s.e.", "bits/dim", "IWAE (nats)", "IM-S", "IM-NN",
                "same class", "diversity", "train (min)", "samples/s"]


def table_rows(s: InvertersSummary) -> list[tuple]:
    """The cross-family table, one row per (layer, family)."""
    out = []
    for layer in s.layers:
        for f in s.families:
            r = s.rows[(f, layer)]
            bound = f"{r.bound.value:.1f} ± {r.bound.stderr:.1f}" if r.bound else "none (no likelihood)"
            out.append((layer_label(layer), family_label(f), bound, fmt(r.bits_per_dim, ".3f"),
                        f"{r.iwae.value:.1f}" if r.iwae else "", fmt(r.im_s, ".3f"), fmt(r.im_nn, ".3f"),
                        f"{r.class_agreement:.0%}", fmt(r.diversity, ".3f"), fmt(r.train_minutes, ".1f"),
                        fmt(r.samples_per_second, ".3g")))
    return out


def seed_spread_note(s: InvertersSummary) -> str:
    """Where the run measured the seed spread of the bounds, and how large it was: for the claims' prose."""
    parts = []
    for layer in s.layers:
        spreads = [(f, s.seed_spread[(f, layer)]) for f in s.families if (f, layer) in s.seed_spread]
        if spreads and max(sp.n_models for _, sp in spreads) > 1:
            parts.append(f"at {layer_label(layer)}, the sd over {spreads[0][1].n_models} seeds: " + ", ".join(
                f"{family_label(f)} {sp.sd:.1f} nats" for f, sp in spreads))
    return "; ".join(parts) if parts else "none in this run"


def inverter_claims(s: InvertersSummary) -> list[Claim]:
    """Three claims per run, each judged against the noise of its comparison (``common.decide``); a claim that
    is not reproduced says why, from the run's own numbers."""
    claims = []
    for layer in s.layers:
        if layer in s.tightest:
            d, best = s.tightest[layer], s.best_other[layer]
            n_models = min(s.seed_spread[("pixelcnn", layer)].n_models, s.seed_spread[(best, layer)].n_models)
            noise = (f"paired test-set s.e. and the seed spread over {n_models} models of each" if n_models > 1 else
                     "paired test-set s.e. only: one seed per family, so the seed spread is not in it")
            ok = decide(d, +1)
            why = {True: None, None: undecided_why(d, " nats", 1),
                   False: (f"the {family_label(best)}'s bound ({fmt(s.rows[(best, layer)].bits_per_dim, '.3f')} "
                           f"bits/dim) beats the PixelCNN++'s exact NCE "
                           f"({fmt(s.rows[('pixelcnn', layer)].bits_per_dim, '.3f')} bits/dim): this run's "
                           "PixelCNN++ models p(x | h) worse; a bound cannot say its family could not do better")}[ok]
            claims.append(Claim(
                f"{layer_label(layer)}: the autoregressive model gives the tightest bound on log p(x | h)",
                "§2: exact likelihood, so the best bound (no comparison in the paper)",
                f"PixelCNN++ − {family_label(best)} = {d.value:+.1f} ± {d.noise:.1f} nats", ok,
                f"difference beyond 2 × its noise ({noise})", kind="bound", layer=layer, why=why, power=Power(d.noise)))
    for layer in [l for l in DIVERSITY_LAYERS if l in s.diversity_gap]:
        d = s.diversity_gap[layer]
        ok = decide(d, -1)
        gan, pcnn = s.rows[("gan", layer)], s.rows[("pixelcnn", layer)]
        why = {True: None, None: undecided_why(d, "", 3),
               False: (f"the GAN's samples of one h differ more (mean pixel L1 {gan.diversity:.3f}) than the "
                       f"PixelCNN++'s ({pcnn.diversity:.3f}); they keep the input's class in "
                       f"{gan.class_agreement:.0%} of cases against {pcnn.class_agreement:.0%}")}[ok]
        claims.append(Claim(
            f"{layer_label(layer)}: a GAN's samples vary less than PixelCNN++'s",
            "§5.1: GAN inversions need a tuned entropy term; likelihood models keep the spread",
            f"diversity (mean pixel L1 between two samples of one h, 0–1): GAN − PixelCNN++ = {d.value:+.3f} ± "
            f"{d.noise:.3f}", ok,
            "paired per-image difference of mean pixel L1 between samples, beyond ±2 s.e.",
            kind="diversity", layer=layer, why=why))
    for layer in s.layers:
        if ("flow", layer) in s.rows and layer in s.nn1:
            r = s.rows[("flow", layer)]
            gap = Difference(s.nn1[layer] - r.im_s, r.im_s_stderr or 0.0)
            ok = decide(gap, +1)
            why = {True: None, None: undecided_why(gap, "", 3),
                   False: (f"the flow's first sample is further from h (IM-S {r.im_s:.3f}) than the nearest "
                           f"training image is (1NN {s.nn1[layer]:.3f}); its bound, "
                           f"{fmt(r.bits_per_dim, '.3f')} bits/dim, is far from the PixelCNN++'s "
                           f"{fmt(s.rows[('pixelcnn', layer)].bits_per_dim, '.3f')}")}[ok]
            claims.append(Claim(
                f"{layer_label(layer)}: the INN's samples map back to h (closer than the nearest training image)",
                "Rombach et al. 2020: samples for one h share its representation",
                f"L1 per unit of the layer: 1NN − IM-S = {gap.value:+.3f} ± {gap.noise:.3f}", ok,
                "Table 1's comparison: IM-S below the nearest training image's distance (1NN), beyond ±2 s.e. "
                "of IM-S", kind="flow", layer=layer, why=why))
    return claims


def samples_figure(inputs: np.ndarray, per_family: Mapping[str, np.ndarray], n_samples: int = 3,
                   title: str | None = None):
    """One row per test image: the input, then ``n_samples`` samples of each family ([n, K, C, H, W] each)."""
    columns, groups = [("input", inputs)], [("", 1)]
    for f, smp in per_family.items():
        k = min(n_samples, smp.shape[1])
        columns += [(f"{j + 1}", smp[:, j]) for j in range(k)]
        groups.append((family_label(f), k))
    return image_grid(columns, groups, title=title, row_labels=[f"image {i + 1}" for i in range(len(inputs))], lead=1)


def swap_figure(inputs: np.ndarray, swap: np.ndarray, title: str | None = None):
    """The flow's swap grid: row i keeps test image i's residual v (shown first), column j decodes it with the
    h of test image j ([m, m, C, H, W] from ``inverter_eval``'s swap.npz)."""
    m = len(swap)
    columns = [("input", inputs[:m])] + [(f"h of {j + 1}", swap[:, j]) for j in range(m)]
    return image_grid(columns, [("", 1), ("decoded with the representation h of test image", m)], title=title,
                      row_labels=[f"v of image {i + 1}" for i in range(m)])


def _family_arrays(R: Mapping, layer: str, n_images: int, keys=("samples",)) -> dict[str, dict[str, np.ndarray]]:
    """{family: {key: array}} at ``layer`` for the first ``n_images`` test images, PixelCNN++ first, each
    samples file read once; every family cut to the smallest number of samples any of them drew."""
    arrays = {"pixelcnn": R["pixelcnn"][layer]["samples"].arrays("samples.npz")}
    for f in R["families"]:
        arrays[f] = R["families"][f][layer]["evaluation"].arrays("samples.npz")
    k = min(a["samples"].shape[1] for a in arrays.values())
    return {f: {key: a[key][:n_images, :k] for key in keys} for f, a in arrays.items()}


def family_samples(R: Mapping, layer: str, n_images: int) -> dict[str, np.ndarray]:
    """{family: samples [n, K, C, H, W]} at ``layer`` for the first ``n_images`` test images, PixelCNN++ first;
    every family cut to the smallest number of samples any of them drew."""
    return {f: a["samples"] for f, a in _family_arrays(R, layer, n_images).items()}


def scrubber_panels(R: Mapping, n_images: int) -> dict:
    """Panels for ``widgets.scrubber`` with one entry per inverter (its menu), the MSE reconstruction beside,
    and each sample's statistics for the filmstrip."""
    from inversion import data

    layers = list(R["pixelcnn"])
    dataset = R["classifier"].config["dataset"]
    per_layer = {layer: _family_arrays(R, layer, n_images, ("samples", *STAT_KEYS)) for layer in layers}
    n = min(len(a["samples"]) for fam in per_layer.values() for a in fam.values())
    x, y = data.load(dataset, "test")
    inputs, labels = x[:n].numpy(), [str(int(v)) for v in y[:n]]
    recon = {layer: R["decoder"][layer].arrays("reconstructions.npz")["images"][:n] for layer in layers}
    return {family_label(f): {"inputs": inputs, "labels": labels,
                              "layers": {layer: {"recon": recon[layer],
                                                 **{key: v[:n] for key, v in per_layer[layer][f].items()}}
                                         for layer in layers}} for f in per_layer[layers[0]]}
