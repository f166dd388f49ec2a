"""What the paper reports: every number and statement of Nash, Kushman & Williams (2019) that the book
compares a run with, each with the section, table or figure it comes from.

The chapters and the report modules (``inversion.reports``) read the paper from here and nowhere else, so a
number of the paper appears once in the code and is glued into the prose, never typed into it. This module
imports nothing of the project.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


def _frozen(d: dict) -> Mapping:
    return MappingProxyType(d)


@dataclass(frozen=True)
class Statement:
    """A statement of the paper as a claims table shows it (a quote in quotation marks, or a paraphrase),
    and where it stands."""

    text: str
    source: str

    def __str__(self) -> str:
        return self.text


# ---------------------------------------------------------------------------------------------------------
# Appendix A: the models and how long they train
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Training:
    """How the paper's models are sized and trained (Appendix A)."""

    classifier_max_steps: int  # "a maximum of 250000 steps, and ... early stopping" (image classifiers)
    inversion_filters_mnist: int  # "64 filters in the convolutional layers for MNIST"
    inversion_resnets: int  # "three residual layers in each block"
    inversion_max_steps: int  # "a maximum of 250000 weight updates"
    source: str


TRAINING = Training(classifier_max_steps=250_000, inversion_filters_mnist=64, inversion_resnets=3,
                    inversion_max_steps=250_000, source="Appendix A")


# ---------------------------------------------------------------------------------------------------------
# §5.1: inverting the layers of a classifier
# ---------------------------------------------------------------------------------------------------------

# "achieving test accuracies of 99.6%, 93.3% and 81.6% respectively" (§5.1, first paragraph)
CLASSIFIER_ACCURACY: Mapping[str, float] = _frozen({"mnist": 0.996, "svhn": 0.933, "cifar10": 0.816})
CLASSIFIER_ACCURACY_SOURCE = "§5.1"


@dataclass(frozen=True)
class Table1Distances:
    """One layer's column of Table 1: mean L1 distance per unit in representation space between a test
    input and (nn1) its nearest training image, (im_s) one inversion sample, (im_nn) the closest of
    ``Table1.im_nn_of`` samples."""

    nn1: float
    im_s: float
    im_nn: float


@dataclass(frozen=True)
class Table1:
    layers: tuple[str, ...]  # the table's columns
    n_test_images: int  # "For 500 test samples from each dataset"
    im_nn_of: int  # "the closest of 10 inversion model samples"
    distances: Mapping[str, Mapping[str, Table1Distances]]  # dataset -> layer -> distances
    source: str


def _table1_dataset(nn1, im_s, im_nn) -> Mapping[str, Table1Distances]:
    return _frozen({layer: Table1Distances(a, b, c)
                    for layer, a, b, c in zip(("conv1", "conv2", "fc3"), nn1, im_s, im_nn)})


TABLE1 = Table1(
    layers=("conv1", "conv2", "fc3"), n_test_images=500, im_nn_of=10, source="Table 1 (§5.1)",
    distances=_frozen({
        "mnist": _table1_dataset(nn1=(1.25e-2, 4.95e-2, 1.22e-1), im_s=(7.68e-4, 1.65e-2, 1.35e-1),
                                 im_nn=(6.29e-4, 1.40e-2, 9.52e-2)),
        "svhn": _table1_dataset(nn1=(5.35e-2, 6.74e-2, 2.92e-1), im_s=(1.02e-3, 2.80e-2, 3.22e-1),
                                im_nn=(9.40e-4, 2.43e-2, 2.50e-1)),
        "cifar10": _table1_dataset(nn1=(4.11e-2, 9.56e-2, 5.28e-1), im_s=(4.02e-3, 6.43e-2, 7.39e-1),
                                   im_nn=(3.47e-3, 5.73e-2, 5.79e-1)),
    }))


@dataclass(frozen=True)
class Figure2Setting:
    """Fig. 2: "the 6 closest inversion model samples from a collection of 1024" beside "the 6 nearest
    training examples"."""

    n_samples: int
    top_k: int
    source: str


FIGURE2 = Figure2Setting(n_samples=1024, top_k=6, source="§5.1, Fig. 2")


# ---------------------------------------------------------------------------------------------------------
# §5.2: comparing architectures on affNIST
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkResult:
    """One §5.2 network: its affNIST test accuracy and the NCE of its FC3 (nats per image)."""

    accuracy: float
    fc3_nce: float


# "global pooling performs best, achieving 98.9% accuracy compared to 98.7% for the version without global
# pooling and 95.0% for the fully connected network"; "a mutual information lower bound of −715.17 nats.
# For [the networks with and without global] pooling we obtain −704.01 and −699.55 nats respectively" (§5.2)
ARCHITECTURES: Mapping[str, NetworkResult] = _frozen({
    "fc": NetworkResult(accuracy=0.950, fc3_nce=-715.17),
    "conv": NetworkResult(accuracy=0.987, fc3_nce=-699.55),
    "conv_gmp": NetworkResult(accuracy=0.989, fc3_nce=-704.01),
})
ARCHITECTURES_SOURCE = "§5.2"


def pooling_loss() -> float:
    """The information global max pooling discards, by the paper's NCEs: "an estimated ∼ 4.5 nats" (§5.2)."""
    return ARCHITECTURES["conv"].fc3_nce - ARCHITECTURES["conv_gmp"].fc3_nce


# ---------------------------------------------------------------------------------------------------------
# §5.3: training dynamics
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DynamicsSetting:
    snapshot_steps: tuple[int, ...]  # "representations established after 0, 10², 10³, 10⁴ and 10⁵ weight updates"
    overfit_train_examples: int  # "an overfitted network by using only 100 training examples"
    source: str


DYNAMICS = DynamicsSetting(snapshot_steps=(0, 100, 1_000, 10_000, 100_000), overfit_train_examples=100,
                           source="§5.3")


# ---------------------------------------------------------------------------------------------------------
# §3.3, §4.1, §5.3 and Appendix B: on the other estimators of mutual information
# ---------------------------------------------------------------------------------------------------------

ESTIMATOR_STATEMENTS: Mapping[str, Statement] = _frozen({
    "binning": Statement("\"the choice [of binning] can significantly impact the mutual information estimates\" "
                         "(App. B, after Saxe et al.)", "Appendix B"),
    "kde": Statement("\"the performance of kernel density estimates deteriorate[s] significantly in higher "
                     "dimensions\" (§3.3)", "§3.3"),
    "kraskov": Statement("\"this non-parametric estimate may be problematic for analysis of network layers with "
                         "very many units\" (App. B)", "Appendix B"),
    "nce": Statement("the NCE is a test-set average with a standard error (§4.1); it has no bin width or noise "
                     "scale", "§4.1"),
    "dynamics": Statement("Saxe et al.'s missing compression \"can potentially be explained by their use of "
                          "non-parametric methods\" (§5.3)", "§5.3"),
})
