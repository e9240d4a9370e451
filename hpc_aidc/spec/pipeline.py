"""A pipeline file (`hpcai submit pipeline FILE.toml`): named stages, each an ordinary hpcai submission,
chained by Slurm dependencies. Parsed whole and checked (unknown keys, kinds and stage names, cycles,
dependency types, references to other stages' outputs) before anything is submitted. Pure: no I/O
besides reading the file, no Slurm."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hpc_aidc.errors import ConfigError

KINDS = ("data-pack", "train", "infer", "run", "report")
DEPENDENCIES = ("afterok", "afterany")
# Keys every stage takes besides its kind's own options.
COMMON_KEYS = ("kind", "after", "dependency")
# What a later stage may use of an earlier one: the job directory of a single job, the output of a
# data pack or an inference run.
OUTPUT_FIELDS: Mapping[str, str] = MappingProxyType(
    {"train": "job_dir", "run": "job_dir", "report": "job_dir", "data-pack": "out", "infer": "out"})
# Names become directory names and appear in messages: plain, short, and never a job id (`hpcai status
# NAME` takes either).
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_REF = re.compile(r"\{stage\.([^.{}]+)\.([^.{}]+)\}")


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str
    after: tuple[str, ...]
    dependency: str                  # afterok | afterany: how this stage waits for those in `after`
    options: Mapping[str, Any]       # the kind's own options, as the submit command's long flags
    uses: tuple[str, ...]            # stages whose outputs its options name ({stage.NAME.FIELD})


@dataclass(frozen=True)
class Pipeline:
    name: str
    source: str
    stages: tuple[Stage, ...]        # in submission (topological) order

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def ancestors(self, name: str) -> set[str]:
        seen: set[str] = set()
        todo = list(self.stage(name).after)
        while todo:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                todo.extend(self.stage(current).after)
        return seen


def load_pipeline(path: str | Path, allowed: Mapping[str, Collection[str]]) -> Pipeline:
    """Read and check a pipeline file; `allowed` names each kind's options (its command's long flags)."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"Expected a pipeline file at {p}. Got no such file. Check the path.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Expected valid TOML in {p}. Got: {exc}. Fix the file.") from None
    return parse_pipeline(doc, str(p), allowed, default_name=p.stem)


