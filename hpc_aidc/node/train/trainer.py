"""The training loop of `hpcai submit train` on one DeepSpeed rank (node.train.start starts it).

Rendezvous comes from the Slurm environment alone; NCCL on GPUs, gloo on CPU, the same code path.
Checkpoints every K steps and when Slurm's warning signal (USR2) arrives; then the job requeues itself
(`scontrol requeue`) and resumes from the latest complete checkpoint, with the data position, RNG
states, optimizer and scheduler restored, so the loss curve continues exactly.

With [eval] every = K it validates on held-out data (node.validation) and keeps the best checkpoint
apart (checkpoints/best/); with a target loss it stops once the validation loss (the training loss
without [eval]) reaches it, checkpoints, and records why in its summary. Both survive a requeue: the
stop and the last validation are in the checkpoint, the best in best.json."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from hpc_aidc.node.train.run_timing import RunTiming
from hpc_aidc.node.train.step_stats import ReducedStats
from hpc_aidc.slurm_client import requeue
from hpc_aidc.spec.train import TrainConfig

if TYPE_CHECKING:
    from hpc_aidc.node.checkpoint import WriteGuard
    from hpc_aidc.node.train.run_timing import StartupPhases


class SlurmWarning:
    """Set by Slurm's USR2 warning (time limit, preemption); acted on at the next step boundary."""

    received = False

    @classmethod
    def handler(cls, signum: int, frame: FrameType | None) -> None:
        cls.received = True


