"""Parsers on output recorded from the dev cluster's real Slurm 22.05 (tests/recorded/)."""

from datetime import datetime

import pytest
from conftest import RECORDED

from hpc_aidc.scheduler.parse import (
    parse_elapsed,
    parse_gres,
    parse_key_values,
    parse_sacct,
    parse_sbatch_job_id,
    parse_tres,
)


def test_sacct_allocations() -> None:
    records = parse_sacct((RECORDED / "sacct_allocations.txt").read_text())
    by_id = {r.job_id: r for r in records}
    two_node = by_id["1"]
    assert (two_node.account, two_node.nnodes, two_node.nodelist, two_node.gpus) == ("physics", 2, "n[1-2]", 4)
    assert two_node.state == "COMPLETED" and two_node.finished and two_node.complete
    assert two_node.start == datetime(2026, 11, 24, 13, 41, 36)
    # A job name containing '|' does not shift columns (unit-separator delimiter).
    assert by_id["5"].name == "x|y" and by_id["5"].partition == "gpu"
    # Array tasks keep their own ids; a task's exit code survives.
    assert {"6_0", "6_1", "6_2"} <= set(by_id)
    assert by_id["6_0"].state == "FAILED" and by_id["6_0"].exit_code == "3:0"
    assert by_id["11"].name == "x'; touch /tmp/pwned; '"
    running = by_id["13"]
    assert running.state == "RUNNING" and not running.finished and running.end is None
    assert running.gpus == 16


def test_sacct_steps_are_separate_rows() -> None:
    records = parse_sacct((RECORDED / "sacct_steps.txt").read_text())
    ids = [r.job_id for r in records]
    assert "1.0" in ids or any(i.endswith(".batch") for i in ids)


def test_truncated_lines_are_skipped() -> None:
    text = (RECORDED / "sacct_allocations.txt").read_text()
    first = text.splitlines()[0]
    assert parse_sacct(first[: len(first) // 2]) == []


@pytest.mark.parametrize(("text", "seconds"), [
    ("00:00:00", 0), ("00:01:05", 65), ("1-02:03:04", 93784), ("03:04", 184), ("", 0), ("INVALID", 0),
])
def test_elapsed(text: str, seconds: int) -> None:
    assert parse_elapsed(text) == seconds


def test_tres_units() -> None:
    tres = parse_tres("billing=2,cpu=2,gres/gpu=4,mem=8000M,node=2")
    assert tres == {"billing": 2, "cpu": 2, "gres/gpu": 4, "mem": 8000, "node": 2}
    assert parse_tres("mem=2G")["mem"] == 2048
    assert parse_tres("") == {}


def test_scontrol_records() -> None:
    nodes = [parse_key_values(line) for line in (RECORDED / "scontrol_nodes.txt").read_text().splitlines()]
    n1 = next(n for n in nodes if n["NodeName"] == "n1")
    assert n1["NodeAddr"] == "127.0.1.1" and n1["Port"] == "17001"
    assert parse_gres(n1["Gres"]) == [("gpu", "h100", 4)]
    assert parse_key_values("A=1 Reason=not responding B=2") == {"A": "1", "Reason": "not responding", "B": "2"}


def test_gres_forms() -> None:
    assert parse_gres("gpu:h100:4(S:0-1),gpu:a100:2") == [("gpu", "h100", 4), ("gpu", "a100", 2)]
    assert parse_gres("gpu:2") == [("gpu", None, 2)]
    assert parse_gres("(null)") == []
    # squeue %b / scontrol TresPerNode: 22.05 prefixes 'gres:', 24.11 and later 'gres/', on every item
    assert parse_gres("gres:gpu:h100:1") == parse_gres("gres/gpu:h100:1") == [("gpu", "h100", 1)]
    assert parse_gres("gres/gpu:2,gres/shard:4") == [("gpu", None, 2), ("shard", None, 4)]


def test_sbatch_job_id() -> None:
    assert parse_sbatch_job_id("Submitted batch job 42\n") == "42"
    assert parse_sbatch_job_id("42;devcluster") == "42"
    with pytest.raises(ValueError):
        parse_sbatch_job_id("sbatch: error: nope")


def test_squeue_records() -> None:
    from hpc_aidc.scheduler.parse import parse_squeue

    by_id = {r.job_id: r for r in parse_squeue((RECORDED / "squeue.txt").read_text())}
    pending = by_id["47_[0-1]"]
    assert (pending.name, pending.state, pending.nnodes, pending.gpus) == ("wait|ing", "PENDING", 2, 4)
    assert pending.start is None
    running = by_id["46"]
    assert (running.state, running.nodelist, running.gpus, running.elapsed_s) == ("RUNNING", "n[1-4]", 16, 1)
    assert by_id["45"].gpus == 0
