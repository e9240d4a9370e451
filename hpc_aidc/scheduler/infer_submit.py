"""`hpcai submit infer`, `infer retry` and `infer status` end to end: validate everything before anything is
written (model, task, input, output, memory, resources), write the plan, submit the array windows, and
read back where a run stands. Nothing is half-written: a refused submission leaves the output directory
as it was."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpc_aidc.data.infer_inputs import plan_inputs
from hpc_aidc.errors import ConfigError, SpecError, expected
from hpc_aidc.formats.infer_plan import (
    PLAN,
    SUBMISSIONS,
    InferPlan,
    load_plan,
    make_plan,
    partial_rows,
    plan_text,
    read_done,
    read_failures,
    read_submissions,
    same_run,
    submission_line,
)
from hpc_aidc.formats.infer_status import Progress, progress, task_of
from hpc_aidc.formats.model_source import ModelSource, resolve_model
from hpc_aidc.ids import current_user
from hpc_aidc.render.batch_script import array_script, array_spec, module_command
from hpc_aidc.scheduler.admission import job_parameters, policy_for
from hpc_aidc.scheduler.infer import active_tasks, max_array_size
from hpc_aidc.scheduler.request import BatchJob, FileWrite, JobRequest, job_ref
from hpc_aidc.scheduler.user_folder import check_private_output
from hpc_aidc.site_profile import SiteProfile
from hpc_aidc.spec.infer import InferParams, compact_ranges, parse_infer_params, windows
from hpc_aidc.spec.policy import PolicyRequest, enforce
from hpc_aidc.spec.resources import Resources, parse_resources

DEFAULT_MAX_TASKS = 64
INDEX = "infer-jobs"  # <job_root>/<user>/infer-jobs/<array job id>: the run's output directory
# <job_root>/<user>/infer-<run key>/: a run's batch scripts and its tasks' logs (%A_%a_batch.out, %A_%a_%t_log.out)
RUN_FOLDER_PREFIX = "infer-"
AUDIT_TAG = "hpcai-submit-infer"
# Memory a model needs besides its weights and KV cache (CUDA context, allocator slack), GiB.
_OVERHEAD_GIB = 1.5


@dataclass(frozen=True)
class InferRequest:
    model: str | None
    entry: str | None
    input: str
    output: str
    params: dict[str, Any]
    field: str
    rows_per_shard: int
    tasks: int | None
    gpus_per_task: int | None
    ntasks_per_node: int | None
    cpus_per_task: int | None
    max_concurrent: int | None
    output_format: str
    account: str | None
    partition: str | None
    qos: str | None
    time_limit: str | None
    job_name: str

    @classmethod
    def from_options(cls, o: dict[str, Any]) -> InferRequest:
        names = ("batch_size", "batch_tokens", "max_new_tokens", "temperature", "top_k", "top_p", "seed",
                 "precision", "max_input_tokens", "max_error_rate", "normalize")
        return cls(o["model_src"], o["entry"], o["input_path"], o["output"],
                   {"task": o["task"], **{n: o[n] for n in names}}, o["field"], o["rows_per_shard"], o["tasks"],
                   o["gpus_per_task"], o["ntasks_per_node"], o["cpus_per_task"], o["max_concurrent"],
                   o["output_format"], o["account"], o["partition"], o["qos"], o["time_limit"], o["job_name"])


@dataclass(frozen=True)
class InferSubmission:
    plan: InferPlan
    out: Path
    resources: Resources
    parameters: dict[str, Any]
    policy: PolicyRequest
    folder: Path
    max_concurrent: int | None
    windows: tuple[tuple[int, list[int]], ...]  # (offset, array indices) of each array to submit
    resumed: bool = False

    def scripts(self) -> list[str]:
        return [array_script(self.parameters, self.folder, infer_command(sys.executable, self.out, offset),
                             array_spec(compact_ranges(idx), self.max_concurrent))
                for offset, idx in self.windows]

    def request(self, user: str, now: float) -> JobRequest:
        """The plan (unless resuming), one array per window, and once sbatch has numbered them a line per
        array in the run's submissions and an index entry per array for `hpcai logs` and `jobs`."""
        scripts = self.scripts()
        jobs = tuple(BatchJob(script, path=self.folder / f"array-{offset}-{int(now * 1000)}.sh")
                     for (offset, _), script in zip(self.windows, scripts, strict=True))
        after: list[FileWrite] = []
        for i, window in enumerate(self.windows):
            record = {**self._array(job_ref(i), window), "time": now, "user": user,
                      "resources": _resources_json(self.resources)}
            after += [FileWrite(self.out / SUBMISSIONS, submission_line(record), 0o644, append=True),
                      FileWrite(self.folder.parent / INDEX / job_ref(i), str(self.out) + "\n")]
        return JobRequest(
            kind="inference", user_dir=self.folder.parent, policy=self.policy, audit_tag=AUDIT_TAG, jobs=jobs,
            folders=(self.folder, self.out),
            before=() if self.resumed else (FileWrite(self.out / PLAN, plan_text(self.plan), 0o644),),
            after=tuple(after), output=str(self.out))

    def _array(self, job_id: str, window: tuple[int, list[int]]) -> dict[str, Any]:
        offset, idx = window
        return {"job_id": job_id, "offset": offset, "array": array_spec(compact_ranges(idx), self.max_concurrent),
                "tasks": [offset + t for t in idx]}

    def summary(self, job_ids: tuple[str, ...] = ()) -> dict[str, Any]:
        arrays = [self._array(job_id, window) for job_id, window in zip(job_ids, self.windows, strict=False)]
        summary = {"output": str(self.out), "shards": self.plan.num_shards, "rows": self.plan.input.num_rows,
                   "tasks": self.plan.tasks, "arrays": arrays, "folder": str(self.folder), "resumed": self.resumed}
        return {**summary, "nothing_to_do": True} if not self.windows else summary


