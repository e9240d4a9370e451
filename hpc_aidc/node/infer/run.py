"""One process of a batch-inference array task: `python -m hpc_aidc.node.infer.run OUT --offset O`.

Array task `offset + SLURM_ARRAY_TASK_ID` takes its contiguous range of input shards (the same split
every task derives from the plan); with several processes per task (one per GPU) each takes every
n-th of those. For each shard not complete for this run's key:
- rows are read, tokenised and checked (a bad row is recorded with its error, never fatal);
- rows are sorted by length and cut into batches (deterministic: the same batches on every run);
- after each batch its results are flushed (partial/<k>/b<i>.json), so a requeued task resumes at the
  next batch and the final output is bitwise that of a one-shot run;
- out of memory halves the batch and retries; a batch of one that still fails is an engine failure,
  not a row error; too many bad rows (above --max-error-rate) stop the task with a clear message;
- the outputs are written whole and renamed in place, then the completion record.
On Slurm's warning signal (USR2) the task stops at the next batch boundary and requeues itself."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from hpc_aidc.data.infer_inputs import Row, read_shard
from hpc_aidc.errors import HpcAidcError
from hpc_aidc.formats.infer_plan import (
    InferPlan,
    done_path,
    failed_dir,
    load_plan,
    partial_dir,
    read_done,
    rows_path,
)
from hpc_aidc.monitor.restarts import run_of
from hpc_aidc.node.infer import out as infer_out
from hpc_aidc.node.infer.load import load_engine
from hpc_aidc.node.infer.model import Engine, row_seed
from hpc_aidc.node.slurm_env import requeue_target
from hpc_aidc.slurm_client import requeue
from hpc_aidc.spec.infer import shard_range

MIN_ROWS_FOR_ERROR_RATE = 20


class TooManyErrors(HpcAidcError):
    """More bad rows than --max-error-rate allows."""


class EngineFailure(HpcAidcError):
    """The model cannot run a batch even of one row (memory, a dead device)."""


class _Warning:
    raised = False

    @classmethod
    def handler(cls, signum: int, frame: FrameType | None) -> None:
        cls.raised = True


def make_batches(lengths: Sequence[int], batch_size: int, batch_tokens: int | None) -> list[list[int]]:
    """Row indices sorted by length (then index) and cut into batches of at most batch_size rows and, when
    given, batch_tokens padded tokens. Pure and deterministic."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = max(lengths[i], max((lengths[j] for j in current), default=0))
        if current and (len(current) >= batch_size or (batch_tokens and (len(current) + 1) * width > batch_tokens)):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    return name == "OutOfMemoryError" or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


@dataclass
class PreparedRow:
    """A row ready for the model: its tokens (or text for a user function), or its error."""

    row: Row
    ids: list[int] | None = None
    error: str | None = None

    @property
    def length(self) -> int:
        if self.ids is not None:
            return len(self.ids)
        return len(self.row.text or "") // 4 + 1


