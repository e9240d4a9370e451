"""`hpcai submit sweep` and `hpcai sweep show`: a sweep is ONE Slurm job array, one task per trial.

    <job_root>/<user>/sweep-<time>-<hex>/       the sweep: sweep.json, trials/<i>.json (resolved, validated
                                                configs), the batch script and the array tasks' batch logs
    <job_root>/<user>/<array job>_<i>/          trial i's job directory, as `hpcai submit train` makes one:
                                                metrics.jsonl, checkpoints/, summary.json, task logs
    <job_root>/<user>/sweeps/<array job>        the sweep's directory, for `hpcai sweep show ID`

Nothing is half-written: the sweep directory is removed again when sbatch refuses the array. Results are
read back with one sacct call for the whole array; a trial's state is Slurm's (a failed trial shows as
FAILED, whatever files it left)."""

from __future__ import annotations

import json
import secrets
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpc_aidc.errors import ConfigError, JobNotFoundError, SpecError, expected
from hpc_aidc.formats.sweep_trial import TRIALS, trial_path
from hpc_aidc.ids import parse_job_id
from hpc_aidc.render.batch_script import array_script, array_spec, module_command
from hpc_aidc.render.progress import read_metrics
from hpc_aidc.render.sweep import TrialResult
from hpc_aidc.scheduler.infer import array_task, max_array_size
from hpc_aidc.scheduler.parse import AccountingRecord
from hpc_aidc.scheduler.request import BatchJob, FileWrite, JobRequest, job_ref
from hpc_aidc.spec.policy import PolicyRequest
from hpc_aidc.spec.resources import Resources
from hpc_aidc.spec.sweep import SweepSpec
from hpc_aidc.spec.train import TrainConfig

INDEX = "sweeps"
SWEEP_FILE = "sweep.json"
SCRIPT = "sweep.sbatch"
AUDIT_TAG = "hpcai-submit-sweep"


@dataclass(frozen=True)
class Trial:
    index: int
    overrides: dict[str, Any]
    config: TrainConfig        # resolved (precision) and validated
    env: dict[str, str]        # the trial's own job environment (its grace record key, ...)


@dataclass(frozen=True)
class SweepPlan:
    folder: Path               # the sweep directory, made when the request is submitted
    user_dir: Path
    config_path: str
    spec: SweepSpec
    trials: tuple[Trial, ...]
    resources: Resources
    parameters: dict[str, Any]
    policy: PolicyRequest

    @property
    def array(self) -> str:
        return array_spec(f"0-{len(self.trials) - 1}", self.spec.max_concurrent)

    def script(self) -> str:
        command = module_command(sys.executable, "hpc_aidc.node.sweep_trial", str(self.folder))
        return array_script(self.parameters, self.folder, command, self.array, task_logs=self.user_dir / "%A_%a")

    def request(self, now: float) -> JobRequest:
        """The sweep directory (its trials' resolved configs, its record), the array, and once sbatch has
        numbered it the record's array id and the index entry `hpcai sweep show ID` reads."""
        trials = tuple(FileWrite(trial_path(self.folder, t.index), json.dumps(
            {"index": t.index, "overrides": t.overrides, "config": t.config.to_dict(), "env": t.env,
             "user_dir": str(self.user_dir)}, indent=2)) for t in self.trials)
        record = {"config": self.config_path, "grid": [a.text() for a in self.spec.axes],
                  "random": self.spec.random, "seed": self.spec.seed, "max_concurrent": self.spec.max_concurrent,
                  "trials": [t.overrides for t in self.trials], "user_dir": str(self.user_dir), "submitted": now}
        return JobRequest(
            kind="sweep", user_dir=self.user_dir, policy=self.policy, audit_tag=AUDIT_TAG,
            jobs=(BatchJob(self.script(), path=self.folder / SCRIPT),),
            folders=(self.folder, self.folder / TRIALS),
            before=(*trials, FileWrite(self.folder / SWEEP_FILE, json.dumps(record, indent=2))),
            after=(FileWrite(self.folder / SWEEP_FILE, json.dumps({**record, "array_job_id": job_ref(0)}, indent=2)),
                   FileWrite(self.user_dir / INDEX / job_ref(0), str(self.folder) + "\n")),
            output=str(self.folder))


