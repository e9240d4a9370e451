"""`hpcai submit sweep`: the trials of a hyperparameter sweep, from `--grid KEY=VALUES` axes (pure).

    --grid 'optimizer.lr=[1e-3,3e-3]'        a list (TOML values): every value is tried
    --grid 'optimizer.lr=loguniform(1e-4,1e-2)'   a distribution: only with --random N
    --grid 'train.micro_batch=randint(4,16)'      (uniform, loguniform: floats; randint: ints, both ends in)

Without --random the trials are the grid (the cartesian product, the first axis varying slowest); with
--random N, N trials drawn with --seed: distinct grid points when every axis is a list, else each axis
drawn on its own. The same flags give the same trials."""

from __future__ import annotations

import itertools
import math
import random
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hpc_aidc.errors import ConfigError, SpecError, expected

DISTRIBUTIONS = ("uniform", "loguniform", "randint")
_KEY = re.compile(r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$")
_DIST = re.compile(r"^(?P<name>[a-z]+)\((?P<args>[^()]*)\)$")


@dataclass(frozen=True)
class Axis:
    key: str                                    # section.key of the training config
    values: tuple[Any, ...] = ()                # a list axis
    dist: tuple[str, float, float] | None = None  # (name, low, high) of a distribution axis

    def text(self) -> str:
        if self.dist:
            name, low, high = self.dist
            return f"{self.key}={name}({low:g},{high:g})"
        return f"{self.key}=[{','.join(_format(v) for v in self.values)}]"


@dataclass(frozen=True)
class SweepSpec:
    axes: tuple[Axis, ...]
    random: int | None = None   # None: the full grid
    seed: int = 0
    max_concurrent: int | None = None


def parse_axis(text: str) -> Axis:
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not value:
        raise SpecError(expected("--grid KEY=[V1,V2,...] (or KEY=loguniform(A,B) with --random)", text,
                                 "Write e.g. --grid 'optimizer.lr=[1e-3,3e-3]'."))
    if not _KEY.match(key):
        raise SpecError(expected("a --grid key SECTION.KEY of the training config (e.g. optimizer.lr)", key,
                                 "Name the config table and key, joined by a dot."))
    dist = _DIST.match(value)
    if dist:
        return Axis(key, dist=_distribution(key, dist.group("name"), dist.group("args")))
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(expected(f"a TOML list of values for --grid {key}", value,
                                 f"Write e.g. {key}=[1e-3,3e-3] (strings in double quotes). ({exc})")) from None
    values = parsed if isinstance(parsed, list) else [parsed]
    if not values:
        raise SpecError(expected(f"at least one value for --grid {key}", value, "List the values to try."))
    if any(isinstance(v, list | dict) for v in values):
        raise SpecError(expected(f"plain values (numbers, strings, booleans) for --grid {key}", value,
                                 "List one value per trial."))
    if len({_format(v) for v in values}) != len(values):
        raise SpecError(expected(f"distinct values for --grid {key}", value, "Drop the repeated ones."))
    return Axis(key, values=tuple(values))


def _distribution(key: str, name: str, args: str) -> tuple[str, float, float]:
    if name not in DISTRIBUTIONS:
        raise SpecError(expected(f"a distribution from {DISTRIBUTIONS} for --grid {key}", name,
                                 "Or give a list of values."))
    try:
        low, high = (float(a) for a in args.split(","))
    except ValueError:
        raise SpecError(expected(f"two numbers in {name}(LOW,HIGH) for --grid {key}", args,
                                 "Write e.g. loguniform(1e-4,1e-2).")) from None
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise SpecError(expected(f"LOW < HIGH in {name}(LOW,HIGH) for --grid {key}", f"{low:g}, {high:g}",
                                 "Swap or fix the bounds."))
    if name == "loguniform" and low <= 0:
        raise SpecError(expected(f"LOW > 0 in loguniform for --grid {key}", f"{low:g}", "Use uniform for 0."))
    if name == "randint" and (low != int(low) or high != int(high)):
        raise SpecError(expected(f"integer bounds in randint for --grid {key}", f"{low:g}, {high:g}",
                                 "Use uniform for real values."))
    return name, low, high


def parse_sweep(grid: Sequence[str], random_trials: int | None = None, seed: int = 0,
                max_concurrent: int | None = None) -> SweepSpec:
    if not grid:
        raise SpecError(expected("at least one --grid KEY=VALUES", "none", "Say what the trials vary."))
    axes = tuple(parse_axis(text) for text in grid)
    keys = [a.key for a in axes]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise SpecError(expected("each --grid key once", f"{', '.join(repeated)} repeated",
                                 "Put all of a key's values in one list."))
    if random_trials is not None and random_trials < 1:
        raise SpecError(expected("--random N >= 1", random_trials, "Pass how many trials to draw."))
    if max_concurrent is not None and max_concurrent < 1:
        raise SpecError(expected("--max-concurrent >= 1", max_concurrent, "Pass a positive count."))
    drawn = [a.key for a in axes if a.dist]
    if drawn and random_trials is None:
        raise SpecError(expected("--random N with a distribution axis", f"{', '.join(drawn)} without --random",
                                 "Add --random N (how many trials to draw), or list the values."))
    spec = SweepSpec(axes, random_trials, seed, max_concurrent)
    if random_trials is not None and not drawn:
        size = math.prod(len(a.values) for a in axes)
        if random_trials > size:
            raise SpecError(expected(f"--random at most the grid's {size} points", random_trials,
                                     "Drop --random to run the whole grid, or draw fewer."))
    return spec


def trials(spec: SweepSpec) -> list[dict[str, Any]]:
    """Each trial's overrides {section.key: value}, in array-task order."""
    keys = [a.key for a in spec.axes]
    if spec.random is None:
        return [dict(zip(keys, point, strict=True)) for point in itertools.product(*(a.values for a in spec.axes))]
    rng = random.Random(spec.seed)
    if all(not a.dist for a in spec.axes):
        grid = list(itertools.product(*(a.values for a in spec.axes)))
        return [dict(zip(keys, grid[i], strict=True)) for i in rng.sample(range(len(grid)), spec.random)]
    return [{a.key: _draw(rng, a) for a in spec.axes} for _ in range(spec.random)]


def _draw(rng: random.Random, axis: Axis) -> Any:
    if axis.dist is None:
        return rng.choice(axis.values)
    name, low, high = axis.dist
    if name == "randint":
        return rng.randint(int(low), int(high))
    if name == "loguniform":
        return float(f"{math.exp(rng.uniform(math.log(low), math.log(high))):.6g}")
    return float(f"{rng.uniform(low, high):.6g}")


def apply_overrides(document: Mapping[str, Any], overrides: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The config document (decoded TOML) with `overrides` set; a table that is not a table is refused
    (unknown tables and keys are refused by spec.train's parser, which names the valid ones)."""
    out: dict[str, Any] = {name: dict(table) if isinstance(table, Mapping) else table
                           for name, table in document.items()}
    for key, value in overrides.items():
        section, name = key.split(".", 1)
        table = out.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(expected(f"[{section}] to be a table in {source}", type(table).__name__,
                                       "Fix the config."))
        table[name] = value
    return out


def describe(overrides: Mapping[str, Any]) -> str:
    """`optimizer.lr=0.001 train.micro_batch=4`: a trial's overrides as one short text."""
    return " ".join(f"{k}={_format(v)}" for k, v in overrides.items())


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{value:g}" if isinstance(value, float) else str(value)