class Trainer:
    def __init__(self, config: TrainConfig, folder: Path, rank: int, world: int, local_rank: int,
                 local_world: int = 1) -> None:
        self.config, self.folder, self.rank, self.world, self.local_rank = config, folder, rank, world, local_rank
        self.local_world = local_world
        self.ckpt_dir = folder / "checkpoints"
        self.metrics_path = folder / "metrics.jsonl"
        self._metrics: TextIO | None = None  # rank 0's handle, opened once: no open/close per step on shared storage
        self.timing = RunTiming()
        self.stopped: str | None = None                  # why the run stopped before max_steps (a stop rule)
        self.last_eval: dict[str, Any] | None = None     # {"step", "val_loss", "val_ppl"}
        self.best: dict[str, Any] | None = None          # the best checkpoint's record (checkpoint.read_best)
        self.last_loss: tuple[int, float] | None = None  # (step, mean training loss) last read
        self.eval_batches: list[Any] = []

    def run(self, phases: StartupPhases) -> dict[str, Any]:
        import datetime

        import deepspeed
        import torch

        from hpc_aidc.node.slurm_env import requeue_target, restart_count
        from hpc_aidc.render.deepspeed_config import deepspeed_config

        c = self.config
        if c.train.precision == "auto":  # not resolved at submission (the trainer called directly)
            from hpc_aidc.spec.train import resolve_precision

            bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            self.config = c = resolve_precision(c, ("fp32", "bf16") if bf16 else None)
        if torch.cuda.is_available():
            backend = "nccl"
            device = self._bind_gpu()
        else:
            backend, device = "gloo", torch.device("cpu")
        timeout = datetime.timedelta(seconds=c.train.collective_timeout_s)
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, timeout=timeout)
        phases.done("init_distributed")
        torch.manual_seed(c.train.seed)
        ds_config = deepspeed_config(c, self.world)
        model = self._build_model(ds_config, device)
        phases.done("build_model")
        engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
        phases.done("deepspeed_initialize")
        self.pipeline = c.train.pipeline_stages > 1
        self.dp = self.world // c.train.pipeline_stages
        self.dp_rank = engine.grid.data_parallel_id if self.pipeline else self.rank
        self.device = engine.device
        self.stream = self._data_stream()

        start_step = self._resume(engine)
        self.batches = self._batch_source(start_step)
        if c.eval.every:
            from hpc_aidc.node.validation import heldout_batches

            self.eval_batches = heldout_batches(c, self.dp_rank, self.dp)
            self.best = self._shared_best()
        phases.done("resume")
        restarts = restart_count(os.environ)
        if self.rank == 0:
            from hpc_aidc.node.checkpoint import remove_incomplete

            remove_incomplete(self.ckpt_dir)  # what an earlier run left half-written
            self.folder.mkdir(parents=True, exist_ok=True)
            self._log_event({"event": "start", "step": start_step, "restarts": restarts, "world_size": self.world,
                             "backend": backend, "precision": c.train.precision,
                             "threads": torch.get_num_threads(), "startup_s": phases.seconds})
        tokens_per_step = self.dp * c.train.micro_batch * c.train.grad_accum * c.model.seq_len
        wall_start = last = time.monotonic()
        step, loss, pending = start_step, float("nan"), None
        while step < c.train.max_steps and self.stopped is None:
            local_loss, scale = self._train_step(engine, step)
            step += 1
            now = time.monotonic()
            lrs = engine.get_lr()
            step_s = now - last
            self.timing.step(step_s, tokens_per_step)
            record = {"time": time.time(), "step": step, "max_steps": c.train.max_steps,
                      "lr": lrs[0] if lrs else None, "grad_norm": None,
                      "step_time_s": step_s, "tokens_per_s": tokens_per_step / step_s if step_s > 0 else None}
            last = now
            # This step's mean loss and warning flag reduce while the next step computes; the previous
            # step's are complete by now, so reading them neither waits on the network nor stalls a GPU.
            # The grad norm stays on the device until then too.
            current = ReducedStats(local_loss, scale, SlurmWarning.received, record, engine.get_global_grad_norm())
            warned = False
            if pending is not None:
                loss, warned = self._finish(pending)
            pending = current
            if c.eval.every and (step % c.eval.every == 0 or step == c.train.max_steps):
                self._validate(engine, step)
                last = time.monotonic()  # the next step's time leaves the validation out
            # The same on every rank: it reads all-reduced losses only.
            self.stopped = self._stop_reason(step)
            if self.stopped and self.rank == 0:
                self._log_event({"event": "stop", "step": step, "reason": self.stopped})
            # `warned`: some rank got Slurm's warning by the previous step; all ranks know it here.
            if step % c.checkpoint.every == 0 or step == c.train.max_steps or warned or self.stopped:
                # This step's loss is logged before its checkpoint exists: a run stopped right after the
                # checkpoint resumes at the next step and would never log this one.
                loss, warned_now = self._finish(pending)
                pending = None
                saved_at = time.monotonic()
                self._save(engine, step)
                self.timing.checkpoint(time.monotonic() - saved_at)
                self._after_checkpoint(step)
                if (warned or warned_now) and step < c.train.max_steps and self.stopped is None:
                    self._requeue(requeue_target(os.environ), restarts)
                last = time.monotonic()  # the next step's time leaves the checkpoint out
        if pending is not None:
            loss, _ = self._finish(pending)
        self.batches.close()
        wall = time.monotonic() - wall_start
        steps_run = step - start_step
        summary = {"steps": step, "steps_this_run": steps_run, "restarts": restarts,
                   "final_loss": loss if steps_run else None, "tokens": tokens_per_step * step,
                   "wall_time_s": wall, "tokens_per_s": tokens_per_step * steps_run / wall if wall else None,
                   "world_size": self.world, "precision": c.train.precision, **self._stop_and_eval_summary(),
                   **self._performance(), **_memory_peaks()}
        if self.rank == 0:
            self._log_event({"event": "end", **summary})
            (self.folder / "summary.json").write_text(json.dumps(summary, indent=2))
            self._report_tokens(tokens_per_step * steps_run)
        if self._metrics is not None:
            self._metrics.close()
        # Shut gloo/NCCL down before the interpreter does: a process group torn down at exit can abort
        # ("terminate called without an active exception") and fail a job that finished its work.
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
        return summary

    def _validate(self, engine: Any, step: int) -> None:
        """Collective: the validation loss on the held-out batches; logged (rank 0), and a new best
        checkpoint when it is the lowest yet."""
        from hpc_aidc.node.validation import perplexity, validation_loss

        started = time.monotonic()
        val = validation_loss(engine, self.eval_batches, self.device, self.pipeline)
        self.last_eval = {"step": step, "val_loss": val, "val_ppl": perplexity(val)}
        improved = self.best is None or val < float(self.best["val_loss"])
        if self.rank == 0:
            self._log_event({"event": "eval", **self.last_eval, "best": improved,
                             "seconds": round(time.monotonic() - started, 3)})
        if improved:
            self._save_best(engine, step)

    def _save_best(self, engine: Any, step: int) -> None:
        """Write the model at `step` to checkpoints/best/ (every rank its part), then publish it (rank 0);
        the previous best is removed only once the new one is complete."""
        from hpc_aidc.formats.checkpoint_layout import BEST, read_best, tag_for
        from hpc_aidc.node.checkpoint import WriteGuard, publish_best

        best_dir, tag = self.ckpt_dir / BEST, tag_for(step)
        assert self.last_eval is not None
        record = dict(self.last_eval)
        started = time.monotonic()
        guard = WriteGuard()
        with guard.around_deepspeed(engine):
            engine.save_checkpoint(str(best_dir), tag=tag, client_state=self._client_state(step), save_latest=False)
        self._stop_if_any_failed(guard, tag, best_dir)  # also the barrier before publishing
        if self.rank == 0:
            guard.run(lambda: publish_best(best_dir, tag, record), best_dir / tag)
            published = read_best(self.ckpt_dir) if guard.error is not None else None
            if published is not None and published.get("tag") == tag:
                guard.error = guard.path = None  # published whole; only removing the older best failed
        self._stop_if_any_failed(guard, tag, best_dir)
        self.best = {**record, "tag": tag}
        if self.rank == 0:
            self._log_event({"event": "best-checkpoint", "step": step, "tag": tag, "val_loss": record["val_loss"],
                             "seconds": round(time.monotonic() - started, 3)})

    def _shared_best(self) -> dict[str, Any] | None:
        """The best so far (a resumed run's), as rank 0 reads it: every rank must agree on it, since a new
        best is saved collectively."""
        import torch.distributed as dist

        from hpc_aidc.formats.checkpoint_layout import read_best

        shared: list[Any] = [read_best(self.ckpt_dir) if self.rank == 0 else None]
        dist.broadcast_object_list(shared, src=0)
        best: dict[str, Any] | None = shared[0]
        return best

    def _stop_reason(self, step: int) -> str | None:
        """Why to stop at `step` before max_steps, or None: the validation loss of this step's
        validation (with [eval]) or the last training loss read (without) at or below the target."""
        target = self.config.train.target_loss
        if target <= 0:
            return None
        if self.config.eval.every:
            if self.last_eval is None or self.last_eval["step"] != step or self.last_eval["val_loss"] > target:
                return None
            return f"target_loss {target:g} reached at step {step} (validation loss {self.last_eval['val_loss']:.4f})"
        if self.last_loss is None or self.last_loss[1] > target:
            return None
        return f"target_loss {target:g} reached at step {self.last_loss[0]} (training loss {self.last_loss[1]:.4f})"

    def _stop_and_eval_summary(self) -> dict[str, Any]:
        from hpc_aidc.formats.checkpoint_layout import BEST

        c = self.config
        out: dict[str, Any] = {"stopped": self.stopped}
        if c.train.target_loss > 0:
            out["target_loss"] = c.train.target_loss
            out["target_metric"] = "val_loss" if c.eval.every else "loss"
        if c.eval.every:
            last = self.last_eval or {}
            best = self.best or {}
            out.update(val_loss=last.get("val_loss"), val_ppl=last.get("val_ppl"), val_step=last.get("step"),
                       best_val_loss=best.get("val_loss"), best_step=best.get("step"),
                       best_checkpoint=str(self.ckpt_dir / BEST / best["tag"]) if best.get("tag") else None)
        return out

    def _report_tokens(self, tokens: int) -> None:
        """This run's tokens (the whole job's, from rank 0) into its energy records, for J/token."""
        from hpc_aidc.monitor.restarts import run_of
        from hpc_aidc.monitor.work import report_work

        store = os.environ.get("HPCAI_WORK_STORE")
        job = os.environ.get("SLURM_JOB_ID")
        if store and job and tokens > 0:
            node = os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]
            report_work(Path(store), job, run_of(os.environ), node, tokens=tokens)

    def _bind_gpu(self) -> Any:
        """This rank's GPU among those its task sees (node.devices), made current and named in LOCAL_RANK
        (DeepSpeed reads it as the device number); TF32 and determinism as the config says."""
        import torch

        from hpc_aidc.node.devices import select_device

        t = self.config.train
        # Before the first CUDA allocation: expandable segments keep the allocator's fragmentation low
        # (spec.memory counts on it); the cuBLAS workspace setting makes its reductions deterministic.
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        if t.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        index = select_device(self.local_rank, self.local_world, torch.cuda.device_count(), os.environ)
        os.environ["LOCAL_RANK"] = str(index)
        torch.cuda.set_device(index)
        torch.backends.cuda.matmul.allow_tf32 = t.tf32
        torch.backends.cudnn.allow_tf32 = t.tf32
        return torch.device("cuda", index)

    def _build_model(self, ds_config: dict[str, Any], device: Any) -> Any:
        """The model, built once where it will live: ZeRO-3 partitions each parameter as it is created
        (deepspeed.zero.Init: no rank ever holds the whole model); otherwise it is created on this rank's
        GPU, in the training precision. Nothing is built whole in host memory first (spec.memory)."""
        import contextlib

        import deepspeed
        import torch

        c = self.config
        with contextlib.ExitStack() as where:
            if c.train.zero == 3:
                remote = "cpu" if c.train.offload == "optimizer+params" else None
                where.enter_context(deepspeed.zero.Init(config_dict_or_path=ds_config, remote_device=remote,
                                                        pin_memory=device.type == "cuda"))
            elif device.type == "cuda":
                where.enter_context(device)
                dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(c.train.precision)
                if dtype is not None:
                    where.enter_context(_default_dtype(dtype))
            return self._new_model()

    def _new_model(self) -> Any:
        from hpc_aidc.node.model import GPT, pipeline_model

        c = self.config
        if c.train.entry:
            from hpc_aidc.formats.entry import load_entry

            return load_entry(c.train.entry)(c)
        if c.train.pipeline_stages > 1:
            return pipeline_model(c.model, c.train.pipeline_stages)
        return GPT(c.model)

    def _data_stream(self) -> Any:
        if self.config.data.kind != "zarr":
            return None
        from hpc_aidc.node.zarr_stream import ZarrTokenStream

        return ZarrTokenStream(self.config, rank=self.dp_rank, world_size=self.dp)

    def _batch_source(self, start_step: int) -> Any:
        """Batches in training order from `start_step`, prepared by a background thread (node.batches)."""
        from hpc_aidc.node.batches import Prefetcher
        from hpc_aidc.node.synthetic import micro_batch_start, synthetic_tokens

        stream = self.stream
        if stream is not None:
            def fetch() -> tuple[Any, Any]:
                position = stream.state_dict()  # before this batch: what a checkpoint must record
                return position, stream.next_batch()
        else:
            t, m, seed, dp, dp_rank = self.config.train, self.config.model, self.config.data.seed, self.dp, self.dp_rank
            keys = ((step, micro) for step in itertools.count(start_step) for micro in range(t.grad_accum))

            def fetch() -> tuple[Any, Any]:
                step, micro = next(keys)
                start = micro_batch_start(step, micro, dp_rank, t.micro_batch, t.grad_accum, dp)
                return (step, micro), synthetic_tokens(seed, start, t.micro_batch, m.seq_len, m.vocab_size)

        return Prefetcher(fetch, self.device)

    def _batch(self, step: int, micro: int) -> Any:
        return self.batches.next()

    def _train_step(self, engine: Any, step: int) -> tuple[Any, float]:
        """One optimizer step: (this rank's share of the loss as a tensor on the device, the divisor that
        turns the sum over ranks into the mean). No host sync: the loss is read a step later."""
        import torch

        accum = self.config.train.grad_accum
        if self.pipeline:
            batches = iter([(b[:, :-1], b[:, 1:]) for b in (self._batch(step, m) for m in range(accum))])
            loss = engine.train_batch(data_iter=batches)
            # the last stage holds the loss (already averaged over its data-parallel group); kept on the
            # device, read a step later
            if self.rank == self.world - 1:
                return torch.as_tensor(loss).detach().to(device=self.device, dtype=torch.float64).reshape(()), 1.0
            return torch.zeros((), dtype=torch.float64, device=self.device), 1.0
        local = torch.zeros((), dtype=torch.float64, device=self.device)
        for micro in range(accum):
            loss = engine(self._batch(step, micro))
            engine.backward(loss)
            engine.step()
            local += loss.detach().double()
        return local, float(accum * self.world)

    def _finish(self, stats: ReducedStats) -> tuple[float, bool]:
        """Wait for a step's reduction, log it (rank 0), and return (mean loss, warning on any rank)."""
        loss, warned = stats.wait()
        step = stats.record["step"]
        self.last_loss = (step, loss)
        if self.rank == 0 and (step % self.config.train.log_every == 0 or step == self.config.train.max_steps):
            self._log_event({**stats.record, "loss": loss})
        return loss, warned

    def _client_state(self, step: int) -> dict[str, Any]:
        # Synthetic data is addressed by step; the Zarr loader's position is its sampler state, the
        # same on every rank (so rank 0's copy in the checkpoint is enough).
        data = self.batches.position() if self.stream is not None else {"next_step": step}
        # A stop rule and the last validation carry over a requeue: a stopped run stays stopped.
        return {"step": step, "data": {"kind": self.config.data.kind, **data}, "stopped": self.stopped,
                "last_eval": self.last_eval}

    def _save(self, engine: Any, step: int) -> None:
        """Write checkpoint `tag` on every rank, then publish it (rank 0). A failed write on any rank
        stops the job cleanly (`_stop_after_failed_save`) with `latest` still on the last complete tag."""
        import torch

        from hpc_aidc.formats.checkpoint_layout import latest_tag, tag_for
        from hpc_aidc.node.checkpoint import WriteGuard, publish

        tag = tag_for(step)
        guard = WriteGuard()
        with guard.around_deepspeed(engine):
            engine.save_checkpoint(str(self.ckpt_dir), tag=tag, client_state=self._client_state(step),
                                   save_latest=False)
        rng = self.ckpt_dir / tag / f"rng_rank{self.rank}.pt"
        if guard.error is None:
            guard.run(lambda: torch.save({"torch": torch.get_rng_state()}, rng), rng)
        self._stop_if_any_failed(guard, tag)  # also the barrier before publishing
        if self.rank == 0:
            guard.run(lambda: publish(self.ckpt_dir, tag, self.config.checkpoint.keep_last), self.ckpt_dir / tag)
            if guard.error is not None and latest_tag(self.ckpt_dir) == tag:
                guard.error = guard.path = None  # published whole; only pruning older tags failed
        self._stop_if_any_failed(guard, tag)  # also the barrier after publishing

    def _stop_if_any_failed(self, guard: WriteGuard, tag: str, ckpt_dir: Path | None = None) -> None:
        """Collective: every rank learns whether any rank's write failed; if one did, stop the job."""
        import torch.distributed as dist

        outcomes: list[Any] = [None] * self.world
        dist.all_gather_object(outcomes, (guard.error, guard.path))
        failed = [(rank, error, path) for rank, (error, path) in enumerate(outcomes) if error is not None]
        if failed:
            self._stop_after_failed_save(tag, *failed[0], ckpt_dir=ckpt_dir or self.ckpt_dir)

    def _stop_after_failed_save(self, tag: str, rank: int, error: str, path: str | None, *,
                                ckpt_dir: Path) -> None:
        """Every rank is done writing: rank 0 removes the partial tag and records one line (metrics event
        for `hpcai status`, and its log); then all ranks leave the process group and exit non-zero without
        a traceback (SystemExit passes submitit's error handler, so it writes no result file either)."""
        import torch.distributed as dist

        from hpc_aidc.formats.checkpoint_layout import latest_tag
        from hpc_aidc.node.checkpoint import FAILED_EVENT, failure_line, remove_partial
        from hpc_aidc.node.slurm_env import requeue_target

        line = ""
        if self.rank == 0:
            remove_partial(ckpt_dir, tag)
            # `latest`: where a requeue resumes from (never the best checkpoint)
            line = failure_line(tag=tag, ckpt_dir=ckpt_dir, error=error, path=path, rank=rank,
                                latest=latest_tag(self.ckpt_dir), requeue=requeue_target(os.environ))
            self._append_event({"event": FAILED_EVENT, "tag": tag, "rank": rank, "message": line})
        dist.barrier()
        dist.destroy_process_group()
        if self.rank == 0:
            sys.exit(f"hpcai: error: {line}")
        sys.exit(f"hpcai: rank {self.rank}: stopping: checkpoint {tag} could not be written (see `hpcai status`)")

    def _append_event(self, record: dict[str, Any]) -> None:
        """One metrics line written with a single unbuffered append, for when the filesystem may be full:
        nothing is left in a buffer to fail again at exit."""
        if self._metrics is not None:
            with contextlib.suppress(OSError):
                self._metrics.close()
            self._metrics = None
        data = (json.dumps({"time": time.time(), **record}) + "\n").encode()
        try:
            fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            print(f"hpcai: could not record the failure in {self.metrics_path}: {exc.strerror}", file=sys.stderr)

    def _resume(self, engine: Any) -> int:
        import torch

        from hpc_aidc.formats.checkpoint_layout import latest_tag
        from hpc_aidc.node.cpu_adam_resume import replay_bias_correction

        tag = latest_tag(self.ckpt_dir) if self.ckpt_dir.exists() else None
        if tag is None:
            return 0
        _, client = engine.load_checkpoint(str(self.ckpt_dir), tag=tag)
        replay_bias_correction(getattr(engine.optimizer, "optimizer", None))  # offload: DeepSpeed's CPU Adam
        if self.stream is not None:
            self.stream.load_state_dict(client["data"])
        self.stopped, self.last_eval = client.get("stopped"), client.get("last_eval")
        rng = self.ckpt_dir / tag / f"rng_rank{self.rank}.pt"
        if rng.exists():
            torch.set_rng_state(torch.load(rng)["torch"])
        return int(client["step"])

    def _requeue(self, target: str, restarts: int) -> None:
        import torch.distributed as dist

        limit = self.config.checkpoint.max_restarts
        if self.rank == 0:
            if restarts >= limit:
                self._log_event({"event": "restart-limit", "restarts": restarts, "limit": limit})
            else:
                self._log_event({"event": "requeue", "restarts": restarts + 1})
                # Slurm holds a requeued job about two minutes before it is eligible again.
                refused = requeue(target)
                if refused:
                    self._log_event({"event": "requeue-failed", "target": target, "error": refused})
        dist.barrier()
        if restarts >= limit:
            sys.exit(f"hpcai: stopping: restart limit {limit} reached (checkpoint saved)")
        # Slurm now ends this run and queues the job again; wait to be stopped rather than exit
        # successfully, which could mark the job completed first.
        time.sleep(600)
        sys.exit("hpcai: requeue did not stop the job")

    def _after_checkpoint(self, step: int) -> None:
        """Rank 0: log the checkpoint with its write time; record what the warning grace must cover
        (formats.grace_record) and say so when the grace this job got is shorter."""
        if self.rank != 0:
            return
        from hpc_aidc.formats.checkpoint_layout import tag_for
        from hpc_aidc.spec.grace import needed_s

        t = self.timing
        needed = needed_s(t.step_s_max, t.checkpoint_s_max)
        self._log_event({"event": "checkpoint", "step": step, "tag": tag_for(step),
                         "seconds": round(t.checkpoint_s_last, 3), "grace_needed_s": needed})
        from hpc_aidc.formats.grace_record import GRACE_ENV, KEY_ENV, write_grace

        key = os.environ.get(KEY_ENV)
        if key:
            try:
                write_grace(self.folder.parent, key, t.step_s_max, t.checkpoint_s_max, needed,
                             self.folder.name)
            except OSError as exc:
                print(f"hpcai: could not record the checkpoint time: {exc}", file=sys.stderr)
        grace = int(os.environ.get(GRACE_ENV, "0") or 0)
        if grace and needed > grace and not t.warned_short:
            t.warned_short = True
            line = (f"the warning grace of {grace} s is shorter than the {needed} s a checkpoint needs here "
                    f"(steps up to {t.step_s_max:.1f} s, checkpoint writes up to {t.checkpoint_s_max:.1f} s): a "
                    "time limit or preemption may kill the job before it saves. Set [checkpoint] grace_s = 0 "
                    "(derived) or higher; the next `hpcai submit train` of this shape asks for enough.")
            self._log_event({"event": "grace-short", "grace_s": grace, "needed_s": needed, "message": line})
            print(f"hpcai: warning: {line}", file=sys.stderr, flush=True)

    def _performance(self) -> dict[str, Any]:
        """Throughput without the warm-up steps and checkpoint writes, and model FLOPs utilisation (GPUs
        only, against the peak of the precision trained in: $HPCAI_PEAK_TFLOPS)."""
        from hpc_aidc.spec.flops import FORMULA, flops_per_token, mfu
        from hpc_aidc.spec.grace import needed_s

        t = self.timing
        tokens_per_s = t.tokens_per_s()
        peak = os.environ.get("HPCAI_PEAK_TFLOPS")
        on_gpu = self.device.type == "cuda" if hasattr(self, "device") else False
        value = mfu(tokens_per_s, self.config.model, float(peak), self.world) if (
            on_gpu and peak and tokens_per_s) else None
        return {"tokens_per_s_training": tokens_per_s, "measured_steps": t.measured_steps, "mfu": value,
                "flops_per_token": flops_per_token(self.config.model), "mfu_formula": FORMULA,
                "peak_tflops": float(peak) if peak else None, "step_s_max": t.step_s_max,
                "checkpoint_s_total": t.checkpoint_s_total, "checkpoint_s_max": t.checkpoint_s_max,
                "grace_needed_s": needed_s(t.step_s_max, t.checkpoint_s_max)}

    def _log_event(self, record: dict[str, Any]) -> None:
        if self._metrics is None:
            self._metrics = self.metrics_path.open("a", buffering=1)  # line-buffered: each line lands whole
        self._metrics.write(json.dumps({"time": time.time(), **record}) + "\n")
        if "loss" in record:
            from hpc_aidc.render.progress import progress_line

            print(progress_line(record), flush=True)


@contextlib.contextmanager
def _default_dtype(dtype: Any) -> Iterator[None]:
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _memory_peaks() -> dict[str, Any]:
    """This process's peak host memory and, on GPUs, torch's peak allocation (compare with `hpcai plan`)."""
    import resource

    import torch

    peaks: dict[str, Any] = {"host_max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        peaks["gpu_max_allocated_gib"] = torch.cuda.max_memory_allocated() / 1024**3
        peaks["gpu_max_reserved_gib"] = torch.cuda.max_memory_reserved() / 1024**3
    return peaks
