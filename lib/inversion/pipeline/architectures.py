"""§5.2, comparing architectures on affNIST: fully connected vs conv vs conv + global max pooling.

No stages of its own: per network, the §5.1 stages (classifier; for one layer, FC3, the inversion model,
its NCE, seed replicates, the MSE decoder and samples) with the section's settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from inversion.models.classifier import ARCHS
from inversion.pipeline.cache import ref
from inversion.pipeline.layers import CLASSIFIER, DECODER, NCE, SAMPLES, ClassifierSettings, DecoderSettings, \
    FigureSamples, InversionSettings, SamplingSettings, WidgetSettings, check_dataset, check_layers, inversion_ref, \
    replicate_nces, unconditional_nce_ref
from inversion.pipeline.params import Params
from inversion.pipeline.schema import ConfigError, closest

__all__ = ["ArchitecturesSettings", "architectures_plan"]


@dataclass(frozen=True)
class ArchitecturesEvaluation:
    n_test_nce: int = 10000  # test images for the NCE and the decoder's test MSE
    n_images: int = 100  # test images sampled (Fig. 4, the geometry table)
    n_samples: int = 10  # samples per test image

    def __post_init__(self):
        if self.n_test_nce < 2 or self.n_images < 1 or self.n_samples < 1:
            raise ValueError(f"need n_test_nce >= 2, n_images >= 1 and n_samples >= 1, got {self}")


@dataclass(frozen=True, kw_only=True)
class ArchitecturesSettings:
    """The ``architectures`` section (§5.2). ``classifier.arch`` is set per network from ``archs``."""

    dataset: str = "affnist"
    archs: tuple[str, ...] = ARCHS
    layer: str = "fc3"  # the layer inverted in every network (the paper: FC3)
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    inversion: InversionSettings = field(default_factory=InversionSettings)
    decoder: DecoderSettings = field(default_factory=DecoderSettings)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    evaluation: ArchitecturesEvaluation = field(default_factory=ArchitecturesEvaluation)
    replicate_seeds: tuple[int, ...] = ()
    figure4: FigureSamples = field(default_factory=lambda: FigureSamples(n_images=6, n_samples=4))
    widget: WidgetSettings = field(default_factory=WidgetSettings)
    per_arch: dict[str, dict] = field(default_factory=dict)  # {arch: partial settings}

    def __post_init__(self):
        check_dataset(self.dataset)
        if self.classifier.arch != ClassifierSettings.arch:
            raise ConfigError("classifier.arch: set per network from `archs`; remove it")
        if not self.archs:
            raise ConfigError(f"archs: give at least one of {', '.join(ARCHS)}")
        for i, a in enumerate(self.archs):
            if a not in ARCHS:
                raise ConfigError(f"archs[{i}]: unknown network {a!r}{closest(a, ARCHS)}; networks: {', '.join(ARCHS)}")
            check_layers((self.layer,), a, "layer")

    def combinations(self, raw) -> list[tuple]:
        out = []
        for a in raw.get("per_arch") or {}:
            if a not in self.archs:
                raise ConfigError(f"per_arch.{a}: {a!r} is not one of archs ({', '.join(self.archs)})")
            out.append((None, None, a))
        return out


def architectures_plan(P: Params) -> dict:
    """Refs of §5.2: per architecture (fc, conv, conv_gmp) on affNIST, the classifier and, for one layer
    (FC3), the inversion model, its NCE, its seed replicates, the MSE decoder and samples (Fig. 4, the
    geometry table). Returns {arch: {"classifier", "inversion", "nce", "replicates", "decoder", "samples"}}."""
    S = P.section("architectures")
    out = {}
    for arch in S.archs:
        A = P.section("architectures", arch=arch)
        ev, layer = A.evaluation, A.layer
        clf = ref(CLASSIFIER, {**asdict(A.classifier), "dataset": A.dataset, "arch": arch})
        inv = inversion_ref(A.inversion, layer, clf, A.dataset)
        out[arch] = {
            "classifier": clf,
            "inversion": inv,
            "nce": ref(NCE, {"n_test": ev.n_test_nce}, classifier=clf, inversion=inv),
            "replicates": replicate_nces(A.replicate_seeds, ev.n_test_nce, inv),
            **({"unconditional_nce": u} if (u := unconditional_nce_ref(A.inversion, A.dataset, ev.n_test_nce)) else {}),
            "decoder": ref(DECODER, {**asdict(A.decoder), "layer": layer, "n_test": ev.n_test_nce,
                                     "n_show": ev.n_images}, classifier=clf),
            "samples": ref(SAMPLES, {"n_images": ev.n_images, "n_samples": ev.n_samples, **asdict(A.sampling)},
                           classifier=clf, inversion=inv),
        }
    return out
