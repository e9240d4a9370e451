"""Pipelines on Slurm: the pipeline record (`<job_root>/<user>/pipelines/<name>/pipeline.json`), the states
of every stage's jobs (one sacct and one squeue call for the whole pipeline), which stages a
resubmission may skip because their outputs are complete, and why a stage did not run.

Stages are chained by sbatch dependencies with `--kill-on-invalid-dep=yes` (render.sbatch), so Slurm
itself cancels what waits on a failed stage: nothing of ours waits on the login node."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpc_aidc.errors import ConfigError, DataError, HpcAidcError, SlurmError
from hpc_aidc.fsutil import DIR_FLAGS, atomic_write_at, file_lock
from hpc_aidc.ids import current_user
from hpc_aidc.scheduler.accounting import query_jobs
from hpc_aidc.scheduler.parse import SQUEUE_FORMAT, AccountingRecord, parse_squeue
from hpc_aidc.scheduler.submit import prepare_user_folder
from hpc_aidc.site import SiteProfile
from hpc_aidc.slurm_client import run_slurm
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


def read_record(folder: Path) -> dict[str, Any] | None:
    try:
        record: dict[str, Any] = json.loads((folder / RECORD).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DataError(f"Expected a readable {RECORD} in {folder}. Got {exc}. Move the folder away to start the "
                        "pipeline afresh.") from None
    return record


@contextlib.contextmanager
def lock(folder: Path) -> Iterator[None]:
    """The pipeline's lock, held while its record is read, stages submitted and the record written (a
    submission and its launcher jobs never interleave), in a folder of the user's that nobody else may
    write."""
    prepare_user_folder(folder.parents[1])
    folder.mkdir(mode=0o750, parents=True, exist_ok=True)
    with file_lock(folder / ".lock"):
        yield


def write_record(folder: Path, record: Mapping[str, Any]) -> None:
    """Atomically: never a half-written record (under `lock`)."""
    fd = os.open(folder, DIR_FLAGS)
    try:
        atomic_write_at(fd, RECORD, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode(), 0o640)
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
    queue = run_slurm(["squeue", "--noheader", f"--format={SQUEUE_FORMAT}", "--states=all", f"--jobs={','.join(ids)}"],
                      check=False)
    rows.extend(parse_squeue(queue.stdout) if queue.returncode == 0 else [])
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


def stage_state(entry: Mapping[str, Any], states: Mapping[str, str]) -> str:
    if not entry.get("jobs"):
        return "NOT SUBMITTED"
    return combine_states([states.get(j, "UNKNOWN") for j in entry["jobs"]])


def is_complete(kind: str, entry: Mapping[str, Any], state: str) -> bool:
    """Whether a stage's outputs are complete by their own records: a train job that completed and wrote
    its summary, a data pack whose store verifies, an inference run with every shard done, a run or
    report job that completed."""
    output = str(entry.get("output") or "")
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
    reuse: dict[str, dict[str, Any]]   # stage -> its entry from the record, complete and unchanged
    run: list[str]                     # stages to submit, in order


def plan_resubmission(pipeline: Pipeline, record: Mapping[str, Any] | None) -> Resubmission:
    """Stages whose earlier run is complete, unchanged, and whose upstream stages are all reused are
    skipped; the rest run again. A stage of the earlier submission still pending or running is refused:
    two runs of one stage would write the same outputs."""
    entries: Mapping[str, Any] = (record or {}).get("stages", {})
    states = job_states(j for e in entries.values() for j in e.get("jobs", []))
    busy = [(name, e["jobs"], stage_state(e, states)) for name, e in entries.items()
            if stage_state(e, states) in ("PENDING", "RUNNING")]
    if busy:
        name, jobs, state = busy[0]
        raise ConfigError(f"Expected no stage of pipeline {pipeline.name!r} still queued or running. Got stage "
                          f"{name!r} (jobs {', '.join(jobs)}) {state}. Wait for it, or cancel it with "
                          f"`hpcai cancel {' '.join(jobs)}`, then submit again.")
    reuse: dict[str, dict[str, Any]] = {}
    for stage in pipeline.stages:
        entry = entries.get(stage.name)
        if (entry and entry.get("fingerprint") == fingerprint(stage) and all(a in reuse for a in stage.after)
                and is_complete(stage.kind, entry, stage_state(entry, states))):
            reuse[stage.name] = dict(entry)
    return Resubmission(reuse, [s.name for s in pipeline.stages if s.name not in reuse])


def new_entry(stage: Stage, jobs: Sequence[str], wait_on: Sequence[str], output: str | None) -> dict[str, Any]:
    return {"kind": stage.kind, "after": list(stage.after), "dependency": stage.dependency, "jobs": list(jobs),
            "wait_on": list(wait_on), "output": output, "fingerprint": fingerprint(stage),
            "submitted": time.time(), "reused": False}


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


def pipeline_status(folder: Path) -> tuple[dict[str, Any], list[StageStatus]]:
    """The record and each stage's state, jobs and, where it did not run, why."""
    record = read_record(folder)
    if record is None:
        raise ConfigError(f"Expected a pipeline record {folder / RECORD}. Got none. Submit the pipeline first.")
    entries: dict[str, dict[str, Any]] = record["stages"]
    states = job_states(j for e in entries.values() for j in e.get("jobs", []))
    by_stage = {name: stage_state(e, states) for name, e in entries.items()}
    rows = []
    for name in record["order"]:
        e = entries[name]
        rows.append(StageStatus(name, e["kind"], by_stage[name], tuple(e.get("jobs", [])),
                                _note(e, by_stage[name], by_stage), e.get("output")))
    return record, rows


def _note(entry: Mapping[str, Any], state: str, by_stage: Mapping[str, str]) -> str:
    if entry.get("reused"):
        return "complete from an earlier submission"
    upstream_bad = [(a, by_stage[a]) for a in entry["after"] if by_stage.get(a) not in ("COMPLETED", None)]
    ended = [(a, s) for a, s in upstream_bad if s not in ("PENDING", "RUNNING", "NOT SUBMITTED")]
    if state in ("CANCELLED", "NOT SUBMITTED") and entry["dependency"] == "afterok" and ended:
        a, s = ended[0]
        return f"{state.lower()}: dependency {a} {_ended_word(s)}"
    if entry.get("pending") == "launcher" and state in ("PENDING", "RUNNING"):
        return "a launcher job submits it once its inputs exist" + (
            f" (waiting for {', '.join(a for a, _ in upstream_bad)})" if upstream_bad else "")
    if state in ("PENDING", "NOT SUBMITTED") and upstream_bad:
        return f"waiting for {', '.join(a for a, _ in upstream_bad)}"
    return ""


def _ended_word(state: str) -> str:
    return {"FAILED": "failed", "CANCELLED": "was cancelled", "TIMEOUT": "timed out", "OUT_OF_MEMORY": "ran out of "
            "memory", "NODE_FAIL": "lost a node", "NOT SUBMITTED": "was not submitted"}.get(state, state.lower())
