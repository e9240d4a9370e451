"""Helpers shared by the tests that submit jobs to the dev cluster (importable by name: tests/ is on sys.path)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Mapping
from typing import Any

from conftest import RunHpcai

from hpc_aidc.scheduler.admin_check import parse_show_config

TINY_MODEL: dict[str, object] = {"preset": "tiny", "n_layer": 2}


def slurm_config() -> dict[str, str]:
    """The running slurmctld's `scontrol show config`, keys lower-cased (as `hpcai admin check` reads it)."""
    return parse_show_config(subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                                            check=True).stdout)


def json_output(proc: subprocess.CompletedProcess[str]) -> Any:
    """What an `hpcai ... --json` printed, parsed; fails with its stderr unless it exited 0."""
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def submit_json(hpcai: RunHpcai, *args: str, **options: Any) -> dict[str, Any]:
    """`hpcai submit ARGS --json` through the `hpcai` fixture (options: user, env, cwd, timeout), with --json
    just before a `--` (the command of `submit run`) or else last; fails with its stderr unless it exited 0,
    and returns what it printed, parsed."""
    cut = args.index("--") if "--" in args else len(args)
    result: dict[str, Any] = json_output(hpcai("submit", *args[:cut], "--json", *args[cut:], **options))
    return result


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)  # a string: JSON's escapes are TOML's


def tiny_train_config(**sections: Mapping[str, object]) -> str:
    """The TOML of a training config for the tiny two-layer GPT (it trains in seconds on the dev cluster's
    CPUs): [model] first (preset "tiny", n_layer 2, and the keys of a `model=` section), then one table per
    keyword in order, e.g. `tiny_train_config(train={"max_steps": 6, "zero": 1}, checkpoint={"every": 3})`."""
    tables = {"model": {**TINY_MODEL, **sections.pop("model", {})}, **sections}
    return "".join(f"[{name}]\n" + "".join(f"{key} = {_toml_value(value)}\n" for key, value in table.items())
                   for name, table in tables.items())


# a requeued job on its way back: the old run ending, then pending (REQUEUE_* while Slurm moves it)
_BACK_IN_QUEUE = {"COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "PENDING"}


def release_requeued(job_id: str, tries: int = 240) -> None:
    """Slurm holds a requeued job two minutes (its StartTime moves ahead); as an admin, let it start as soon as
    it is back in the queue, and again whenever Slurm moves it ahead once more (a job that had failed waits
    for NonZeroExitCode first, and 26.05 sets its hold after that). Returns once the job runs or has left the
    queue; polls every half second and gives up quietly after `tries`: the hold ends by itself, so this only
    saves time and asserts nothing."""
    for _ in range(tries):
        state, _, start = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T|%S"], capture_output=True,
                                         text=True, check=False).stdout.strip().partition("|")
        if state not in _BACK_IN_QUEUE:
            return  # running, ended, or gone from the queue
        if state == "PENDING" and _later_than_now(start):
            subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], capture_output=True,
                           check=False)
        time.sleep(0.5)


def _later_than_now(start: str) -> bool:
    try:
        return time.mktime(time.strptime(start, "%Y-%m-%dT%H:%M:%S")) > time.time() + 2
    except ValueError:  # N/A, Unknown
        return False


def jobs_named(name: str, user: str | None = None) -> str:
    """The ids of the jobs called `name` (of `user`, when given) that squeue lists or sacct knows from the
    last hour: "" when none was submitted."""
    who = ["-u", user] if user else []
    queued = subprocess.run(["squeue", "-h", *who, "-n", name, "-o", "%i"], capture_output=True, text=True,
                            check=True).stdout
    known = subprocess.run(["sacct", "-n", "-X", "-P", *who, "--name", name, "-S", "now-1hours", "-o", "jobid"],
                           capture_output=True, text=True, check=True).stdout
    return (queued + known).strip()
