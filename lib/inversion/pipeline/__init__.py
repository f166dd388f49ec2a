"""The book's pipeline: parameter set -> plan -> stages -> cache -> chapter.

    from inversion import pipeline
    P = pipeline.load_params("quick", overrides)     # validated (params.py, against plans.SECTIONS)
    cache = pipeline.Cache(P)                         # content-addressed results under cache/<set>/
    R = pipeline.layers_results(P, "mnist", cache)    # §5.1 results, computed where missing

Modules, imported one way (each only imports those above it):

    schema.py        checking plain data against a config dataclass, with messages that name the key
    params.py        parameter sets: read, merge overrides, validate every key
    cache.py         Stage / @stage, Ref / ref, Result, Context, Cache (atomic, locked, resumable), pack
    common.py        what several stages share: splits, loading a trained model, layer activations
    background.py    the worked example (toy_bound stage)                       Background chapter
    layers.py        classifier, inversion, nce, decoder, samples, neighbours   §5.1 (reused by §5.2, §5.3)
    architectures.py the plan of §5.2                                           §5.2
    dynamics.py      snapshot stage, the plan of §5.3                           §5.3
    estimators.py    estimates, estimator_sweep stages                          Appendix B
    inverters.py     flow, VAE, GAN, supervised VAE stages and their evaluation Other inverters
    plans.py         the explicit registry (STAGES, SECTIONS), plan(), each chapter's results
    engine.py        a plan's stages as Dask tasks (local workers or a running cluster)
    __main__.py      the command line: python -m inversion.pipeline run|list|show|stages|pack|unpack
"""

from inversion.pipeline.cache import Cache, Ref, Result, StageMissing
from inversion.pipeline.params import PARAMS_DIR, Params
from inversion.pipeline.plans import SECTIONS, STAGES, DatasetAvailability, architectures_results, available, \
    background_results, dynamics_results, estimators_results, inverter_datasets, inverters_results, layers_datasets, \
    layers_results, load_params, plan
from inversion.pipeline.schema import ConfigError

__all__ = ["Cache", "Ref", "Result", "StageMissing", "PARAMS_DIR", "Params", "SECTIONS", "STAGES",
           "DatasetAvailability", "available", "layers_datasets", "load_params", "plan", "background_results",
           "layers_results", "architectures_results", "dynamics_results", "estimators_results", "inverters_results",
           "inverter_datasets", "ConfigError"]