def new_sweep_folder(user_dir: Path) -> Path:
    return user_dir / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def trial_folder_setup(user_dir: Path) -> str:
    """The batch script line that makes the trial's job directory, where srun writes its task logs."""
    return f'mkdir -p -- {shlex.quote(str(user_dir))}/"${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"'


def check_array_size(count: int) -> None:
    cap = max_array_size()
    if count > cap:
        raise SpecError(expected(f"at most {cap} trials (the cluster's MaxArraySize)", count,
                                 "Use --random N to draw fewer, or shorten the --grid lists."))


def submitted_summary(plan: SweepPlan, array_job: str) -> dict[str, Any]:
    return {"sweep_id": array_job, "folder": str(plan.folder), "trials": len(plan.trials), "array": plan.array,
            "jobs": [f"{array_job}_{t.index}" for t in plan.trials]}


def sweep_folder(user_dir: Path, sweep_id: str) -> Path:
    job = parse_job_id(sweep_id, "Pass the sweep's id (its array job id) as `hpcai submit sweep` printed it.")
    try:
        return Path((user_dir / INDEX / job).read_text().strip())
    except FileNotFoundError:
        raise JobNotFoundError(expected(f"a sweep {job} of yours (in {user_dir / INDEX})", "none",
                                        "Pass the id `hpcai submit sweep` printed.")) from None


def _latest_runs(array_job: str) -> dict[int, AccountingRecord]:
    """Trial index -> its latest run as accounting has it (pending trials from their compact row), from
    one sacct call over the whole array."""
    from hpc_aidc.scheduler.accounting import query_jobs

    out: dict[int, AccountingRecord] = {}
    for r in query_jobs(job_ids=[array_job]):
        task = array_task(r.job_id)
        if task is not None and task[0] == array_job:
            out.update(dict.fromkeys(task[1], r))
    return out


def _energy_kwh(store: Path, job_id: str, admin_comment: str | None) -> float | None:
    """The trial's GPU energy over all its runs: the summary in accounting, else its energy records
    (`job_id`: the id they are stored under, the task's raw id)."""
    from hpc_aidc.monitor import acct, records
    from hpc_aidc.monitor.summary import combine_runs

    if admin_comment and acct.contains_summary(admin_comment):
        return acct.decode(admin_comment).gpu_kwh
    runs = records.job_runs(store, job_id)
    return combine_runs([r.totals for r in runs]).gpu_kwh if runs else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def sweep_results(user_dir: Path, energy_store: Path, sweep_id: str) -> tuple[dict[str, Any], list[TrialResult]]:
    """(the sweep's record, one result per trial in task order)."""
    from hpc_aidc.scheduler.energy_accounting import records_job_id

    folder = sweep_folder(user_dir, sweep_id)
    record = _read_json(folder / SWEEP_FILE)
    if not isinstance(record, dict) or "array_job_id" not in record:
        raise ConfigError(expected(f"a sweep record in {folder / SWEEP_FILE}", "none or a damaged one",
                                   "The sweep directory was changed; submit the sweep again."))
    array_job = str(record["array_job_id"])
    runs = _latest_runs(array_job)
    results = []
    for index, overrides in enumerate(record["trials"]):
        job_id = f"{array_job}_{index}"
        trial_dir = Path(record["user_dir"]) / job_id
        run = runs.get(index)
        try:
            events = read_metrics((trial_dir / "metrics.jsonl").read_text(errors="replace").splitlines())
        except OSError:
            events = []
        started = run is not None and run.job_id == job_id  # not a pending array's compact row
        results.append(TrialResult(
            index=index, job_id=job_id, overrides=overrides, state=run.state if run else "PENDING",
            summary=_read_json(trial_dir / "summary.json"), events=tuple(events),
            gpu_hours=run.gpus * run.elapsed_s / 3600 if run and started else 0.0,
            kwh=_energy_kwh(energy_store, records_job_id(job_id, run.job_id_raw if run and started else None),
                            run.admin_comment if run and started else None)))
    return {**record, "folder": str(folder)}, results
