"""The plan of a batch-inference run and the layout of its output directory.

The plan (OUT/plan.json) is written once on the login node before anything is submitted: input shards
with checksums, the model's fingerprint, the parameters and their hash, the number of array tasks. Every
task reads it and derives the same split. A shard's completion record is keyed by (input shard
checksum, model fingerprint, parameters hash): a record with another key is not this run's.

OUT/
  plan.json                    the run (one model, one set of parameters, one input)
  submissions.jsonl            one line per sbatch: array job id, window offset, task indices
  shards/<k>.jsonl|.parquet    generate: one output shard per input shard (also score/embed: ids, errors)
  loglik.zarr, n_tokens.zarr   score: one Zarr v3 sharded array each, one zarr shard per input shard
  embeddings.zarr              embed: [rows, width] float32
  done/<k>.json                completion record, written after the shard's outputs were renamed in place
  failed/<k>/<job>.r<run>.json one record per failed attempt (a later success is not shadowed)
  partial/<k>/b<i>.json        flushed batches of a shard in progress (a requeued task resumes there)
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpc_aidc.data.infer_inputs import InputPlan, InputShard, plan_from_json
from hpc_aidc.errors import ConfigError, expected
from hpc_aidc.formats.model_source import ModelSource
from hpc_aidc.fsutil import atomic_write_text
from hpc_aidc.spec.infer import InferParams, params_hash

PLAN = "plan.json"
VERSION = 1
FORMATS = ("jsonl", "parquet")


@dataclass(frozen=True)
class InferPlan:
    input: InputPlan
    model: ModelSource
    params: InferParams
    tasks: int
    output_format: str  # jsonl | parquet (generate, and the per-shard id/error files)
    energy_store: str
    params_sha: str
    created: float

    @property
    def num_shards(self) -> int:
        return len(self.input.shards)

    def key(self, shard: InputShard) -> dict[str, str]:
        return {"input_sha256": shard.sha256, "model": self.model.fingerprint, "params": self.params_sha}

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "input": self.input.to_json(), "model": self.model.to_json(),
                "params": self.params.to_json(), "tasks": self.tasks, "output_format": self.output_format,
                "energy_store": self.energy_store, "params_sha256": self.params_sha, "created": self.created}

    @property
    def normalized(self) -> bool:
        """Whether embeddings are made unit length: --normalize/--no-normalize, else the model's recipe."""
        if self.params.normalize is not None:
            return self.params.normalize
        return self.model.encoder is not None and self.model.encoder.normalize

    @property
    def run_key(self) -> str:
        """One hash for (input, model, parameters): what an output directory holds."""
        doc = {"input": [s.sha256 for s in self.input.shards], "model": self.model.fingerprint,
               "params": self.params_sha}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def make_plan(input_plan: InputPlan, model: ModelSource, params: InferParams, tasks: int, output_format: str,
              energy_store: str) -> InferPlan:
    sha = params_hash(params, {"field": input_plan.field, "format": output_format})
    return InferPlan(input_plan, model, params, tasks, output_format, energy_store, sha, time.time())


def plan_from(d: dict[str, Any]) -> InferPlan:
    if d.get("version") != VERSION:
        raise ConfigError(expected(f"an inference plan of version {VERSION}", d.get("version"),
                                   "Read it with the hpc-aidc version that wrote it."))
    return InferPlan(plan_from_json(d["input"]), ModelSource.from_json(d["model"]), InferParams(**d["params"]),
                     int(d["tasks"]), str(d["output_format"]), str(d["energy_store"]), str(d["params_sha256"]),
                     float(d["created"]))


def load_plan(out: Path) -> InferPlan:
    try:
        return plan_from(json.loads((out / PLAN).read_text()))
    except FileNotFoundError:
        raise ConfigError(expected(f"an inference output directory with {PLAN}", str(out),
                                   "Pass the --output of a `hpcai submit infer` run.")) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"Expected a valid {out / PLAN}. Got: {exc}. The directory was not written by "
                          "hpc-aidc, or was edited.") from None


def plan_text(plan: InferPlan) -> str:
    return json.dumps(plan.to_json(), indent=1)


def write_plan(out: Path, plan: InferPlan) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / PLAN, plan_text(plan))


def same_run(existing: InferPlan, new: InferPlan) -> str | None:
    """None when `new` is the same run as `existing` (resubmitting it resumes); else what differs."""
    if existing.model.fingerprint != new.model.fingerprint:
        return f"another model ({existing.model.path})"
    if existing.params_sha != new.params_sha:
        changed = sorted(k for k, v in existing.params.to_json().items() if new.params.to_json().get(k) != v)
        return f"other parameters ({', '.join(changed) or 'field or format'})"
    if [s.sha256 for s in existing.input.shards] != [s.sha256 for s in new.input.shards]:
        return f"another input ({existing.input.path})"
    return None


# --- layout -----------------------------------------------------------------------------------------------

def shard_name(k: int) -> str:
    return f"{k:06d}"


def done_path(out: Path, k: int) -> Path:
    return out / "done" / f"{shard_name(k)}.json"


def partial_dir(out: Path, k: int) -> Path:
    return out / "partial" / shard_name(k)


def failed_dir(out: Path, k: int) -> Path:
    return out / "failed" / shard_name(k)


def rows_path(out: Path, k: int, fmt: str) -> Path:
    return out / "shards" / f"{shard_name(k)}.{fmt}"


def read_done(out: Path, plan: InferPlan, k: int) -> dict[str, Any] | None:
    """The shard's completion record when it is this run's (same key), else None."""
    try:
        record = json.loads(done_path(out, k).read_text())
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != plan.key(plan.input.shards[k]):
        return None
    return record


SUBMISSIONS = "submissions.jsonl"


def submission_line(record: dict[str, Any]) -> str:
    """One line of SUBMISSIONS per sbatch of this run (appended whole, in one write)."""
    return json.dumps(record, sort_keys=True) + "\n"


def read_submissions(out: Path) -> list[dict[str, Any]]:
    try:
        lines = (out / SUBMISSIONS).read_text().splitlines()
    except FileNotFoundError:
        return []
    out_list = []
    for line in lines:
        try:
            out_list.append(json.loads(line))
        except ValueError:
            continue
    return out_list


def read_failures(out: Path, k: int) -> list[dict[str, Any]]:
    """The shard's failed attempts, oldest first."""
    directory = failed_dir(out, k)
    records = []
    for f in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            records.append(json.loads(f.read_text()))
        except ValueError:
            continue
    return sorted(records, key=lambda r: float(r.get("time", 0)))


def partial_rows(out: Path, k: int) -> int:
    directory = partial_dir(out, k)
    if not directory.is_dir():
        return 0
    rows = 0
    for f in directory.glob("b*.json"):
        try:
            rows += len(json.loads(f.read_text()).get("rows", {}))
        except ValueError:
            continue
    return rows