class ShardRunner:
    def __init__(self, out: Path, plan: InferPlan, job: str, run: int, node: str) -> None:
        self.out, self.plan, self.job, self.run, self.node = out, plan, job, run, node
        self.params = plan.params
        self._engine: Engine | None = None
        self.task_rows = 0  # rows (and bad rows) of the shards this process finished, for --max-error-rate
        self.task_errors = 0

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = load_engine(self.plan.model, self.params.precision, self.out / ".model", self.params.task)
        return self._engine

    # --- rows ---------------------------------------------------------------------------------------------
    def prepare(self, row: Row) -> PreparedRow:
        if row.error is not None:
            return PreparedRow(row, error=row.error)
        engine = self.engine
        if not engine.token_level:
            return PreparedRow(row)
        try:
            ids = [int(t) for t in row.tokens] if row.tokens is not None else engine.encode(row.text or "")
        except Exception as exc:  # a tokenizer's failure on one row is that row's error
            return PreparedRow(row, error=f"cannot tokenise: {type(exc).__name__}: {exc}"[:300])
        vocab = engine.vocab_size
        bad = next((t for t in ids if t < 0 or (vocab is not None and t >= vocab)), None)
        if bad is not None:
            return PreparedRow(row, error=f"token id {bad} out of the vocabulary (0..{(vocab or 0) - 1})")
        if not ids:
            return PreparedRow(row, error="empty after tokenisation")
        p = self.params
        if p.task == "score" and len(ids) < 2:
            return PreparedRow(row, error="needs at least 2 tokens to score")
        limit = p.max_input_tokens
        need = len(ids) + (p.max_new_tokens if p.task == "generate" else 0)
        if limit is not None and len(ids) > limit:
            return PreparedRow(row, error=f"over-long input: {len(ids)} tokens > --max-input-tokens {limit}")
        if engine.context is not None and need > engine.context:
            extra = f" + {p.max_new_tokens} new" if p.task == "generate" else ""
            return PreparedRow(row, error=f"over-long input: {len(ids)} tokens{extra} > the model's context "
                                       f"{engine.context}")
        return PreparedRow(row, ids=ids)

    # --- batches ------------------------------------------------------------------------------------------
    def compute(self, batch: list[PreparedRow]) -> list[dict[str, Any]]:
        """Results of a batch; out of memory halves it (a single row that does not fit is fatal)."""
        try:
            return self._compute(batch)
        except Exception as exc:
            if not _is_oom(exc):
                raise
            _free_memory()
            if len(batch) == 1:
                raise EngineFailure(f"Expected one row to fit the device. Got out of memory on row "
                                    f"{batch[0].row.id} ({batch[0].length} tokens). Lower --max-input-tokens "
                                    "or use bigger GPUs.") from None
            half = len(batch) // 2
            return self.compute(batch[:half]) + self.compute(batch[half:])

    def _compute(self, batch: list[PreparedRow]) -> list[dict[str, Any]]:
        results = self._compute_raw(batch)
        if self.params.task == "embed" and self.plan.normalized:
            for r in results:
                if "vector" in r:
                    r["vector"] = unit_length(r["vector"])
        return results

    def _compute_raw(self, batch: list[PreparedRow]) -> list[dict[str, Any]]:
        task, engine = self.params.task, self.engine
        if not engine.token_level:
            return self._compute_entry(batch)
        ids = [p.ids or [] for p in batch]
        if task == "generate":
            seeds = [row_seed(self.params.seed, p.row.id) for p in batch]
            outs = engine.generate(ids, seeds, self.params)
            return [{"output": engine.decode(g.tokens), "tokens": g.tokens, "input_tokens": len(i),
                     "finish_reason": g.finish_reason} for g, i in zip(outs, ids, strict=True)]
        if task == "score":
            return [_nan_checked({"loglik": ll, "n_tokens": n}, ll)
                    for ll, n in engine.score(ids)]
        vectors = engine.embed(ids)
        return [_nan_checked({"vector": [float(x) for x in v], "n_tokens": len(i)}, float(v.sum()))
                for v, i in zip(vectors, ids, strict=True)]

    def _compute_entry(self, batch: list[PreparedRow]) -> list[dict[str, Any]]:
        """A user function: the whole batch, and row by row when the batch call raises, so the row that
        raised is recorded and the others go on."""
        from hpc_aidc.node.infer.model import EntryEngine

        engine = self.engine
        assert isinstance(engine, EntryEngine)
        inputs = [p.row.text if p.row.text is not None else [int(t) for t in (p.row.tokens or [])] for p in batch]
        try:
            outs = engine.call(inputs, self.params.task, self.params)
            return [self._entry_result(o) for o in outs]
        except Exception as exc:
            if _is_oom(exc) and len(batch) > 1:
                raise
            results = []
            for one in inputs:
                try:
                    results.append(self._entry_result(engine.call([one], self.params.task, self.params)[0]))
                except Exception as row_exc:
                    if _is_oom(row_exc):
                        raise
                    results.append({"error": f"entry raised {type(row_exc).__name__}: {row_exc}"[:300]})
            return results

    def _entry_result(self, value: Any) -> dict[str, Any]:
        task = self.params.task
        if task == "generate":
            return {"output": str(value), "tokens": [], "input_tokens": None, "finish_reason": "stop"}
        if task == "score":
            ll = float(value)
            return _nan_checked({"loglik": ll, "n_tokens": None}, ll)
        vector = [float(x) for x in value]
        return _nan_checked({"vector": vector, "n_tokens": None}, sum(vector))

    # --- a shard ------------------------------------------------------------------------------------------
    def run_shard(self, k: int) -> str:
        """'done' (already, or now), or 'stopped' (warning signal: requeue)."""
        plan = self.plan
        if read_done(self.out, plan, k) is not None:
            return "done"
        shard = plan.input.shards[k]
        _ = self.engine  # loaded before the clock starts: a shard's seconds are its own work
        started = time.time()
        rows = read_shard(plan.input, shard)
        prepared = [self.prepare(r) for r in rows]
        extra = self.params.max_new_tokens if self.params.task == "generate" else 0
        todo = [i for i, p in enumerate(prepared) if p.error is None]
        batches = make_batches([prepared[i].length + extra for i in todo], self.params.batch_size,
                               self.params.batch_tokens)
        batches = [[todo[j] for j in b] for b in batches]
        key = plan.key(shard)
        results: dict[int, dict[str, Any]] = {i: {"error": p.error} for i, p in enumerate(prepared) if p.error}
        flushed = self._flushed(k, key)
        for b, members in enumerate(batches):
            if b in flushed:
                results.update({int(i): r for i, r in flushed[b].items()})
                continue
            if _Warning.raised:
                return "stopped"
            computed = self.compute([prepared[i] for i in members])
            done = dict(zip(members, computed, strict=True))
            infer_out.write_json_atomic(partial_dir(self.out, k) / f"b{b:06d}.json",
                                        {"key": key, "batch": b, "rows": {str(i): r for i, r in done.items()}})
            results.update(done)
            self._report_work(done, prepared)
            self._check_error_rate(k, results, rows)
        self._check_error_rate(k, results, rows)
        self._write_outputs(k, rows, prepared, results)
        stats = _stats(results)
        self.task_rows += len(rows)
        self.task_errors += stats["error_rows"]
        infer_out.write_json_atomic(done_path(self.out, k), {
            "shard": k, "key": key, "rows": len(rows), **stats, "seconds": round(time.time() - started, 3),
            "job": self.job, "run": self.run, "node": self.node, "finished": time.time()})
        import shutil

        shutil.rmtree(partial_dir(self.out, k), ignore_errors=True)
        return "done"

    def _flushed(self, k: int, key: dict[str, str]) -> dict[int, dict[str, dict[str, Any]]]:
        out: dict[int, dict[str, dict[str, Any]]] = {}
        directory = partial_dir(self.out, k)
        if not directory.is_dir():
            return out
        for f in sorted(directory.glob("b*.json")):
            try:
                doc = json.loads(f.read_text())
            except ValueError:
                continue  # a torn file cannot exist (atomic writes), but never trust one
            if doc.get("key") == key:
                out[int(doc["batch"])] = doc["rows"]
        return out

    def _check_error_rate(self, k: int, results: dict[int, dict[str, Any]], rows: list[Row]) -> None:
        """Stop when the share of bad rows, over what this process has seen so far (at least
        MIN_ROWS_FOR_ERROR_RATE rows), is above --max-error-rate; the message shows a few of them."""
        bad_here = sorted(i for i, r in results.items() if r.get("error"))
        seen = self.task_rows + len(results)
        bad = self.task_errors + len(bad_here)
        if seen >= MIN_ROWS_FOR_ERROR_RATE and bad / seen > self.params.max_error_rate:
            examples = "; ".join(f"row {rows[i].id}: {results[i]['error']}" for i in bad_here[:3])
            raise TooManyErrors(
                f"Expected at most {self.params.max_error_rate:.0%} bad rows. Got {bad} of {seen} ({bad / seen:.0%}) "
                f"by shard {k} (e.g. {examples}). Fix the input or raise --max-error-rate; then "
                "`hpcai infer retry` finishes the run.")

    def _write_outputs(self, k: int, rows: list[Row], prepared: list[PreparedRow],
                       results: dict[int, dict[str, Any]]) -> None:
        import numpy as np

        task, plan = self.params.task, self.plan
        shard = plan.input.shards[k]
        table = []
        for i, row in enumerate(rows):
            r = results[i]
            # the id in the input's type (the plan's: the same column type in every shard)
            base: dict[str, Any] = {"id": plan.input.output_id(row.id), "error": r.get("error")}
            if task == "generate":
                err = r.get("error")
                base.update(input=row.text, output=None if err else r["output"], tokens=[] if err else r["tokens"],
                            input_tokens=r.get("input_tokens"), finish_reason="error" if err else r["finish_reason"])
            elif task == "score":
                base.update(loglik=None if r.get("error") else r["loglik"], n_tokens=r.get("n_tokens"))
            else:
                base.update(n_tokens=r.get("n_tokens"))
            table.append(base)
        infer_out.write_rows(rows_path(self.out, k, plan.output_format), table, task, plan.output_format,
                             id_type=plan.input.id_type)
        if task == "score":
            ll = np.array([math.nan if results[i].get("error") else results[i]["loglik"] for i in range(len(rows))],
                          dtype=np.float64)
            nt = np.array([results[i].get("n_tokens") or 0 for i in range(len(rows))], dtype=np.int32)
            for name, values in (("loglik", ll), ("n_tokens", nt)):
                infer_out.write_zarr_shard(self.out, name, k, shard.first_row, values, plan.input.num_rows,
                                           plan.input.rows_per_shard)
        elif task == "embed":
            width = next((len(r["vector"]) for r in results.values() if "vector" in r), plan.model.hidden or 1)
            vectors = np.full((len(rows), width), np.nan, dtype=np.float32)
            for i in range(len(rows)):
                if "vector" in results[i]:
                    vectors[i] = results[i]["vector"]
            infer_out.write_zarr_shard(self.out, "embeddings", k, shard.first_row, vectors, plan.input.num_rows,
                                       plan.input.rows_per_shard)

    def _report_work(self, done: dict[int, dict[str, Any]], prepared: list[PreparedRow]) -> None:
        """Rows and tokens of this batch for the job's energy records (J/row, J/token); never fatal."""
        from hpc_aidc.monitor.work import report_work

        tokens = 0
        for i, r in done.items():
            tokens += len(prepared[i].ids or []) + len(r.get("tokens") or [])
        report_work(Path(self.plan.energy_store), self.job, self.run, self.node, tokens=tokens,
                    samples=len(done))

    def record_failure(self, k: int, exc: BaseException) -> None:
        infer_out.write_json_atomic(failed_dir(self.out, k) / f"{self.job}.r{self.run}.json", {
            "shard": k, "job": self.job, "run": self.run, "node": self.node, "time": time.time(),
            "error": f"{type(exc).__name__}: {exc}"[:2000]})


