"""The explicit registry: every stage and every book section, and the plan of a whole parameter set.

Nothing registers itself by being imported: a stage exists because it is listed in ``STAGES`` below, a
section because it is listed in ``SECTIONS``. To add a stage, declare it with ``@stage`` in the module of
the chapter that needs it and add it to that module's ``STAGES``; to add a section, write its settings
dataclass and plan function and list them here (see the README's "Adding a stage or a chapter").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from inversion import data
from inversion.pipeline import architectures, background, dynamics, estimators, inverters, layers
from inversion.pipeline.cache import Cache, Stage, iter_refs
from inversion.pipeline.params import Params
from inversion.pipeline.params import load_params as _load_params
from inversion.pipeline.schema import ConfigError, closest

__all__ = ["STAGES", "SECTIONS", "load_params", "plan", "selectors", "available", "layers_datasets",
           "DatasetAvailability", "background_results", "layers_results", "architectures_results",
           "dynamics_results", "estimators_results", "inverters_results", "inverter_datasets", "StageCost",
           "plan_costs", "stage_seconds"]

STAGES: dict[str, Stage] = {s.name: s for s in (*background.STAGES, *layers.STAGES, *dynamics.STAGES,
                                                 *estimators.STAGES, *inverters.STAGES)}

# Book sections that have stages, in book order, with the dataclass of their settings.
SECTIONS: dict[str, type] = {
    "background": background.BackgroundSettings,
    "layers": layers.LayersSettings,
    "architectures": architectures.ArchitecturesSettings,
    "dynamics": dynamics.DynamicsSettings,
    "estimators": estimators.EstimatorsSettings,
    "inverters": inverters.InvertersSettings,
}


def load_params(spec="quick", overrides: Mapping | None = None) -> Params:
    """A parameter set (``params/<name>.yaml`` or a path) with ``overrides`` merged, validated against
    ``SECTIONS``: an unknown key, a wrong type or an out-of-range value raises ConfigError naming it."""
    P = _load_params(spec, overrides, SECTIONS)
    if "estimators" in P and "dynamics" not in P:
        raise ConfigError(f"{P.source or P.name}: estimators: needs a dynamics section (it runs on its snapshots)")
    try:
        if "estimators" in P:  # the sweep's regime and step must name a dynamics regime and checkpoint
            estimators.estimators_plan(P)
        if "inverters" in P:  # its datasets and layers must be §5.1's
            for d in inverters.inverter_datasets(P):
                inverters.inverters_plan(P, d)
    except ConfigError as e:
        raise ConfigError(f"{'override' if overrides else P.source or P.name}: {e}") from None
    return P


@dataclass
class DatasetAvailability:
    """The §5.1 datasets of a parameter set that can be loaded here, and why the others cannot."""

    available: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # dataset -> one-line reason


def available(dataset: str) -> tuple[bool, str]:
    """Whether a dataset can be loaded here, and why not (SVHN and CIFAR-10 need a download)."""
    try:
        data.fetch(dataset)
        return True, ""
    except data.DatasetUnavailable as e:
        return False, str(e).splitlines()[0]


def layers_datasets(P: Params) -> DatasetAvailability:
    out = DatasetAvailability()
    for ds in P.section("layers").datasets:
        ok, why = available(ds)
        if ok:
            out.available.append(ds)
        else:
            out.skipped[ds] = why
    return out


def selectors(P: Params) -> list[str]:
    """The valid ``--only`` selectors of a parameter set: every section it has, and layers:<dataset>."""
    out = [s for s in SECTIONS if s in P]
    if "layers" in P:
        out += [f"layers:{d}" for d in P.section("layers").datasets]
    if "inverters" in P:
        out += [f"inverters:{d}" for d in inverters.inverter_datasets(P)]
    return out


def plan(P: Params, only: list[str] | None = None) -> dict:
    """Every stage of a parameter set, nested by section (and dataset), optionally restricted with
    ``only=["layers", "layers:mnist", "background"]``; an unknown selector raises ConfigError."""
    valid = selectors(P)
    for o in only or ():
        if o not in valid:
            raise ConfigError(f"--only {o!r}: not a section of parameter set {P.name!r}{closest(o, valid)}; "
                              f"valid: {', '.join(valid)}")

    def wanted(section, dataset=None):
        return not only or section in only or (dataset is not None and f"{section}:{dataset}" in only)

    out = {}
    if "background" in P and wanted("background"):
        out["background"] = background.background_plan(P)
    if "layers" in P:
        ds = [d for d in P.section("layers").datasets if wanted("layers", d)]
        if ds:
            out["layers"] = {d: layers.layers_plan(P, d) for d in ds}
    if "architectures" in P and wanted("architectures"):
        out["architectures"] = architectures.architectures_plan(P)
    if "dynamics" in P and wanted("dynamics"):
        out["dynamics"] = dynamics.dynamics_plan(P)
    if "estimators" in P and wanted("estimators"):
        out["estimators"] = estimators.estimators_plan(P)
    if "inverters" in P:
        ds = [d for d in inverters.inverter_datasets(P) if wanted("inverters", d)]
        if ds:
            out["inverters"] = {d: inverters.inverters_plan(P, d) for d in ds}
    return out


@dataclass(frozen=True)
class StageCost:
    """The stages of one kind that one part of a plan (a section, or ``section:dataset``) needs first."""

    part: str
    stage: str
    n: int  # stages of this kind the part needs and no earlier part did
    cached: int  # of which have a result in the cache
    seconds: float  # the cached ones' own time, from their records (``stage_seconds``; dependencies not included)


def stage_seconds(result) -> float:
    """What one cached stage cost: its wall time, or, for a training resumed over several sessions, its
    training time summed over them when that is larger.

    ``provenance.wall_s`` times the run that wrote the result, so a model trained over three sessions shows
    only the last one's minutes (a 16,000-step §5.2 model: 100 of its 211). Its training loop adds up
    ``metrics.train_seconds`` across sessions (the checkpoint carries it), which leaves out only each earlier
    session's start-up (compile, data)."""
    wall = float(result.provenance.get("wall_s") or 0.0)
    trained = result.metrics.get("train_seconds")
    return max(wall, float(trained)) if isinstance(trained, (int, float)) else wall


