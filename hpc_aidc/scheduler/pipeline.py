"""Pipelines on Slurm: the pipeline record (`<job_root>/<user>/pipelines/<name>/pipeline.json`), the states
of every stage's jobs (one sacct and one squeue call for the whole pipeline), which stages a
resubmission may skip because their outputs are complete, and why a stage did not run.

Stages are chained by sbatch dependencies with `--kill-on-invalid-dep=yes` (render.sbatch), so Slurm
itself cancels what waits on a failed stage: nothing of ours waits on the login node."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpc_aidc.errors import ConfigError, DataError, HpcAidcError, SlurmError
from hpc_aidc.fsutil import DIR_FLAGS, atomic_write_at, file_lock
from hpc_aidc.ids import current_user
from hpc_aidc.scheduler.accounting import query_jobs, queue_jobs
from hpc_aidc.scheduler.parse import AccountingRecord
from hpc_aidc.scheduler.user_folder import prepare_user_folder
from hpc_aidc.site_profile import SiteProfile
from hpc_aidc.spec.pipeline import Pipeline, Stage

RECORD = "pipeline.json"
PIPELINES = "pipelines"  # <job_root>/<user>/pipelines/<name>/
_ACTIVE_FIRST = ("RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED", "SUSPENDED", "RESIZING", "PENDING")


def pipeline_dir(site: SiteProfile, name: str) -> Path:
    return site.job_root / current_user() / PIPELINES / name


def find_pipeline(site: SiteProfile, name_or_dir: str) -> Path:
    """A pipeline's directory from its name (the user's own pipelines) or a path to it."""
    given = Path(name_or_dir)
    candidates = [given] if os.sep in name_or_dir or given.is_dir() else []
    candidates.append(pipeline_dir(site, name_or_dir))
    for folder in candidates:
        if (folder / RECORD).is_file():
            return folder
    raise ConfigError(f"Expected a job id (like 123) or a pipeline name or directory. Got {name_or_dir!r}, which "
                      f"is neither (no {RECORD} under {candidates[-1]}). See `hpcai jobs`, or submit the pipeline "
                      "with `hpcai submit pipeline FILE.toml`.")


def fingerprint(stage: Stage) -> str:
    """What makes a stage the same stage on resubmission: a changed stage runs again."""
    text = json.dumps({"kind": stage.kind, "after": stage.after, "dependency": stage.dependency,
                       "options": dict(stage.options)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Where a stage of the record stands on hpcai's side (Slurm's side: its jobs' states).
TO_SUBMIT = "to submit"      # not submitted yet: its upstream stages have no jobs yet
LAUNCHER = "launcher"        # its launcher job is submitted; that job submits the stage itself
SUBMITTED = "submitted"      # its jobs are submitted
REUSED = "reused"            # complete from an earlier submission, skipped
ENTRY_STATES = (TO_SUBMIT, LAUNCHER, SUBMITTED, REUSED)


@dataclass
class StageEntry:
    """One stage in the pipeline record (mutable: the engine updates it as it submits)."""

    kind: str
    after: tuple[str, ...]
    dependency: str
    fingerprint: str
    state: str = TO_SUBMIT
    jobs: list[str] = field(default_factory=list)      # every job submitted for it (a launcher's too)
    wait_on: list[str] = field(default_factory=list)   # the jobs later stages wait for
    output: str | None = None
    submitted: float = 0.0

    @classmethod
    def new(cls, stage: Stage) -> StageEntry:
        return cls(stage.kind, tuple(stage.after), stage.dependency, fingerprint(stage), submitted=time.time())

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "after": list(self.after), "dependency": self.dependency, "state": self.state,
                "jobs": self.jobs, "wait_on": self.wait_on, "output": self.output, "fingerprint": self.fingerprint,
                "submitted": self.submitted}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> StageEntry:
        state = d.get("state")
        if state not in ENTRY_STATES:  # records written before `state`: `reused`, and `pending` True/False/"launcher"
            pending = d.get("pending")
            state = REUSED if d.get("reused") else LAUNCHER if pending == "launcher" else \
                TO_SUBMIT if pending is True else SUBMITTED
        return cls(str(d["kind"]), tuple(d.get("after", ())), str(d.get("dependency", "afterok")),
                   str(d.get("fingerprint", "")), str(state), list(d.get("jobs", [])), list(d.get("wait_on", [])),
                   d.get("output"), float(d.get("submitted", 0.0)))


@dataclass
class PipelineRecord:
    name: str
    source: str              # the pipeline file as submitted
    base: str                # its folder: relative paths in stage options are relative to it
    text: str                # its text, so a launcher job reads the very file that was submitted
    order: list[str]
    stages: dict[str, StageEntry]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "base": self.base, "text": self.text, "order": self.order,
                "stages": {n: e.to_json() for n, e in self.stages.items()}}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PipelineRecord:
        return cls(str(d["name"]), str(d["source"]), str(d["base"]), str(d["text"]), list(d["order"]),
                   {n: StageEntry.from_json(e) for n, e in d["stages"].items()})


def read_record(folder: Path) -> PipelineRecord | None:
    try:
        return PipelineRecord.from_json(json.loads((folder / RECORD).read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"Expected a readable {RECORD} in {folder}. Got {exc!r}. Move the folder away to start the "
                        "pipeline afresh.") from None


@contextlib.contextmanager
def lock(folder: Path) -> Iterator[None]:
    """The pipeline's lock, held while its record is read, stages submitted and the record written (a
    submission and its launcher jobs never interleave), in a folder of the user's that nobody else may
    write."""
    prepare_user_folder(folder.parents[1])
    folder.mkdir(mode=0o750, parents=True, exist_ok=True)
    with file_lock(folder / ".lock"):
        yield


def write_record(folder: Path, record: PipelineRecord) -> None:
    """Atomically: never a half-written record (under `lock`)."""
    fd = os.open(folder, DIR_FLAGS)
    try:
        atomic_write_at(fd, RECORD, (json.dumps(record.to_json(), indent=2, sort_keys=True) + "\n").encode(), 0o640)
    finally:
        os.close(fd)


def job_states(job_ids: Iterable[str]) -> dict[str, str]:
    """Each job's state (an array: its tasks' combined state), from one sacct and one squeue call; a job
    sbatch accepted a moment ago may not be in slurmdbd yet, so squeue's view wins."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    rows: list[AccountingRecord] = []
    with contextlib.suppress(SlurmError):  # slurmdbd away: slurmctld's view below
        rows.extend(query_jobs(job_ids=ids, all_users=True))
    rows.extend(queue_jobs(job_ids=ids, all_users=True, all_states=True, check=False))
    per_job: dict[str, dict[str, str]] = {}
    for row in rows:
        base = row.job_id.split("_")[0]
        for job in {row.job_id, base, row.job_id_raw} & set(ids):
            per_job.setdefault(job, {})[row.job_id] = row.state  # later rows (squeue) win
    return {job: combine_states(list(states.values())) for job, states in per_job.items()}


