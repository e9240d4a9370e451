"""`hpcai submit infer`, `infer retry` and `infer status` end to end: validate everything before anything is
written (model, task, input, output, memory, resources), write the plan, submit the array windows, and
read back where a run stands. Nothing is half-written: a refused submission leaves the output directory
as it was."""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpc_aidc.data.infer_inputs import plan_inputs
from hpc_aidc.errors import ConfigError, SpecError, expected
from hpc_aidc.formats.infer_plan import (
    PLAN,
    InferPlan,
    append_submission,
    load_plan,
    make_plan,
    partial_rows,
    read_done,
    read_failures,
    read_submissions,
    same_run,
    write_plan,
)
from hpc_aidc.formats.infer_status import Progress, progress, task_of
from hpc_aidc.formats.model_source import ModelSource, resolve_model
from hpc_aidc.ids import current_user
from hpc_aidc.render.infer import array_spec, infer_array_script, infer_command
from hpc_aidc.scheduler.admission import admit, job_parameters
from hpc_aidc.scheduler.infer import active_tasks, max_array_size
from hpc_aidc.scheduler.submit import prepare_user_folder, sbatch_file
from hpc_aidc.site import SiteProfile
from hpc_aidc.spec.infer import InferParams, compact_ranges, parse_infer_params, windows
from hpc_aidc.spec.resources import Resources, parse_resources

DEFAULT_MAX_TASKS = 64
INDEX = "infer-jobs"  # <job_root>/<user>/infer-jobs/<array job id>: the run's output directory
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
                 "precision", "max_input_tokens", "max_error_rate")
        return cls(o["model_src"], o["entry"], o["input_path"], o["output"],
                   {"task": o["task"], **{n: o[n] for n in names}}, o["field"], o["rows_per_shard"], o["tasks"],
                   o["gpus_per_task"], o["ntasks_per_node"], o["cpus_per_task"], o["max_concurrent"],
                   o["output_format"], o["account"], o["partition"], o["qos"], o["time_limit"], o["job_name"])


@dataclass
class Prepared:
    plan: InferPlan
    out: Path
    resources: Resources
    parameters: dict[str, Any]
    folder: Path
    indices: list[int]  # the array tasks to submit
    max_concurrent: int | None
    windows: list[tuple[int, list[int]]] = field(default_factory=list)
    resumed: bool = False

    def scripts(self) -> list[str]:
        return [infer_array_script(self.parameters, self.folder, infer_command(sys.executable, self.out, off),
                                   array_spec(compact_ranges(idx), self.max_concurrent))
                for off, idx in self.windows]


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


def check_request(site: SiteProfile, r: InferRequest) -> tuple[InferParams, Resources]:
    """The checks that need neither the model nor the input (a pipeline runs them at submission for an
    inference stage whose model an earlier stage is still making)."""
    params = parse_infer_params(**r.params)
    if bool(r.model) == bool(r.entry):
        raise SpecError(expected("exactly one of --model or --entry", {"model": r.model, "entry": r.entry},
                                 "Name the model to run."))
    if r.max_concurrent is not None and r.max_concurrent < 1:
        raise SpecError(expected("--max-concurrent >= 1", r.max_concurrent, "Pass a positive count."))
    resources = _resources(site, r)
    admit(site, resources, current_user(), time_given=r.time_limit is not None)
    return params, resources


def prepare(site: SiteProfile, r: InferRequest, say: Callable[[str], None], dependency: str | None = None) -> Prepared:
    """Every check before anything is written or submitted; raises with a one-line message. `dependency`:
    sbatch's --dependency for every array window (a pipeline stage)."""
    params, resources = check_request(site, r)
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
    folder = user_dir / f"infer-{plan.run_key}"
    parameters = _parameters(site, resources, dependency)
    prep = Prepared(plan, out, resources, parameters, folder, indices, r.max_concurrent, resumed=resumed)
    prep.windows = windows(indices, max_array_size()) if indices else []
    return prep


def _parameters(site: SiteProfile, resources: Resources, dependency: str | None = None) -> dict[str, Any]:
    """submitit's parameters for one array task: requeued by Slurm after a node failure or preemption."""
    return job_parameters(site, resources, audit_tag="hpcai-submit-infer", additional={"requeue": True},
                          extra_env={"PYTHONUNBUFFERED": "1"}, dependency=dependency)


def _arrays(out: Path) -> list[tuple[str, int]]:
    return [(str(s["job_id"]), int(s["offset"])) for s in read_submissions(out)]


def submit(site: SiteProfile, p: Prepared, submit_env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Write the plan (unless resuming), then sbatch each window; a refusal removes what this call wrote.
    `submit_env`: variables every task gets through sbatch's environment (the submit context)."""
    summary = {"output": str(p.out), "shards": p.plan.num_shards, "rows": p.plan.input.num_rows,
               "tasks": p.plan.tasks, "arrays": [], "folder": str(p.folder), "resumed": p.resumed}
    if not p.windows:
        return {**summary, "nothing_to_do": True}
    prepare_user_folder(p.folder.parent)
    p.folder.mkdir(mode=0o750, exist_ok=True)
    created_out = not p.out.exists()
    if not p.resumed:
        write_plan(p.out, p.plan)
    submitted: list[dict[str, Any]] = []
    try:
        for (offset, idx), script in zip(p.windows, p.scripts(), strict=True):
            path = p.folder / f"array-{offset}-{int(time.time() * 1000)}.sh"
            path.write_text(script)
            job_id = sbatch_file(path, submit_env, "the inference array")
            record = {"job_id": job_id, "offset": offset, "array": array_spec(compact_ranges(idx), p.max_concurrent),
                      "tasks": [offset + i for i in idx], "time": time.time(), "user": current_user(),
                      "resources": _resources_json(p.resources)}
            append_submission(p.out, record)
            submitted.append(record)
            index = p.folder.parent / INDEX
            index.mkdir(mode=0o750, exist_ok=True)
            (index / job_id).write_text(str(p.out) + "\n")
    except Exception:
        if not submitted and not p.resumed:
            (p.out / PLAN).unlink(missing_ok=True)
            if created_out:
                shutil.rmtree(p.out, ignore_errors=True)
        raise
    return {**summary, "arrays": submitted}


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


def retry_run(site: SiteProfile, out: Path, max_concurrent: int | None, dry_run: bool) -> dict[str, Any]:
    out = out.resolve()
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
    parameters = _parameters(site, resources)
    folder = site.job_root / current_user() / f"infer-{plan.run_key}"
    prep = Prepared(plan, out, resources, parameters, folder, indices, max_concurrent, resumed=True)
    prep.windows = windows(indices, max_array_size())
    result: dict[str, Any] = {"retry_shards": shards, "shard_list": compact_ranges(shards),
                              "task_list": compact_ranges(indices)}
    if dry_run:
        return {**result, "scripts": prep.scripts()}
    return {**result, **submit(site, prep)}

