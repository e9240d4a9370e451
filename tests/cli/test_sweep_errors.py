"""Bad `hpcai submit sweep` input is refused before anything is written or submitted: one line, exit 2.
Every trial's config is validated, so a value that only one trial gets is caught too."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import RunHpcai, assert_clean_error

BASE = """
[model]
n_layer = 2
[train]
max_steps = 10
"""


@pytest.mark.parametrize(("grid", "flags", "needle"), [
    (["optimizer.lrr=[1e-3,3e-3]"], [], "unknown ['lrr']"),
    (["optimiser.lr=[1e-3]"], [], "unknown ['optimiser']"),
    (["train.micro_batch=[4,0]"], [], "trial 1: train.micro_batch=0"),
    (["train.micro_batch=[4,8.5]"], [], "train.micro_batch to be a int"),
    (["eval.every=[5]", "eval.holdout=[0.5,1.5]"], [], "eval.holdout between 0 and 1"),
    (["train.zero=[1,7]"], [], "--zero from"),
    (["optimizer.lr=[1e-3,3e-3]"], ["--random", "3"], "--random at most the grid's 2 points"),
    (["optimizer.lr=loguniform(1e-4,1e-2)"], [], "--random N with a distribution axis"),
    (["train.micro_batch=[4,8]"], ["--micro-batch", "2"], "from a flag or a --grid, not both"),
    (["optimizer.lr=[1e-3]"], ["--wait"], "no --wait with a sweep"),
    (["optimizer.lr=[1e-3]"], ["--max-concurrent", "0"], "--max-concurrent >= 1"),
    ([], [], "at least one --grid"),
])
def test_bad_sweeps(hpcai: RunHpcai, tmp_path: Path, grid: list[str], flags: list[str], needle: str) -> None:
    config = tmp_path / "base.toml"
    config.write_text(BASE)
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    args = [a for g in grid for a in ("--grid", g)]
    proc = hpcai("submit", "sweep", "--config", str(config), *args, *flags, env={"HPCAI_JOB_ROOT": str(jobs)})
    assert_clean_error(proc, needle)
    assert list(jobs.iterdir()) == []  # nothing written, nothing submitted


def test_an_unknown_sweep(hpcai: RunHpcai, tmp_path: Path) -> None:
    proc = hpcai("sweep", "show", "999999", env={"HPCAI_JOB_ROOT": str(tmp_path)})
    assert_clean_error(proc, "a sweep 999999 of yours")
    assert_clean_error(hpcai("sweep", "show", "not-an-id", env={"HPCAI_JOB_ROOT": str(tmp_path)}))