def plan_costs(the_plan: Mapping, cache: Cache) -> list[StageCost]:
    """What a plan costs, from the provenance of its cached stages, grouped by part and stage kind.

    A stage two parts need is counted once, in the first part in the plan's (the book's) order, so the
    parts add up to the whole plan. Missing stages are counted but cost nothing here: ``cached < n`` says
    the sum is incomplete. Each stage counts its ``stage_seconds``. Read the times as the machine's at the
    time each stage ran: a stage computed while other work shared the cores counts as slow as it was."""
    parts = []
    for section, sub in the_plan.items():
        if section in ("layers", "inverters"):  # nested by dataset
            parts += [(f"{section}:{dataset}", p) for dataset, p in sub.items()]
        else:
            parts.append((section, sub))
    seen, out = set(), []
    for part, sub in parts:
        kinds: dict[str, list] = {}
        for r in iter_refs(sub):
            if r.dirname in seen:
                continue
            seen.add(r.dirname)
            k = kinds.setdefault(r.stage.name, [0, 0, 0.0])
            k[0] += 1
            if cache.has(r):
                k[1] += 1
                k[2] += stage_seconds(cache.result(r))
        out += [StageCost(part, name, n, cached, seconds) for name, (n, cached, seconds) in kinds.items()]
    return out


# ---- each chapter's results: its plan, materialised (computed where missing, unless compute=False) ----


def background_results(P: Params, cache: Cache) -> dict:
    """The Background chapter's results: {"toy": Result}."""
    return cache.results(background.background_plan(P))


def layers_results(P: Params, dataset: str, cache: Cache) -> dict:
    """The §5.1 results of one dataset: {"classifier", "layers": {layer: {...}}, "figure2"}."""
    return cache.results(layers.layers_plan(P, dataset))


def architectures_results(P: Params, cache: Cache) -> dict:
    """The §5.2 results: {arch: {"classifier", "inversion", "nce", "replicates", "decoder", "samples"}}."""
    return cache.results(architectures.architectures_plan(P))


def dynamics_results(P: Params, cache: Cache) -> dict:
    """The §5.3 results, shaped like ``dynamics_plan`` with results in place of refs."""
    return cache.results(dynamics.dynamics_plan(P))


def estimators_results(P: Params, cache: Cache) -> dict:
    """The appendix's results, shaped like ``estimators_plan`` with results in place of refs."""
    return cache.results(estimators.estimators_plan(P))


def inverter_datasets(P: Params) -> tuple[str, ...]:
    """The datasets of the other-inverters chapter (its own, or §5.1's)."""
    return inverters.inverter_datasets(P)


def inverters_results(P: Params, dataset: str, cache: Cache) -> dict:
    """The other inverters' results of one dataset, shaped like ``inverters_plan``."""
    return cache.results(inverters.inverters_plan(P, dataset))
