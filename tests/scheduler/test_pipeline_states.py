"""How a pipeline stage's state is told from its jobs' states (pure)."""

from __future__ import annotations

import pytest

from hpc_aidc.scheduler.pipeline import combine_states, is_complete, stage_state


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
    entry = {"jobs": ["5", "6"]}
    assert stage_state(entry, {"5": "COMPLETED", "6": "COMPLETED"}) == "COMPLETED"
    assert stage_state(entry, {"5": "COMPLETED"}) == "UNKNOWN"  # a job accounting no longer knows
    assert stage_state({"jobs": []}, {}) == "NOT SUBMITTED"
    assert is_complete("run", entry, "COMPLETED") and not is_complete("run", entry, "FAILED")
    # a train job is complete only with its summary, written at the very end
    assert not is_complete("train", {"jobs": ["5"], "output": "/nonexistent/5"}, "COMPLETED")
    assert not is_complete("data-pack", {"jobs": ["5"], "output": "/nonexistent.zarr"}, "COMPLETED")