def combine_states(states: Sequence[str]) -> str:
    """One state for several jobs (a stage's, an array's tasks): the most active one while any is active,
    COMPLETED when all completed, else the first way one ended badly."""
    if not states:
        return "UNKNOWN"
    for active in _ACTIVE_FIRST:
        if active in states:
            return "PENDING" if active == "PENDING" else "RUNNING"
    bad = [s for s in states if s != "COMPLETED"]
    return bad[0] if bad else "COMPLETED"


def stage_state(entry: StageEntry, states: Mapping[str, str]) -> str:
    if not entry.jobs:
        return "NOT SUBMITTED"
    return combine_states([states.get(j, "UNKNOWN") for j in entry.jobs])


def is_complete(kind: str, entry: StageEntry, state: str) -> bool:
    """Whether a stage's outputs are complete by their own records: a train job that completed and wrote
    its summary, a data pack whose store verifies, an inference run with every shard done, a run or
    report job that completed."""
    output = entry.output or ""
    try:
        if kind == "data-pack":
            from hpc_aidc.data.verify import verify_store

            return bool(output) and verify_store(output, full=False).ok
        if kind == "infer":
            from hpc_aidc.scheduler.infer_submit import run_progress

            _, prog = run_progress(Path(output))
            return prog.shards > 0 and prog.done == prog.shards
    except (HpcAidcError, OSError):
        return False
    if kind == "train":
        return state == "COMPLETED" and bool(output) and (Path(output) / "summary.json").is_file()
    return state == "COMPLETED"


