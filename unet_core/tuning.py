"""The search space of `unet tune`: a YAML file mapping `unet train` options to distributions.

    learning-rate: {loguniform: [1.0e-4, 1.0e-2]}
    base-filters: {choice: [16, 32]}
    loss: {choice: [bce_dice, dice]}
    dropout: {uniform: [0.0, 0.5]}
    depth: {randint: [3, 5]}        # 3 or 4: the upper bound is excluded, as in Ray Tune

`parse_space(data, options)` checks every entry against the options `unet train` has (their
types and choices) before anything starts: an unknown option, an option that is not a recipe
choice (where the data or the bundle go, the run's name, scaling), a value of the wrong type and
an empty or inverted range are refused with a ConfigError naming the entry. jobs/tune.py turns
the dimensions into Ray Tune's domains.
"""
from __future__ import annotations

import argparse
import enum
import math
from dataclasses import dataclass
from typing import Any

from unet_core.errors import ConfigError

# Options a search may not vary: they say where things are, who the run is, or how it is scaled.
NOT_SEARCHABLE = frozenset({
    "data", "output", "storage", "run_name", "resume", "config", "verbose", "tracking_uri", "experiment",
    "register_model", "workers", "gpus_per_worker", "cpus_per_worker", "memory_per_worker", "cache_gb_per_worker",
    "max_failures", "max_wait", "initial_weights", "address", "report", "label_names",
})


class Kind(enum.Enum):
    CHOICE = "choice"
    UNIFORM = "uniform"
    LOGUNIFORM = "loguniform"
    RANDINT = "randint"


@dataclass(frozen=True)
class OptionSpec:
    """What `unet train` accepts for one option (from its argparse action)."""

    dest: str
    type: type  # int, float, str or bool (a flag)
    choices: tuple | None = None


@dataclass(frozen=True)
class Dimension:
    """One searched option: CHOICE has `values`; the ranges have `values == (low, high)`."""

    option: str  # the option's dest, e.g. "learning_rate"
    kind: Kind
    values: tuple

    @property
    def flag(self) -> str:
        return "--" + self.option.replace("_", "-")


def parse_space(data: Any, options: dict[str, OptionSpec], where: str = "the search space") -> list[Dimension]:
    """Validated dimensions, in the file's order."""
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{where}: expected a mapping of `unet train` options to distributions, e.g. "
                          "'learning-rate: {loguniform: [1.0e-4, 1.0e-2]}'")
    dims = []
    for raw, spec in data.items():
        name = str(raw).lstrip("-").replace("-", "_")
        if name in NOT_SEARCHABLE:
            raise ConfigError(f"{where}: {raw!r} cannot be searched (it says where data goes, who the run is or how "
                              "it scales); give it as a fixed `unet tune` option instead")
        if name not in options:
            raise ConfigError(f"{where}: {raw!r} is not a `unet train` option; searchable: "
                              f"{sorted(k for k in options if k not in NOT_SEARCHABLE)}")
        dims.append(_dimension(name, spec, options[name], f"{where}, {raw}"))
    return dims


def _dimension(name: str, spec: Any, option: OptionSpec, where: str) -> Dimension:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}: expected one of {{choice: [...]}}, {{uniform: [a, b]}}, {{loguniform: [a, b]}}, "
                          f"{{randint: [a, b]}}; got {spec!r}")
    (key, args), = spec.items()
    try:
        kind = Kind(str(key))
    except ValueError:
        raise ConfigError(f"{where}: unknown distribution {key!r}; known: {[k.value for k in Kind]}") from None
    if not isinstance(args, list | tuple) or not args:
        raise ConfigError(f"{where}: {kind.value} needs a non-empty list, got {args!r}")
    if kind is Kind.CHOICE:
        values = tuple(_value(v, option, where) for v in args)
        if len(set(values)) != len(values):
            raise ConfigError(f"{where}: choice lists a value twice: {list(args)}")
        return Dimension(name, kind, values)
    if len(args) != 2:
        raise ConfigError(f"{where}: {kind.value} takes [low, high], got {list(args)}")
    if kind is Kind.RANDINT:
        if option.type is not int:
            raise ConfigError(f"{where}: randint is for whole-number options; {name} takes {option.type.__name__}")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in args):
            raise ConfigError(f"{where}: randint bounds must be whole numbers, got {list(args)}")
    else:
        if option.type is not float:
            raise ConfigError(f"{where}: {kind.value} is for real-valued options; {name} takes "
                              f"{option.type.__name__} (use choice or randint)")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in args):
            raise ConfigError(f"{where}: {kind.value} bounds must be finite numbers, got {list(args)}")
    low, high = args
    if not low < high:
        raise ConfigError(f"{where}: the range [{low}, {high}] is empty: low must be below high")
    if kind is Kind.LOGUNIFORM and low <= 0:
        raise ConfigError(f"{where}: loguniform needs a positive low bound, got {low}")
    if option.choices is not None:
        raise ConfigError(f"{where}: {name} takes one of {list(option.choices)}: search it with choice")
    return Dimension(name, kind, (low, high) if kind is Kind.RANDINT else (float(low), float(high)))


def _value(value: Any, option: OptionSpec, where: str) -> Any:
    """One choice value, of the option's type and among its choices."""
    t = option.type
    ok = (isinstance(value, bool) if t is bool else
          isinstance(value, int) and not isinstance(value, bool) if t is int else
          isinstance(value, int | float) and not isinstance(value, bool) if t is float else
          isinstance(value, str))
    if not ok:
        raise ConfigError(f"{where}: {value!r} is not of type {t.__name__}")
    if t is float:
        value = float(value)
    if option.choices is not None and value not in option.choices:
        raise ConfigError(f"{where}: {value!r} is not one of {list(option.choices)}")
    return value


def option_specs(parser: argparse.ArgumentParser) -> dict[str, OptionSpec]:
    """Every option of a parser as an OptionSpec (flags as bool; untyped options as str)."""
    out = {}
    for action in parser._actions:  # argparse has no public list of a parser's actions
        if not action.option_strings or action.dest in ("help",):
            continue
        if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
            kind: type = bool
        else:
            kind = action.type if action.type in (int, float) else str
        out[action.dest] = OptionSpec(action.dest, kind, tuple(action.choices) if action.choices else None)
    return out


def trial_flags(dims: list[Dimension], sample: dict[str, Any]) -> list[str]:
    """A sampled point as `unet train` flags (a true flag as itself, a false one left out)."""
    out: list[str] = []
    for d in dims:
        value = sample[d.option]
        if d.kind is Kind.CHOICE and isinstance(value, bool):
            out += [d.flag] if value else []
        else:
            out += [d.flag, repr(value) if isinstance(value, float) else str(value)]
    return out


__all__ = ["NOT_SEARCHABLE", "Dimension", "Kind", "OptionSpec", "option_specs", "parse_space", "trial_flags"]
