"""§5.3, training dynamics: the NCE of each layer along the classifier's training, regular vs overfitted.

One classifier per regime is trained without early stopping and snapshotted after a log-spaced number of
updates (the ``snapshot`` stage makes each snapshot a classifier result of its own); every layer of every
snapshot gets an inversion model and its NCE (the §5.1 stages), and the last regular snapshot gets
``replicate_seeds`` more inversion models per layer to measure the seed-to-seed spread. With
``paired_seeds`` every snapshot of every regime gets them: the models a claim compares then share each
seed (initialisation, batch order, dropout masks), and each seed gives one paired difference.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field

from inversion.models.classifier import accuracy, load_classifier as load_classifier_dir
from inversion.pipeline.cache import Context, ref, stage
from inversion.pipeline.common import first, load_split
from inversion.pipeline.layers import CLASSIFIER, NCE, ClassifierSettings, InversionSettings, check_dataset, \
    check_layers, inversion_ref, replicate_nces, unconditional_nce_ref
from inversion.pipeline.params import Params
from inversion.pipeline.schema import ConfigError, to_plain, validate

__all__ = ["SNAPSHOT", "DynamicsSettings", "dynamics_plan"]


@dataclass(frozen=True, kw_only=True)
class SnapshotConfig:
    dataset: str
    step: int  # the classifier after exactly this many updates
    n_eval: int = 5000  # at most this many of its training images for the training accuracy

    def __post_init__(self):
        check_dataset(self.dataset)
        if self.step < 0 or self.n_eval < 1:
            raise ValueError(f"step must be >= 0 and n_eval >= 1, got {self.step} and {self.n_eval}")


@stage("snapshot", "1", SnapshotConfig, deps=("classifier",), checkpoints=("model.pt",))
def snapshot(ctx: Context) -> dict:
    """The classifier as it was after exactly ``step`` updates (§5.3), as a classifier result of its own.

    Stages that consume a classifier (inversion, nce, decoder, samples, estimators) take a snapshot in its
    place. Its metrics: test accuracy, and accuracy on (up to ``n_eval`` of) the images it was trained on, so
    the chapter can show the generalisation gap of the overfitted network next to its NCE.
    """
    c = ctx.config
    name = f"step_{c.step}.pt"
    clf_res = ctx.dep("classifier", need=(name,))
    if clf_res.config["dataset"] != c.dataset:
        raise ValueError(f"snapshot of a {clf_res.config['dataset']} classifier asked for dataset {c.dataset!r}")
    shutil.copy(clf_res.path(name), ctx.out / "model.pt")
    shutil.copy(clf_res.path("config.json"), ctx.out / "config.json")
    clf = load_classifier_dir(ctx.out, "model.pt", device=ctx.device).eval()
    cc = clf_res.config
    n_fit = cc["overfit_n"] or cc["n_train"]
    x_tr, y_tr = (first(t, n_fit) for t in load_split(c.dataset, "train"))
    x_tr, y_tr = x_tr[: c.n_eval], y_tr[: c.n_eval]
    test_acc = accuracy(clf, *load_split(c.dataset, "test"), device=ctx.device)
    train_acc = accuracy(clf, x_tr, y_tr, device=ctx.device)
    ctx.log(f"step {c.step}: test accuracy {test_acc:.4f}, train accuracy {train_acc:.4f}")
    return dict(step=c.step, test_accuracy=test_acc, train_accuracy=train_acc, n_train_eval=len(x_tr))


SNAPSHOT = snapshot
STAGES = (SNAPSHOT,)


@dataclass(frozen=True)
class DynamicsEvaluation:
    n_test_nce: int = 10000

    def __post_init__(self):
        if self.n_test_nce < 2:
            raise ValueError(f"n_test_nce must be >= 2, got {self.n_test_nce}")


@dataclass(frozen=True, kw_only=True)
class DynamicsSettings:
    """The ``dynamics`` section (§5.3). The classifier settings exclude ``steps``, ``snapshot_steps`` and
    ``patience``: the plan trains to the last of ``steps`` without early stopping, snapshotting at each."""

    dataset: str = "mnist"
    steps: tuple[int, ...]  # snapshots after these many updates (the paper: 0, 1e2, 1e3, 1e4, 1e5)
    layers: tuple[str, ...]
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    regimes: dict[str, dict] = field(default_factory=lambda: {"regular": {}})  # {name: classifier overrides}
    inversion: InversionSettings = field(default_factory=InversionSettings)
    evaluation: DynamicsEvaluation = field(default_factory=DynamicsEvaluation)
    replicate_seeds: tuple[int, ...] = ()
    paired_seeds: bool = False  # the replicate seeds at every snapshot and regime (common random numbers)
    per_layer: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self):
        check_dataset(self.dataset)
        if not self.steps or min(self.steps) < 0:
            raise ConfigError(f"steps: give snapshot step counts >= 0, got {list(self.steps)}")
        check_layers(self.layers, self.classifier.arch, "layers")
        if self.paired_seeds and not self.replicate_seeds:
            raise ConfigError("paired_seeds: true needs replicate_seeds (the seeds every compared model is also "
                              "trained with), e.g. replicate_seeds: [1, 2]")
        if self.inversion.seed in self.replicate_seeds:
            raise ConfigError(f"replicate_seeds {list(self.replicate_seeds)}: {self.inversion.seed} is the main "
                              "inversion models' seed (inversion.seed); a replicate needs a seed of its own")
        if not self.regimes:
            raise ConfigError("regimes: give at least one regime (e.g. regular: {})")
        for name, overrides in self.regimes.items():
            for key in ("steps", "snapshot_steps", "patience"):
                if key in (overrides or {}):
                    raise ConfigError(f"regimes.{name}.{key}: set by the plan (train to the last of `steps`, "
                                      "snapshot at each, no early stopping); remove it")
            self.regime_classifier(name)
        for key in ("steps", "snapshot_steps", "patience"):
            if getattr(self.classifier, key) != getattr(ClassifierSettings, key):
                raise ConfigError(f"classifier.{key}: set by the plan (train to the last of `steps`, snapshot "
                                  "at each, no early stopping); remove it")

    def regime_classifier(self, regime: str) -> ClassifierSettings:
        """The classifier settings of one regime (its overrides applied), validated."""
        merged = {**to_plain(self.classifier), **(self.regimes[regime] or {})}
        return validate(ClassifierSettings, merged, f"regimes.{regime}")

    def combinations(self, raw) -> list[tuple]:
        out = []
        for layer in raw.get("per_layer") or {}:
            check_layers((layer,), self.classifier.arch, f"per_layer.{layer}")
            out.append((None, layer, None))
        return out


def dynamics_plan(P: Params) -> dict:
    """Refs of §5.3: for each regime (regular, overfit) one classifier trained without early stopping and
    snapshotted at ``steps``; per snapshot and layer an inversion model and its NCE.

    Returns {"steps": [...], "layers": [...], "regimes": {regime: {"classifier": ref,
    "snapshots": {step: ref}, "nce": {layer: {step: ref}}, "inversion": {layer: {step: ref}}}},
    "replicates": {layer: {seed: nce ref}}, "paired": {regime: {layer: {step: {seed: nce ref}}}},
    "unconditional_nce": {layer: ref} (warm-started layers only: the NCE of the p(x) they start from)}; the
    replicates (``replicate_seeds``) are inversion models of the last snapshot of the first regime that
    differ only in their seed; "paired" (empty unless ``paired_seeds``) has them at every snapshot.
    """
    S = P.section("dynamics")
    dataset, steps, n_test = S.dataset, sorted(int(s) for s in S.steps), S.evaluation.n_test_nce
    out = {"steps": steps, "layers": list(S.layers), "regimes": {}}
    for regime in S.regimes:
        cfg = asdict(S.regime_classifier(regime))
        clf = ref(CLASSIFIER, {**cfg, "dataset": dataset, "steps": max(steps), "snapshot_steps": steps,
                               "patience": 0})
        R = {"classifier": clf, "snapshots": {}, "inversion": {}, "nce": {}}
        for step in steps:
            R["snapshots"][step] = ref(SNAPSHOT, {"dataset": dataset, "step": step}, classifier=clf)
        # Before its first update a classifier is its initialisation, which depends only on the keys below:
        # regimes that share them share the step-0 network, so its inversion models are trained once.
        init = {k: clf.config[k] for k in ("dataset", "arch", "n_filters", "fc_units", "seed")}
        for other in out["regimes"].values():
            o = other["classifier"].config
            if 0 in steps and all(o[k] == v for k, v in init.items()):
                R["snapshots"][0] = other["snapshots"][0]
                break
        for layer in S.layers:
            L = P.section("dynamics", layer=layer)
            R["inversion"][layer], R["nce"][layer] = {}, {}
            for step, snap in R["snapshots"].items():
                inv = inversion_ref(L.inversion, layer, snap, dataset)
                R["inversion"][layer][step] = inv
                R["nce"][layer][step] = ref(NCE, {"n_test": n_test}, classifier=snap, inversion=inv)
        out["regimes"][regime] = R
    first_regime = next(iter(out["regimes"].values()))
    out["replicates"] = {layer: replicate_nces(S.replicate_seeds, n_test, first_regime["inversion"][layer][steps[-1]])
                         for layer in S.layers}
    out["unconditional_nce"] = {layer: u for layer in S.layers if (u := unconditional_nce_ref(
        P.section("dynamics", layer=layer).inversion, dataset, n_test)) is not None}
    out["paired"] = {regime: {layer: {step: replicate_nces(S.replicate_seeds, n_test, inv)
                                      for step, inv in R["inversion"][layer].items()}
                              for layer in S.layers}
                     for regime, R in out["regimes"].items()} if S.paired_seeds else {}
    return out
