"""Parameter sets: read a YAML file of ``params/``, merge overrides, validate every key against the schema.

A parameter set is nested by book section (``background``, ``layers``, ``architectures``, ``dynamics``,
``estimators``); each section's settings are a frozen dataclass declared beside that section's stages
(``inversion.pipeline.layers.LayersSettings``, ...), and ``inversion.pipeline.plans.SECTIONS`` lists them.
``load_params`` checks the whole set at load time, so a typo never turns into a silently different run:

    params/smoke.yaml: layers.inversion.stpes: unknown key 'stpes' (did you mean 'steps'?); valid keys ...
    override: layers.layers[1]: 'fc4' is not a layer of the conv classifier (conv1, conv2, fc3, logits)

Errors name the file, or ``override`` when the offending key came from the overrides. Sections may carry
``per_dataset: {svhn: {...}}``, ``per_layer: {conv1: {...}}`` / ``{"svhn/conv1": {...}}`` (layers,
dynamics) and ``per_arch`` (architectures): partial settings merged into the section for one dataset,
layer or network; each merged combination is validated at load too, and ``Params.section(name, dataset,
layer)`` returns it.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from inversion.pipeline.schema import ConfigError, closest, validate

REPO = Path(__file__).resolve().parents[3]
PARAMS_DIR = REPO / "params"
TOP_LEVEL = ("name", "device", "scope")  # scope: one paragraph, what this set can and cannot test

__all__ = ["Params", "ConfigError", "load_params", "deep_merge", "known_sets", "PARAMS_DIR", "REPO"]


def deep_merge(base: Mapping, override: Mapping | None) -> dict:
    """``base`` updated by ``override``, recursively for nested dicts (lists and scalars are replaced)."""
    out = copy.deepcopy(dict(base))
    for k, v in (override or {}).items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_yaml(path: Path) -> dict:
    try:
        import yaml
    except ImportError:  # a machine without PyYAML: a JSON twin of the file works there too
        twin = path.with_suffix(".json")
        if twin.exists():
            return json.loads(twin.read_text())
        raise ImportError(f"reading {path} needs PyYAML (pip install pyyaml), or a JSON copy at {twin} "
                          "(python -m inversion.pipeline export-json --params ... writes one)") from None
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: a parameter set is a mapping of sections, got {type(data).__name__}")
    return data


def known_sets() -> list[str]:
    return sorted(p.stem for p in PARAMS_DIR.glob("*.yaml"))


@dataclass
class Params:
    """A validated parameter set: its name (the cache folder), where it came from, and its content.

    ``data`` is the merged plain content; ``section(name, dataset, layer)`` the typed settings of a section
    with its per-dataset / per-layer overrides applied (validated when the set was loaded).
    """

    name: str
    data: dict
    source: str = ""
    schema: Mapping[str, type] = field(default_factory=dict, repr=False)
    _sections: dict = field(default_factory=dict, repr=False)

    def __contains__(self, section: str) -> bool:
        return section in self.data

    def section(self, name: str, dataset: str | None = None, layer: str | None = None, arch: str | None = None):
        """The typed settings of section ``name``, merged for one dataset / layer / network when given."""
        key = (name, dataset, layer, arch)
        if key not in self._sections:
            if name not in self.schema:
                raise KeyError(f"no section {name!r} in the schema; sections: {', '.join(self.schema)}")
            if name not in self.data:
                raise KeyError(f"parameter set {self.name!r} has no section {name!r} "
                               f"(it has {', '.join(k for k in self.data if k in self.schema)})")
            where = name + "".join(f"[{x}]" for x in (dataset, layer, arch) if x is not None)
            self._sections[key] = validate(self.schema[name], merged_section(self.data[name], dataset, layer, arch),
                                           where)
        return self._sections[key]

    @property
    def scope(self) -> str:
        """What the set can and cannot test, as its file says (the book's introduction opens with it)."""
        return str(self.data.get("scope", "")).strip()

    @property
    def device(self) -> str:
        d = self.data.get("device", "auto")
        return ("cuda" if torch.cuda.is_available() else "cpu") if d == "auto" else d


def merged_section(sec: Mapping, dataset: str | None = None, layer: str | None = None,
                   arch: str | None = None) -> dict:
    """One section's settings with its ``per_dataset`` / ``per_layer`` / ``per_arch`` entries applied.

    ``per_dataset: {svhn: {...}}`` applies to every layer of a dataset, ``per_layer: {"svhn/conv1": {...}}``
    to one layer of one dataset, ``per_layer: {conv1: {...}}`` to one layer of every dataset, ``per_arch:
    {fc: {...}}`` to one network of §5.2.
    """
    out = {k: v for k, v in sec.items() if k not in ("per_dataset", "per_layer", "per_arch")}
    if dataset is not None:
        out = deep_merge(out, (sec.get("per_dataset") or {}).get(dataset))
    if layer is not None:
        per_layer = sec.get("per_layer") or {}
        out = deep_merge(out, per_layer.get(layer))
        if dataset is not None:
            out = deep_merge(out, per_layer.get(f"{dataset}/{layer}"))
    if arch is not None:
        out = deep_merge(out, (sec.get("per_arch") or {}).get(arch))
    return out


def _check(data: Mapping, schema: Mapping[str, type], origin: str) -> None:
    """Validate every section of ``data`` and every per-dataset / per-layer / per-arch combination."""
    unknown = [k for k in data if k not in schema and k not in TOP_LEVEL]
    if unknown:
        k = unknown[0]
        raise ConfigError(f"{origin}: {k}: unknown section or key {k!r}{closest(k, [*schema, *TOP_LEVEL])}; "
                          f"valid: {', '.join([*TOP_LEVEL, *schema])}")
    for key in ("name", "scope"):
        if not isinstance(data.get(key, ""), str):
            raise ConfigError(f"{origin}: {key}: expected a string, got {data[key]!r}")
    if data.get("device", "auto") not in ("auto", "cpu", "cuda") and not str(data.get("device")).startswith("cuda:"):
        raise ConfigError(f"{origin}: device: {data['device']!r} is not one of auto, cpu, cuda, cuda:N")
    for name, cls in schema.items():
        if name not in data:
            continue
        sec = data[name]
        if not isinstance(sec, Mapping):
            raise ConfigError(f"{origin}: {name}: expected a mapping of settings, got {sec!r}")
        for entry in ("per_dataset", "per_layer", "per_arch"):
            if sec.get(entry) is not None and not isinstance(sec[entry], Mapping):
                raise ConfigError(f"{origin}: {name}.{entry}: expected a mapping, got {sec[entry]!r}")
        try:
            base = validate(cls, merged_section(sec), name)
            combos = base.combinations(sec) if hasattr(base, "combinations") else ()
        except ConfigError as e:
            raise ConfigError(f"{origin}: {e}" if str(e).startswith(name) else f"{origin}: {name}.{e}") from None
        for dataset, layer, arch in combos:
            where = name + "".join(f"[{x}]" for x in (dataset, layer, arch) if x is not None)
            try:
                validate(cls, merged_section(sec, dataset, layer, arch), where)
            except ConfigError as e:
                raise ConfigError(f"{origin}: {e}") from None


def load_params(spec: str | os.PathLike | Params = "quick", overrides: Mapping | None = None,
                schema: Mapping[str, type] | None = None) -> Params:
    """A parameter set by name (``params/<name>.yaml``) or path, deep-merged with ``overrides``, validated.

    ``schema`` maps section names to their settings dataclasses (``inversion.pipeline.plans.SECTIONS``; the
    public ``inversion.pipeline.load_params`` passes it). The file is checked on its own first, so an error
    names the file when the file is wrong and ``override`` when only the overrides make it so.
    """
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ConfigError(f"override: expected a mapping of sections, got {overrides!r}")
    if isinstance(spec, Params):
        schema = schema if schema is not None else spec.schema
        source, data = spec.source, spec.data
    else:
        path = Path(spec)
        if not path.suffix:
            path = PARAMS_DIR / f"{spec}.yaml"
        if not path.exists():
            raise ConfigError(f"no parameter set {str(spec)!r} (looked for {path}){closest(str(spec), known_sets())}; "
                              f"known sets: {', '.join(known_sets())}, or give a path to a YAML file")
        source = str(path)
        data = _read_yaml(path)
        shown = os.path.relpath(path, REPO) if path.resolve().is_relative_to(REPO) else str(path)
        _check(data, schema or {}, shown)
    merged = deep_merge(data, overrides)
    if overrides:
        _check(merged, schema or {}, "override")
    name = merged.get("name") or Path(source).stem
    return Params(name=name, data=merged, source=source, schema=dict(schema or {}))
