"""Sweep grids: a preset or config YAML -> the validated, de-duplicated list of TrialConfigs. No Ray here.

    spec = read_spec(preset_path("smoke"))          # or read_spec(Path("my_sweep.yaml"))
    configs = expand(spec)                          # list[TrialConfig]: validated, unique trial ids

A spec has fixed fields and axes (every axis is optional; see tune/presets/*.yaml):

    base:      {epochs: 120, model: resnet32, ...}   TrialConfig fields shared by every trial
    datasets:  [cifar10, cifar100]
    noise:     [{noise: uniform_any, noise_rate: 0.4}, {noise: flip, noise_rate: 0.2}]   (NOISE_FIELDS)
    methods:   [erm, ebomlc, mlc]
    seeds:     [0, 1, 2]
    rho / xi / delta / k / mixture: [values]         each multiplies only the methods that use it
    options:   [{name: value, ...}, ...]             each dict gives a method only the keys it has

Trials are the product datasets x noise x methods x (each method's own hyper-parameter values) x seeds,
in that order. A hyper-parameter axis multiplies only the methods whose class lists it in
`hyperparameters` (erm and GLC never run "once per rho"), and an `options` dict is cut to the keys in
the method's `options`; an axis value no method of the spec uses is an error, not silently dropped. A
field set by an axis must not also be in `base`; an axis left out takes its value from `base` (else the
TrialConfig default). Each trial is validated (`TrialConfig.validated()`, which fills in the method's
defaults), so two trials that differ only in an unset-vs-default value share a `trial_id()` and are
kept once.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import yaml

from ebomlc.config import ConfigError, TrialConfig
from ebomlc.methods import get_method

PRESETS = Path(__file__).parent / "presets"
HYPERPARAMETERS = ("rho", "xi", "delta", "k", "mixture")
NOISE_FIELDS = ("noise", "noise_rate", "noise_matrix", "human_label_set", "human_label_file")
AXIS_FIELDS = {  # axis -> the TrialConfig fields it sets
    "datasets": ("dataset",), "noise": NOISE_FIELDS, "methods": ("method",), "seeds": ("seed",),
    **{name: (name,) for name in HYPERPARAMETERS}, "options": ("options",),
}
SPEC_KEYS = ("base", *AXIS_FIELDS)


# ---------------------------------------------------------------- reading

def preset_names() -> list[str]:
    """The sweep presets: tune/presets/*.yaml without a `search` section (those are tune/search.py's)."""
    return sorted(path.stem for path in PRESETS.glob("*.yaml") if not _is_search_spec(path))


def preset_path(name: str) -> Path:
    path = PRESETS / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(preset_names())} (or pass --config FILE)")
    if _is_search_spec(path):
        raise ConfigError(f"{name!r} is a search preset: run it with tune/search.py; sweep presets: "
                          f"{', '.join(preset_names())}")
    return path


def _is_search_spec(path: Path) -> bool:
    spec = yaml.safe_load(path.read_text())
    return isinstance(spec, dict) and "search" in spec


def read_spec(path: Path) -> dict[str, Any]:
    """The spec in a YAML file; ConfigError (one line) if it is unreadable or has unknown keys."""
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or " ".join(str(error).split())
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: must be a mapping with keys from {', '.join(SPEC_KEYS)}")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; known keys: {', '.join(SPEC_KEYS)}")
    return spec


# ---------------------------------------------------------------- expanding

def expand(spec: dict[str, Any]) -> list[TrialConfig]:
    """Every trial of the spec, validated, in axis order, each trial_id once (the first occurrence)."""
    base = spec.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"base must be a mapping of TrialConfig fields, got {base!r}")
    for axis, fields in AXIS_FIELDS.items():
        both = [name for name in fields if axis in spec and name in base]
        if both:
            raise ConfigError(f"{both[0]} is set both in base and by the {axis!r} axis; keep one")

    datasets = [{"dataset": name} for name in _axis(spec, "datasets")] or [{}]
    noises = _axis(spec, "noise", of=dict) or [{}]
    for noise in noises:
        extra = sorted(set(noise) - set(NOISE_FIELDS))
        if extra:
            raise ConfigError(f"noise entry {noise} has {extra[0]!r}; a noise entry may set {', '.join(NOISE_FIELDS)}")
    seeds = [{"seed": seed} for seed in _axis(spec, "seeds")] or [{}]
    methods = _axis(spec, "methods") or [base.get("method", TrialConfig.method)]
    classes = {name: _method_class(name) for name in methods}
    _check_every_axis_value_is_used(spec, list(classes.values()))
    variants = {name: method_variants(cls, spec) for name, cls in classes.items()}

    unique: dict[str, TrialConfig] = {}
    for dataset, noise, method in itertools.product(datasets, noises, methods):
        for variant, seed in itertools.product(variants[method], seeds):
            values = {**base, **dataset, **noise, "method": method, **variant, **seed}
            config = TrialConfig.from_dict(values).validated()
            unique.setdefault(config.trial_id(), config)
    return list(unique.values())


def method_variants(method_class, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The method's hyper-parameter settings: the product of the axes it uses (one empty dict if none)."""
    axes = [[(name, value) for value in _axis(spec, name)]
            for name in HYPERPARAMETERS if name in method_class.hyperparameters and name in spec]
    variants = [dict(pairs) for pairs in itertools.product(*axes)]
    option_sets = _axis(spec, "options", of=dict)
    if not option_sets:
        return variants
    own = []  # each options dict cut to the method's own options, each distinct cut once
    for options in option_sets:
        cut = {name: value for name, value in options.items() if name in method_class.options}
        if cut not in own:
            own.append(cut)
    return [{**variant, "options": options} for variant in variants for options in own]


def _check_every_axis_value_is_used(spec: dict[str, Any], method_classes: list) -> None:
    names = ", ".join(cls.name for cls in method_classes)
    for name in HYPERPARAMETERS:
        if name in spec and not any(name in cls.hyperparameters for cls in method_classes):
            raise ConfigError(f"{name} is listed but none of the methods ({names}) uses it")
    for options in _axis(spec, "options", of=dict):
        for name in options:
            if not any(name in cls.options for cls in method_classes):
                raise ConfigError(f"option {name!r} is listed but none of the methods ({names}) has it")


def _axis(spec: dict[str, Any], name: str, of: type | None = None) -> list:
    values = spec.get(name)
    if values is None:
        return []
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{name} must be a non-empty list, got {values!r}")
    if of is not None and not all(isinstance(value, of) for value in values):
        raise ConfigError(f"every entry of {name} must be a mapping, got {values!r}")
    return values


def _method_class(name: str):
    try:
        return get_method(name)
    except ValueError as error:
        raise ConfigError(str(error)) from None


# ---------------------------------------------------------------- describing

def hyperparameter_text(config: TrialConfig) -> str:
    """The method's own hyper-parameter values of a validated config, e.g. "rho=0.2 xi=0.5", or "-"."""
    values = [f"{name}={getattr(config, name)}" for name in HYPERPARAMETERS if getattr(config, name) is not None]
    values += [f"{name}={value}" for name, value in config.options.items()]
    return " ".join(values) or "-"
