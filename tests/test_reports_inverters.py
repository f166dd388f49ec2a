"""The other inverters' report: diversity measured right, and each claim's verdict on synthetic summaries
that reproduce it, contradict it, or leave it inside the noise."""

from __future__ import annotations

import numpy as np
import pytest

from inversion.reports import inverters as IR
from inversion.bounds import paired_difference
from inversion.reports.common import Difference, Estimate, SeedSpread


def test_diversity_of_identical_samples_is_zero_and_of_opposite_ones_is_one():
    same = np.full((3, 4, 1, 2, 2), 7, dtype=np.uint8)
    assert np.allclose(IR.per_image_diversity(same), 0)
    half = np.zeros((1, 2, 1, 2, 2), dtype=np.uint8)
    half[0, 1] = 255
    assert np.allclose(IR.per_image_diversity(half), 1.0)
    assert np.isnan(IR.per_image_diversity(same[:, :1])).all()


def _row(family, layer, bound=None, im_s=0.1, se=0.01, diversity=0.2):
    return IR.InverterRow(family, layer, None if bound is None else Estimate(bound, 1.0), None, None, 100, im_s, se,
                          im_s, 0.9, diversity, 1.0, 10.0)


def _summary(tight: Difference, diversity: Difference, nn1: float, flow_im_s: float):
    layer = "fc3"
    rows = {(f, layer): _row(f, layer, None if f == "gan" else -100.0, im_s=flow_im_s if f == "flow" else 0.1)
            for f in ("pixelcnn", "flow", "vae", "gan")}
    return IR.InvertersSummary(dataset="mnist", layers=[layer], families=["pixelcnn", "flow", "vae", "gan"],
                               rows=rows, seed_spread={(f, layer): SeedSpread(0.0, 1) for f in ("pixelcnn", "flow", "vae")},
                               tightest={layer: tight}, best_other={layer: "vae"},
                               diversity_gap={layer: diversity}, nn1={layer: nn1}, classifier_accuracy=0.99,
                               supervised_accuracy=0.95, supervised_elbo=Estimate(-90.0, 1.0), n_images=10,
                               n_samples=5)


@pytest.mark.parametrize("tight, diversity, nn1, im_s, verdicts", [
    (Difference(12.0, 2.0), Difference(-0.1, 0.01), 0.5, 0.1, [True, True, True]),      # all reproduced
    (Difference(-12.0, 2.0), Difference(0.1, 0.01), 0.05, 0.1, [False, False, False]),  # all contradicted
    (Difference(1.0, 2.0), Difference(-0.005, 0.01), 0.105, 0.1, [None, None, None]),   # inside the noise
])
def test_claim_verdicts(tight, diversity, nn1, im_s, verdicts):
    claims = IR.inverter_claims(_summary(tight, diversity, nn1, im_s))
    assert [c.kind for c in claims] == ["bound", "diversity", "flow"]
    assert [c.reproduced for c in claims] == verdicts
    for c in claims:  # every claim not reproduced says why; a reproduced one has nothing to explain
        assert (c.why is None) == (c.reproduced is True)
        if c.reproduced is None:
            assert "inside its noise" in c.why
    assert "PixelCNN++ − conditional VAE" in claims[0].ours


def test_table_says_the_gan_has_no_likelihood():
    s = _summary(Difference(1.0, 1.0), Difference(0.0, 1.0), 0.5, 0.1)
    rows = {r[1]: r for r in IR.table_rows(s)}
    assert rows["feedforward GAN"][2] == "none (no likelihood)"
    assert rows["PixelCNN++"][2] == "-100.0 ± 1.0"


class _Result:
    """What ``inverters_summary`` reads of a stage result: config, metrics and arrays."""

    def __init__(self, config=None, metrics=None, arrays=None):
        self.config, self.metrics, self._arrays = config or {}, metrics or {}, arrays or {}

    def arrays(self, name):
        return self._arrays[name]


def _results(replicate_nats: dict | None):
    """A one-layer run: PixelCNN++ and a VAE on 50 test images, replicates of both when given."""
    rng = np.random.default_rng(0)
    n, layer = 50, "fc3"
    lp = {"pixelcnn": -100 + rng.normal(0, 5, n), "vae": -130 + rng.normal(0, 5, n)}
    samples = rng.integers(0, 256, (4, 3, 1, 2, 2)).astype(np.uint8)
    sample_metrics = dict(im_s=0.1, im_s_stderr=0.01, im_nn=0.05, class_agreement=0.9, samples_per_second=10.0)
    R = {"classifier": _Result({"dataset": "mnist"}, {"test_accuracy": 0.99}),
         "pixelcnn": {layer: {
             "nce": _Result({"n_test": n}, dict(nats=lp["pixelcnn"].mean(), stderr=1.0, bits_per_dim=0.2),
                            {"log_probs.npy": {"array": lp["pixelcnn"]}}),
             "samples": _Result({}, sample_metrics, {"samples.npz": {"samples": samples}}),
             "inversion": _Result({}, {"train_seconds": 60.0})}},
         "families": {"vae": {layer: {
             "model": _Result({}, {"train_seconds": 60.0}),
             "evaluation": _Result({"n_test": n, "n_images": 4, "n_samples": 3},
                                   dict(sample_metrics, bound_nats=lp["vae"].mean(), bound_stderr=1.0, diversity=0.3),
                                   {"log_probs.npy": {"array": lp["vae"]},
                                    "samples.npz": {"diversity": np.full(4, 0.3)}})}}},
         "supervised_vae": _Result({}, dict(test_accuracy=0.95, elbo_nats=-90.0, elbo_stderr=1.0)),
         "neighbours": {layer: _Result({}, {"nn1": 0.2})}}
    if replicate_nats:
        R["replicates"] = {layer: {
            "pixelcnn": {s: _Result({}, {"nats": v}) for s, v in replicate_nats["pixelcnn"].items()},
            "vae": {s: _Result({}, {"bound_nats": v}) for s, v in replicate_nats["vae"].items()}}}
    return R, lp


def test_the_bound_difference_carries_the_seed_spread_of_both_families_when_replicates_exist():
    R, lp = _results(None)
    d, se = paired_difference(lp["pixelcnn"], lp["vae"])
    alone = IR.inverters_summary(R)
    assert alone.tightest["fc3"].value == pytest.approx(d)
    assert alone.tightest["fc3"].noise == pytest.approx(se)  # one seed each: the test-set s.e. alone
    assert alone.seed_spread[("vae", "fc3")] == SeedSpread(0.0, 1)
    assert "one seed per family" in IR.inverter_claims(alone)[0].criterion

    p0, v0 = lp["pixelcnn"].mean(), lp["vae"].mean()
    R, _ = _results({"pixelcnn": {1: p0 + 6.0}, "vae": {1: v0 - 8.0, 2: v0 + 8.0}})
    s = IR.inverters_summary(R)
    sd_p, sd_v = np.std([p0, p0 + 6.0], ddof=1), np.std([v0, v0 - 8.0, v0 + 8.0], ddof=1)
    assert s.seed_spread[("pixelcnn", "fc3")] == SeedSpread(pytest.approx(sd_p), 2)
    assert s.seed_spread[("vae", "fc3")].n_models == 3
    assert s.tightest["fc3"].noise == pytest.approx(np.sqrt(se**2 + sd_p**2 + sd_v**2))
    assert "seed spread over 2 models" in IR.inverter_claims(s)[0].criterion