@dataclass(frozen=True)
class Resubmission:
    reuse: dict[str, StageEntry]   # stage -> its entry from the record, complete and unchanged
    run: list[str]                 # stages to submit, in order


def plan_resubmission(pipeline: Pipeline, record: PipelineRecord | None) -> Resubmission:
    """Stages whose earlier run is complete, unchanged, and whose upstream stages are all reused are
    skipped; the rest run again. A stage of the earlier submission still pending or running is refused:
    two runs of one stage would write the same outputs."""
    entries = record.stages if record else {}
    states = job_states(j for e in entries.values() for j in e.jobs)
    busy = [(name, e.jobs, stage_state(e, states)) for name, e in entries.items()
            if stage_state(e, states) in ("PENDING", "RUNNING")]
    if busy:
        name, jobs, state = busy[0]
        raise ConfigError(f"Expected no stage of pipeline {pipeline.name!r} still queued or running. Got stage "
                          f"{name!r} (jobs {', '.join(jobs)}) {state}. Wait for it, or cancel it with "
                          f"`hpcai cancel {' '.join(jobs)}`, then submit again.")
    reuse: dict[str, StageEntry] = {}
    for stage in pipeline.stages:
        entry = entries.get(stage.name)
        if (entry and entry.fingerprint == fingerprint(stage) and all(a in reuse for a in stage.after)
                and is_complete(stage.kind, entry, stage_state(entry, states))):
            reuse[stage.name] = dataclasses.replace(entry, state=REUSED)
    return Resubmission(reuse, [s.name for s in pipeline.stages if s.name not in reuse])


@dataclass(frozen=True)
class StageStatus:
    name: str
    kind: str
    state: str
    jobs: tuple[str, ...]
    note: str
    output: str | None

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.name, "kind": self.kind, "state": self.state, "jobs": list(self.jobs),
                "note": self.note, "output": self.output}


def pipeline_status(folder: Path) -> tuple[PipelineRecord, list[StageStatus]]:
    """The record and each stage's state, jobs and, where it did not run, why."""
    record = read_record(folder)
    if record is None:
        raise ConfigError(f"Expected a pipeline record {folder / RECORD}. Got none. Submit the pipeline first.")
    entries = record.stages
    states = job_states(j for e in entries.values() for j in e.jobs)
    by_stage = {name: stage_state(e, states) for name, e in entries.items()}
    rows = []
    for name in record.order:
        e = entries[name]
        rows.append(StageStatus(name, e.kind, by_stage[name], tuple(e.jobs), _note(e, by_stage[name], by_stage),
                                e.output))
    return record, rows


def _note(entry: StageEntry, state: str, by_stage: Mapping[str, str]) -> str:
    if entry.state == REUSED:
        return "complete from an earlier submission"
    upstream_bad = [(a, by_stage[a]) for a in entry.after if by_stage.get(a) not in ("COMPLETED", None)]
    ended = [(a, s) for a, s in upstream_bad if s not in ("PENDING", "RUNNING", "NOT SUBMITTED")]
    if state in ("CANCELLED", "NOT SUBMITTED") and entry.dependency == "afterok" and ended:
        a, s = ended[0]
        return f"{state.lower()}: dependency {a} {_ended_word(s)}"
    if entry.state == LAUNCHER and state in ("PENDING", "RUNNING"):
        return "a launcher job submits it once its inputs exist" + (
            f" (waiting for {', '.join(a for a, _ in upstream_bad)})" if upstream_bad else "")
    if state in ("PENDING", "NOT SUBMITTED") and upstream_bad:
        return f"waiting for {', '.join(a for a, _ in upstream_bad)}"
    return ""


def _ended_word(state: str) -> str:
    return {"FAILED": "failed", "CANCELLED": "was cancelled", "TIMEOUT": "timed out", "OUT_OF_MEMORY": "ran out of "
            "memory", "NODE_FAIL": "lost a node", "NOT SUBMITTED": "was not submitted"}.get(state, state.lower())
