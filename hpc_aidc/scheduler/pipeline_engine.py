"""The pipeline engine: which stages to submit now, with which dependency, in which order; every stage
checked before any is submitted; the record kept under the pipeline's lock; what a failed submission
leaves cancelled. A stage becomes a JobRequest through the planner the caller gives (the cli turns a
stage's options into its command's request), so each stage is submitted exactly like its own command.

An inference run plans its shards and fingerprints its model when it is submitted: one that uses the
output of a stage still to run is submitted by a small launcher job once that stage has ended
(`python -m hpc_aidc.cli.pipeline_launch`, which calls `launch`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from hpc_aidc.errors import ConfigError, HpcAidcError
from hpc_aidc.scheduler.pipeline import (
    LAUNCHER,
    REUSED,
    SUBMITTED,
    TO_SUBMIT,
    PipelineRecord,
    Resubmission,
    StageEntry,
    lock,
    plan_resubmission,
    read_record,
    write_record,
)
from hpc_aidc.scheduler.request import JobRequest
from hpc_aidc.scheduler.submit import Submitted, dry_run, submit
from hpc_aidc.site_profile import SiteProfile
from hpc_aidc.spec.pipeline import OUTPUT_FIELDS, Pipeline, Stage, dependency_flag, substitute

# (a stage with its outputs substituted, the pipeline file's folder, its --dependency, dry) -> its request.
# dry: check and render only; otherwise the planner may prepare what its command prepares (a pack's plan).
StagePlanner = Callable[[Stage, Path, "str | None", bool], JobRequest]


@dataclass(frozen=True)
class Planners:
    stage: StagePlanner
    launcher: StagePlanner                       # the launcher job of a stage submitted later
    early_check: Callable[[Stage, Path], None]   # that stage's checks needing neither its model nor its input


def needs_launcher(stage: Stage, unmade: set[str]) -> bool:
    """An inference stage that uses the output of a stage still to run."""
    return stage.kind == "infer" and any(u in unmade for u in stage.uses)


def resolved(stage: Stage, outputs: Mapping[str, str]) -> Stage:
    return dataclasses.replace(stage, options=MappingProxyType({k: substitute(v, outputs)
                                                                for k, v in stage.options.items()}))


def placeholder_outputs(job_dir: Callable[[str], str], pipeline: Pipeline, base: Path,
                        known: Mapping[str, str]) -> dict[str, str]:
    """Outputs for checks and dry runs, before sbatch has numbered the jobs: a data pack's or an
    inference run's output is known from its options; a job directory is named by its job id."""
    outputs = dict(known)
    for stage in pipeline.stages:
        if stage.name in outputs:
            continue
        if OUTPUT_FIELDS[stage.kind] == "out":
            value = stage.options.get("out" if stage.kind == "data-pack" else "output", "")
            outputs[stage.name] = str((base / str(value)).resolve())
        else:
            outputs[stage.name] = job_dir(f"<{stage.name} job id>")
    return outputs


@dataclass(frozen=True)
class PipelineSubmission:
    pipeline: Pipeline
    path: Path
    folder: Path
    plan: Resubmission
    outputs: dict[str, str]
    later: frozenset[str]     # stages a launcher job submits

    @property
    def base(self) -> Path:
        return self.path.parent


def prepare(site: SiteProfile, pipeline: Pipeline, path: Path, folder: Path, planners: Planners) -> PipelineSubmission:
    """Every stage still to run checked (its command's own checks, the site's policy, sbatch --test-only
    for its first job) before any is submitted: a mistake in the last stage submits nothing."""
    plan = plan_resubmission(pipeline, read_record(folder))
    known = {name: e.output for name, e in plan.reuse.items() if e.output}
    outputs = placeholder_outputs(lambda n: str(folder.parents[1] / n), pipeline, path.parent, known)
    later = frozenset(n for n in plan.run if needs_launcher(pipeline.stage(n), set(plan.run)))
    for name in plan.run:
        stage = resolved(pipeline.stage(name), outputs)
        if name in later:
            planners.early_check(stage, path.parent)
            dry_run(site, planners.launcher(stage, path.parent, None, True), ask_slurm=True)
        else:
            dry_run(site, planners.stage(stage, path.parent, None, True), ask_slurm=True)
    return PipelineSubmission(pipeline, path, folder, plan, outputs, later)