def unit_length(vector: list[float]) -> list[float]:
    """`vector` over its L2 norm (at least 1e-12, as torch.nn.functional.normalize), in float32."""
    import numpy as np

    v = np.asarray(vector, dtype=np.float32)
    return [float(x) for x in v / max(float(np.linalg.norm(v)), 1e-12)]


def _nan_checked(result: dict[str, Any], probe: float) -> dict[str, Any]:
    if not math.isfinite(probe):
        return {"error": "the model gave NaN or infinity for this row"}
    return result


def _stats(results: dict[int, dict[str, Any]]) -> dict[str, int]:
    errors = sum(1 for r in results.values() if r.get("error"))
    out_tokens = sum(len(r.get("tokens") or []) for r in results.values())
    in_tokens = sum(int(r.get("input_tokens") or r.get("n_tokens") or 0) for r in results.values())
    return {"error_rows": errors, "tokens_in": in_tokens, "tokens_out": out_tokens}


def _free_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def my_shards(plan: InferPlan, task: int, proc: int, nprocs: int) -> list[int]:
    return list(shard_range(task, plan.tasks, plan.num_shards))[proc::nprocs]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpc_aidc.node.infer.run")
    parser.add_argument("out")
    parser.add_argument("--offset", type=int, default=0, help="added to SLURM_ARRAY_TASK_ID (array windows)")
    parser.add_argument("--task", type=int, help="the array task index (default: from Slurm)")
    args = parser.parse_args(argv)
    env = os.environ
    out = Path(args.out)
    plan = load_plan(out)
    task = args.task if args.task is not None else args.offset + int(env.get("SLURM_ARRAY_TASK_ID", "0"))
    proc, nprocs = int(env.get("SLURM_PROCID", "0")), int(env.get("SLURM_NTASKS", "1"))
    job = env.get("SLURM_JOB_ID", "local")
    run = run_of(env)
    node = env.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]
    signal.signal(signal.SIGUSR2, _Warning.handler)
    from hpc_aidc.formats.environment_record import INFER_ENV_DIR
    from hpc_aidc.node.environment import capture_in_task, job_id_of

    capture_in_task({"output": str(out), "model": plan.model.to_json(), "params": plan.params.to_json(),
                     "tasks": plan.tasks, "output_format": plan.output_format}, out / INFER_ENV_DIR,
                    first=proc == 0, name=f"{job_id_of(env)}.json")
    runner = ShardRunner(out, plan, job, run, node)
    shards = my_shards(plan, task, proc, nprocs)
    print(f"hpcai infer: task {task} process {proc}/{nprocs}: shards {shards} of {plan.num_shards}", flush=True)
    for k in shards:
        try:
            state = runner.run_shard(k)
        except Exception as exc:
            runner.record_failure(k, exc)
            message = str(exc) if isinstance(exc, HpcAidcError) else f"{type(exc).__name__}: {exc}"
            print(f"hpcai infer: shard {k} failed: {message}", file=sys.stderr, flush=True)
            if isinstance(exc, HpcAidcError):
                return 1
            raise
        if state == "stopped":
            return _requeue(proc)
        print(f"hpcai infer: shard {k} done", flush=True)
    return 0


STOPPED = 3  # exit status outside Slurm after the warning signal: stopped at a batch boundary


def _requeue(proc: int) -> int:
    """Warning signal: the flushed batches are kept; requeue this array task and wait to be stopped
    (exiting first could let Slurm count the task as finished). Outside Slurm: exit at once."""
    target = requeue_target(os.environ)
    if not target:
        print("hpcai infer: warning signal: stopped at a batch boundary", flush=True)
        return STOPPED
    if proc == 0:
        print(f"hpcai infer: warning signal: requeueing {target}", flush=True)
        refused = requeue(target)
        if refused:
            print(f"hpcai infer: requeue of {target} failed: {refused}", flush=True)
    time.sleep(300)
    return 1


if __name__ == "__main__":
    sys.exit(main())
