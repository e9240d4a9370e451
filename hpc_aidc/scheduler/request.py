"""A submission as data (TorchX's AppDef, for Slurm): what every kind's planner returns (run, train, sweep,
infer, data pack, a pipeline's launcher), what `scheduler.submit.submit` hands to Slurm, and what
`--dry-run` prints. Pure: building one reads and writes nothing.

A request is all or nothing: its folders and files are laid down, then its jobs are sbatch'ed in order;
when sbatch refuses one, the jobs it accepted are cancelled and what was laid down is removed again."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpc_aidc.spec.policy import PolicyRequest


def job_ref(index: int) -> str:
    """Stands for the id sbatch gives job `index` of the same request: in a later job's script (its
    --dependency), and in the paths and texts written once the jobs are accepted. A dry run prints it."""
    return f"<job:{index}>"


def _name(fn: Callable[..., Any]) -> str:
    """module:function of a pickled call (a NodeCall names its own)."""
    module = getattr(fn, "module", None) or fn.__module__
    return f"{module}:{getattr(fn, 'function', None) or getattr(fn, '__qualname__', repr(fn))}"


def resolve_refs(text: str, job_ids: Sequence[str]) -> str:
    for index, job_id in enumerate(job_ids):
        text = text.replace(job_ref(index), job_id)
    return text


@dataclass(frozen=True)
class PickledCall:
    """A function submitit pickles beside the job's script (`python -m submitit.core._submit` runs it)."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    folder: Path        # submitit's job folder, with %j for the job id
    time_min: int       # the job's time limit (submitit counts its timeouts against it)


@dataclass(frozen=True)
class BatchJob:
    """One sbatch call: `script` is exactly the text sbatch receives, once job_ref()s are resolved."""

    script: str
    path: Path | None = None          # where the script is laid down; None for a pickled call (submitit's name)
    call: PickledCall | None = None


@dataclass(frozen=True)
class FileWrite:
    """A file laid down before sbatch (removed again when it refuses) or written once the jobs are
    accepted (`after`); job_ref()s in its path and text are resolved then. `append`: one whole line added."""

    path: Path
    text: str
    mode: int = 0o640
    append: bool = False


@dataclass(frozen=True)
class JobRequest:
    kind: str                              # run, train, sweep, infer, data-pack, pipeline-launcher
    user_dir: Path                         # <job_root>/<user>: checked (ours alone) before anything is written
    policy: PolicyRequest | None           # the site's submission policy, checked before anything is written
    audit_tag: str                         # the jobs' --comment: which hpcai command wrote the script
    jobs: tuple[BatchJob, ...]
    folders: tuple[Path, ...] = ()         # made (0750) first, in order; removed on refusal if made here
    before: tuple[FileWrite, ...] = ()
    after: tuple[FileWrite, ...] = ()
    output: str | None = None              # where its result lands (job_ref()s for a job folder)
    ends_with: tuple[int, ...] | None = None  # the jobs whose end is its end (None: all; a pipeline waits on them)

    def scripts(self) -> list[str]:
        return [job.script for job in self.jobs]

    def final_jobs(self) -> tuple[int, ...]:
        return self.ends_with if self.ends_with is not None else tuple(range(len(self.jobs)))

    def to_json(self) -> dict[str, Any]:
        """The whole request (`--dry-run --json`): job_ref()s stand for ids sbatch has not given yet."""
        def job(j: BatchJob) -> dict[str, Any]:
            call = None if j.call is None else {"function": _name(j.call.fn), "folder": str(j.call.folder)}
            return {"script": j.script, "path": None if j.path is None else str(j.path), "pickled_call": call}

        return {"kind": self.kind, "user_dir": str(self.user_dir), "audit_tag": self.audit_tag,
                "policy": None if self.policy is None else dataclasses.asdict(self.policy),
                "jobs": [job(j) for j in self.jobs], "folders": [str(f) for f in self.folders],
                "writes_before": [str(f.path) for f in self.before], "writes_after": [str(f.path) for f in self.after],
                "output": self.output, "ends_with": list(self.final_jobs())}