def _name(value: object, what: str, source: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ConfigError(f"Expected {what} of 1-64 letters, digits, '.', '_' or '-', starting with a letter, in "
                          f"{source}. Got {value!r} instead. Rename it.")
    return value


def _unknown(keys: Collection[str], valid: Collection[str], where: str, source: str) -> None:
    extra = sorted(set(keys) - set(valid))
    if extra:
        raise ConfigError(f"Expected keys of {where} among {', '.join(sorted(valid))} in {source}. Got "
                          f"{', '.join(map(repr, extra))} instead. Remove or rename them.")


def parse_pipeline(doc: Mapping[str, Any], source: str, allowed: Mapping[str, Collection[str]],
                   default_name: str) -> Pipeline:
    _unknown(doc, ("pipeline", "stage"), "the file", source)
    head = doc.get("pipeline", {})
    if not isinstance(head, Mapping):
        raise ConfigError(f"Expected a [pipeline] table in {source}. Got {head!r} instead. Write [pipeline].")
    _unknown(head, ("name",), "[pipeline]", source)
    name = _name(head.get("name", default_name), "a pipeline name", source)
    tables = doc.get("stage")
    if not isinstance(tables, Mapping) or not tables:
        raise ConfigError(f"Expected at least one [stage.NAME] table in {source}. Got none. Add e.g. "
                          '[stage.train] kind = "train".')
    stages = [_stage(stage_name, table, source, allowed) for stage_name, table in tables.items()]
    names = {s.name for s in stages}
    for s in stages:
        for upstream in s.after:
            if upstream not in names:
                raise ConfigError(f"Expected stage {s.name!r} to run after stages of {source}. Got after = "
                                  f"{upstream!r}, which is not a stage. Use one of {', '.join(sorted(names))}.")
    pipeline = Pipeline(name, source, topological(stages, source))
    for s in pipeline.stages:
        _check_uses(pipeline, s, source)
    return pipeline


def _stage(name: str, table: object, source: str, allowed: Mapping[str, Collection[str]]) -> Stage:
    _name(name, "a stage name", source)
    where = f"[stage.{name}]"
    if not isinstance(table, Mapping):
        raise ConfigError(f"Expected {where} to be a table in {source}. Got {table!r} instead. Write {where}.")
    kind = table.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"Expected kind in {where} of {source} to be one of {', '.join(KINDS)}. Got {kind!r} "
                          "instead. Pick one.")
    _unknown(table, (*COMMON_KEYS, *allowed[kind]), f"{where} (kind {kind})", source)
    after = table.get("after", [])
    if isinstance(after, str):
        after = [after]
    if not isinstance(after, list) or not all(isinstance(a, str) for a in after) or name in after:
        raise ConfigError(f"Expected after in {where} of {source} to be a list of other stages' names. Got "
                          f"{after!r} instead. Write after = [\"stage\"].")
    dependency = table.get("dependency", "afterok")
    if dependency not in DEPENDENCIES:
        raise ConfigError(f"Expected dependency in {where} of {source} to be afterok (run only if every stage in "
                          f"after completed) or afterany (run however they ended). Got {dependency!r} instead. "
                          "Pick one.")
    options = {k: v for k, v in table.items() if k not in COMMON_KEYS}
    uses = tuple(dict.fromkeys(m.group(1) for text in _strings(options) for m in _REF.finditer(text)))
    return Stage(name, kind, tuple(dict.fromkeys(after)), dependency, MappingProxyType(options), uses)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _check_uses(pipeline: Pipeline, stage: Stage, source: str) -> None:
    """A stage may name only outputs of stages it runs after (else they may not exist yet), and only the
    output that stage's kind has."""
    ancestors = pipeline.ancestors(stage.name)
    for text in _strings(dict(stage.options)):
        for m in _REF.finditer(text):
            other, field = m.group(1), m.group(2)
            if other not in ancestors:
                raise ConfigError(f"Expected {m.group(0)} in [stage.{stage.name}] of {source} to name a stage it "
                                  f"runs after. Got {other!r}, which it does not run after. Add "
                                  f"after = [\"{other}\"] (or fix the name).")
            want = OUTPUT_FIELDS[pipeline.stage(other).kind]
            if field != want:
                raise ConfigError(f"Expected {{stage.{other}.{want}}} (a {pipeline.stage(other).kind} stage's output) "
                                  f"in [stage.{stage.name}] of {source}. Got {m.group(0)} instead. Use "
                                  f"{{stage.{other}.{want}}}.")


def topological(stages: Sequence[Stage], source: str) -> tuple[Stage, ...]:
    """Stages ordered so each comes after those it waits for; ties keep the file's order. A cycle is an
    error naming it."""
    by_name = {s.name: s for s in stages}
    done: list[Stage] = []
    placed: set[str] = set()
    while len(done) < len(stages):
        ready = [s for s in stages if s.name not in placed and all(a in placed for a in s.after)]
        if not ready:
            raise ConfigError(f"Expected stages without a cycle in {source}. Got {_cycle(by_name, placed)} "
                              "instead. Remove one of those after entries.")
        done.append(ready[0])
        placed.add(ready[0].name)
    return tuple(done)


def _cycle(by_name: Mapping[str, Stage], placed: set[str]) -> str:
    current = next(n for n in by_name if n not in placed)
    path: list[str] = []
    while current not in path:
        path.append(current)
        current = next(a for a in by_name[current].after if a not in placed)
    loop = [*path[path.index(current):], current]
    return " -> ".join(reversed(loop))


def dependency_flag(stage: Stage, job_ids: Mapping[str, Sequence[str]]) -> str | None:
    """sbatch's --dependency value: `afterok:1:2` on the jobs of the stages in `after` that run now
    (`job_ids`; a stage already complete from an earlier submission is not waited for), None if none."""
    ids = [job for upstream in stage.after for job in job_ids.get(upstream, ())]
    return f"{stage.dependency}:{':'.join(ids)}" if ids else None


def substitute(value: Any, outputs: Mapping[str, str]) -> Any:
    """`value` with every {stage.NAME.FIELD} replaced by that stage's output (`outputs[NAME]`)."""
    if isinstance(value, str):
        return _REF.sub(lambda m: outputs[m.group(1)], value)
    if isinstance(value, list):
        return [substitute(v, outputs) for v in value]
    return value