def infer_command(python: str, out: Path, offset: int) -> str:
    return module_command(python, "hpc_aidc.node.infer.run", str(out), "--offset", str(int(offset)))


def _resources(site: SiteProfile, r: InferRequest) -> Resources:
    part = site.partition(r.partition)
    gpus = r.gpus_per_task if r.gpus_per_task is not None else (1 if part.gpus_per_node else 0)
    if gpus and r.ntasks_per_node not in (None, gpus):
        raise SpecError(expected(f"--ntasks-per-node {gpus} (one process per GPU) or none", r.ntasks_per_node,
                                 "Leave --ntasks-per-node out with --gpus-per-task."))
    return parse_resources(site, nodes=1, ntasks_per_node=r.ntasks_per_node, gpus_per_node=gpus,
                           gpu_type=part.gpu_type if gpus else None, cpus_per_task=r.cpus_per_task,
                           partition=r.partition, account=r.account, qos=r.qos, time=r.time_limit,
                           job_name=r.job_name)


def estimate_gib(model: ModelSource, params: InferParams, context_tokens: int, bytes_per_value: int) -> float | None:
    """Weights plus the KV cache of one full batch, GiB (None when the model's size is unknown)."""
    if model.kind == "entry" or model.hidden is None:
        return None
    path = Path(model.path)
    files = [p for p in path.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt")] if model.kind == "hf" else []
    weights = sum(p.stat().st_size for p in files) if files else 0
    if model.kind == "hpcai":
        cfg = json.loads((path / "config.json").read_text())["model"]
        weights = 4 * (2 * cfg["vocab_size"] * cfg["d_model"] + cfg["seq_len"] * cfg["d_model"]
                       + cfg["n_layer"] * 12 * cfg["d_model"] ** 2)
        layers = cfg["n_layer"]
    else:
        layers = int(json.loads((path / "config.json").read_text()).get("num_hidden_layers")
                     or json.loads((path / "config.json").read_text()).get("n_layer") or 24)
    rows = params.batch_tokens // max(1, context_tokens) if params.batch_tokens else params.batch_size
    kv = 2 * layers * max(1, rows) * context_tokens * model.hidden * bytes_per_value
    return float((weights * bytes_per_value / 4 + kv) / 2**30 + _OVERHEAD_GIB)


def check_infer_options(site: SiteProfile, r: InferRequest) -> tuple[InferParams, Resources]:
    """The checks that need neither the model nor the input, the site's policy among them (a pipeline runs
    them at submission for an inference stage whose model an earlier stage is still making)."""
    params = parse_infer_params(**r.params)
    if bool(r.model) == bool(r.entry):
        raise SpecError(expected("exactly one of --model or --entry", {"model": r.model, "entry": r.entry},
                                 "Name the model to run."))
    if r.max_concurrent is not None and r.max_concurrent < 1:
        raise SpecError(expected("--max-concurrent >= 1", r.max_concurrent, "Pass a positive count."))
    resources = _resources(site, r)
    enforce(site, policy_for(resources, current_user(), time_given=r.time_limit is not None))
    return params, resources


def prepare(site: SiteProfile, r: InferRequest, say: Callable[[str], None],
            dependency: str | None = None) -> InferSubmission:
    """Every check before anything is written or submitted; raises with a one-line message. `dependency`:
    sbatch's --dependency for every array window (a pipeline stage)."""
    params, resources = check_infer_options(site, r)
    model = resolve_model(r.model or r.entry or "", params.task)
    if Path(r.input).is_file() and Path(r.input).stat().st_size > 256 << 20:
        say(f"reading {r.input} once to plan its shards and checksums")
    inputs = plan_inputs(r.input, r.field, r.rows_per_shard)
    shards = len(inputs.shards)
    tasks = r.tasks if r.tasks is not None else min(shards, DEFAULT_MAX_TASKS)
    if tasks < 1 or tasks > shards:
        raise SpecError(expected(f"--tasks between 1 and the number of input shards ({shards})", tasks,
                                 "Ask for fewer tasks, or smaller shards with --rows-per-shard."))
    part = site.partition(resources.partition)
    gpu = site.gpu_types.get(part.gpu_type or "") if resources.gpus_per_node else None
    if gpu and gpu.memory_gib:
        bytes_per = 4 if params.precision == "fp32" else 2
        context = params.max_input_tokens or model.context or 2048
        need = estimate_gib(model, params, context + (params.max_new_tokens if params.task == "generate" else 0),
                            bytes_per)
        if need is not None and need > 0.9 * gpu.memory_gib:
            raise SpecError(expected(f"a batch that fits one {gpu.name} ({gpu.memory_gib:.0f} GiB)",
                                     f"~{need:.1f} GiB (weights + KV cache of {params.batch_size} rows)",
                                     "Lower --batch-size or --max-input-tokens, or use --batch-tokens."))
    out = Path(r.output).resolve()
    check_private_output(out, "--output")
    plan = make_plan(inputs, model, params, tasks, r.output_format, str(site.energy_store))
    resumed = False
    if (out / PLAN).exists():
        existing = load_plan(out)
        differs = same_run(existing, plan)
        if differs:
            raise ConfigError(f"Expected --output {out} to hold this run or nothing. Got the results of {differs}. "
                              "Pick a new --output (results of different models or parameters never mix).")
        plan, resumed = existing, True
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(expected(f"--output {out} to be new or empty", "a directory with other files",
                                   "Pick a new --output."))
    if resumed:
        indices = sorted({task_of(k, plan.tasks, plan.num_shards)
                          for k in range(plan.num_shards) if read_done(out, plan, k) is None})
        busy = set(active_tasks(_arrays(out)))
        indices = [i for i in indices if i not in busy]
    else:
        indices = list(range(tasks))
    user_dir = site.job_root / current_user()
    folder = user_dir / f"{RUN_FOLDER_PREFIX}{plan.run_key}"
    return InferSubmission(plan, out, resources, _parameters(site, resources, dependency),
                    policy_for(resources, current_user(), time_given=r.time_limit is not None), folder,
                    r.max_concurrent, tuple(windows(indices, max_array_size())) if indices else (), resumed)


def _parameters(site: SiteProfile, resources: Resources, dependency: str | None = None) -> dict[str, Any]:
    """submitit's parameters for one array task: requeued by Slurm after a node failure or preemption."""
    return job_parameters(site, resources, audit_tag=AUDIT_TAG, additional={"requeue": True},
                          extra_env={"PYTHONUNBUFFERED": "1"}, dependency=dependency)


def _arrays(out: Path) -> list[tuple[str, int]]:
    return [(str(s["job_id"]), int(s["offset"])) for s in read_submissions(out)]


def _resources_json(r: Resources) -> dict[str, Any]:
    return {"gpus_per_task": r.gpus_per_node, "ntasks_per_node": r.ntasks_per_node, "cpus_per_task": r.cpus_per_task,
            "partition": r.partition, "account": r.account, "qos": r.qos, "time_min": r.time_min,
            "job_name": r.job_name}


def infer_output_of(user_dir: Path, job_id: str) -> Path | None:
    """The output directory of the inference run an (array) job belongs to, None for other jobs."""
    try:
        return Path((user_dir / INDEX / job_id.split("_")[0]).read_text().strip())
    except OSError:
        return None


def run_progress(out: Path) -> tuple[InferPlan, Progress]:
    out = out.resolve()
    plan = load_plan(out)
    n = plan.num_shards
    done = {k: rec for k in range(n) if (rec := read_done(out, plan, k)) is not None}
    failures = {k: f for k in range(n) if k not in done and (f := read_failures(out, k))}
    partial = {k: partial_rows(out, k) for k in range(n) if k not in done}
    active = active_tasks(_arrays(out))
    return plan, progress([s.rows for s in plan.input.shards], plan.tasks, done, failures, partial, active)


def retry_run(site: SiteProfile, out: Path, max_concurrent: int | None) -> tuple[InferSubmission, list[int]]:
    """The tasks holding a run's missing and failed shards, prepared as a resumed submission with the last
    one's resources; and those shards."""
    out = out.resolve()
    check_private_output(out, "OUTPUT")
    plan, prog = run_progress(out)
    shards = prog.retryable
    if not shards:
        raise ConfigError(f"Expected missing or failed shards in {out}. Got none to retry: {prog.done} done, "
                          f"{prog.running} running, {prog.pending} pending. See `hpcai infer status {out}`.")
    indices = sorted({task_of(k, plan.tasks, plan.num_shards) for k in shards})
    last = (read_submissions(out) or [{}])[-1].get("resources", {})
    gpus = last.get("gpus_per_task")
    resources = _resources(site, InferRequest(
        None, None, plan.input.path, str(out), {}, plan.input.field, 1, None, gpus,
        None if gpus else last.get("ntasks_per_node"), last.get("cpus_per_task"), max_concurrent,
        plan.output_format, last.get("account"), last.get("partition"), last.get("qos"),
        str(last["time_min"]) if last.get("time_min") else None, last.get("job_name", "hpcai-infer")))
    folder = site.job_root / current_user() / f"{RUN_FOLDER_PREFIX}{plan.run_key}"
    prepared = InferSubmission(plan, out, resources, _parameters(site, resources),
                        policy_for(resources, current_user(), time_given=bool(last.get("time_min"))), folder,
                        max_concurrent, tuple(windows(indices, max_array_size())), resumed=True)
    return prepared, shards