def dry_run_scripts(prepared: PipelineSubmission, planners: Planners) -> list[tuple[str, str]]:
    """(a header naming the stage, a script) for every job the submission would make; dependencies on
    jobs not numbered yet show as <stage>."""
    out: list[tuple[str, str]] = []
    for name in prepared.plan.run:
        stage = resolved(prepared.pipeline.stage(name), prepared.outputs)
        placeholder = dependency_flag(stage, {a: [f"<{a}>"] for a in stage.after if a in prepared.plan.run})
        if name in prepared.later:
            request = planners.launcher(stage, prepared.base, placeholder, True)
            header = f"# stage {name} ({stage.kind}): submitted by this launcher job once its inputs exist"
        else:
            request = planners.stage(stage, prepared.base, placeholder, True)
            header = f"# stage {name} ({stage.kind})"
        out.extend((header, script) for script in request.scripts())
    return out


def submit_pipeline(site: SiteProfile, prepared: PipelineSubmission, planners: Planners) -> PipelineRecord:
    """Submit every stage that can be submitted now, and record the rest for their launcher jobs."""
    p = prepared
    stages = {**p.plan.reuse, **{n: StageEntry.new(p.pipeline.stage(n)) for n in p.plan.run}}
    record = PipelineRecord(p.pipeline.name, str(p.path), str(p.base), p.path.read_text(),
                            [s.name for s in p.pipeline.stages], stages)
    with lock(p.folder):  # a launcher job of this pipeline reads the record only once it is whole
        advance(site, p.pipeline, p.base, stages, planners, None)
        write_record(p.folder, record)
    return record


def launch(site: SiteProfile, folder: Path, name: str, planners: Planners,
           parse: Callable[[PipelineRecord], Pipeline]) -> list[str]:
    """The launcher job's work: submit its stage (its upstream has ended, so no dependency) and every stage
    now ready after it, then record them; the job ids submitted."""
    folder = folder.resolve()
    with lock(folder):
        record = read_record(folder)
        if record is None or name not in record.stages or record.stages[name].state != LAUNCHER:
            raise ConfigError(f"Expected stage {name!r} of the pipeline in {folder} to wait for its launcher job. "
                              "Got none waiting. Submit the pipeline with `hpcai submit pipeline FILE.toml`.")
        submitted = advance(site, parse(record), Path(record.base), record.stages, planners, name)
        write_record(folder, record)
    return submitted


def advance(site: SiteProfile, pipeline: Pipeline, base: Path, entries: dict[str, StageEntry],
            planners: Planners, launching: str | None) -> list[str]:
    """Submit, in order, every stage still to submit whose upstream stages have jobs to wait for (or are
    complete from before), updating `entries`; returns the job ids. If sbatch refuses one, what this call
    submitted is cancelled (nothing is left half-submitted) and the error says why."""
    from hpc_aidc.scheduler.accounting import cancel_jobs

    outputs = {n: e.output for n, e in entries.items() if e.output}
    unmade = {n for n, e in entries.items() if e.state != REUSED}
    submitted: list[str] = []
    try:
        for stage in pipeline.stages:
            entry = entries[stage.name]
            due = entry.state == TO_SUBMIT or (stage.name == launching and entry.state == LAUNCHER)
            if not due or not all(entries[a].state == REUSED or entries[a].wait_on for a in stage.after):
                continue
            waits = {a: entries[a].wait_on for a in stage.after if entries[a].state != REUSED}
            # the launcher runs once its stage's upstream has ended: the stage itself need not wait
            dependency = None if stage.name == launching else dependency_flag(stage, waits)
            stage_now = resolved(stage, outputs)
            if stage.name != launching and needs_launcher(stage, unmade):
                done = submit(site, planners.launcher(stage_now, base, dependency, False))
                entry.jobs, entry.state = list(done.job_ids), LAUNCHER
                submitted.extend(done.job_ids)
                continue
            done = submit(site, planners.stage(stage_now, base, dependency, False))
            submitted.extend(done.job_ids)
            _record_submitted(entry, done)
            if entry.output:
                outputs[stage.name] = entry.output
    except HpcAidcError:
        if submitted:
            cancel_jobs(submitted)
        raise
    return submitted


def _record_submitted(entry: StageEntry, done: Submitted) -> None:
    request = done.request
    entry.jobs = [*entry.jobs, *done.job_ids]
    entry.wait_on = [done.job_ids[i] for i in request.final_jobs() if i < len(done.job_ids)]
    entry.output = done.resolve(request.output) if request.output else None
    entry.state = SUBMITTED
