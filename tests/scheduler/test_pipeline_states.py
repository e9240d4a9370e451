"""How a pipeline stage's state is told from its jobs' states (pure)."""

from __future__ import annotations

import pytest

from hpc_aidc.scheduler.pipeline import (
    LAUNCHER,
    REUSED,
    SUBMITTED,
    TO_SUBMIT,
    StageEntry,
    combine_states,
    is_complete,
    stage_state,
)


def _entry(jobs: list[str], output: str | None = None) -> StageEntry:
    return StageEntry("run", (), "afterok", "f", SUBMITTED, jobs, jobs, output)


@pytest.mark.parametrize(("states", "combined"), [
    ([], "UNKNOWN"),
    (["COMPLETED", "COMPLETED"], "COMPLETED"),
    (["COMPLETED", "PENDING"], "PENDING"),            # a pack array done, its finalize job queued
    (["FAILED", "RUNNING"], "RUNNING"),               # an array: one task failed, another still runs
    (["COMPLETED", "FAILED", "CANCELLED"], "FAILED"),  # the first way one ended badly
    (["COMPLETED", "TIMEOUT"], "TIMEOUT"),
    (["REQUEUED"], "RUNNING"),
])
def test_combine_states(states: list[str], combined: str) -> None:
    assert combine_states(states) == combined


def test_stage_state_and_completeness_of_run_stages() -> None:
    entry = _entry(["5", "6"])
    assert stage_state(entry, {"5": "COMPLETED", "6": "COMPLETED"}) == "COMPLETED"
    assert stage_state(entry, {"5": "COMPLETED"}) == "UNKNOWN"  # a job accounting no longer knows
    assert stage_state(_entry([]), {}) == "NOT SUBMITTED"
    assert is_complete("run", entry, "COMPLETED") and not is_complete("run", entry, "FAILED")
    # a train job is complete only with its summary, written at the very end
    assert not is_complete("train", _entry(["5"], "/nonexistent/5"), "COMPLETED")
    assert not is_complete("data-pack", _entry(["5"], "/nonexistent.zarr"), "COMPLETED")


@pytest.mark.parametrize(("written", "state"), [
    ({"pending": True}, TO_SUBMIT), ({"pending": "launcher"}, LAUNCHER), ({"pending": False}, SUBMITTED),
    ({"pending": False, "reused": True}, REUSED), ({"state": "launcher"}, LAUNCHER),
])
def test_a_record_written_before_the_explicit_state_reads_the_same(written: dict[str, object], state: str) -> None:
    entry = StageEntry.from_json({"kind": "infer", "after": ["pack"], "dependency": "afterok", "jobs": ["7"],
                                  "wait_on": [], "output": None, "fingerprint": "f", **written})
    assert entry.state == state and entry.after == ("pack",)
    assert StageEntry.from_json(entry.to_json()) == entry
