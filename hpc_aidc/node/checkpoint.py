"""Atomic checkpoints on shared storage: every rank writes its part into a new tag directory, all ranks
meet at a barrier, then rank 0 marks the tag complete and moves `latest` with an atomic rename. A
half-written checkpoint is never picked up; the last N complete ones are kept.

A write that fails (a full filesystem, a quota, any I/O error) is caught on the rank where it happens and
does not break the ranks' lockstep: every rank still reaches DeepSpeed's barriers, the ranks then agree
that the save failed, rank 0 removes the partial tag (`latest` still names the last complete one) and
records one line saying what failed, where, and what to do; the job then stops without a traceback."""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hpc_aidc.formats.checkpoint_layout import (  # the layout both sides read
    BEST_RECORD,
    COMPLETE,
    LATEST,
    format_bytes,
    free_bytes,
    latest_tag,
)
from hpc_aidc.fsutil import atomic_write_text

# The metrics.jsonl event of a failed save; `hpcai status` shows its message.
FAILED_EVENT = "checkpoint-failed"

# torch.save to a path reports a failed write as a RuntimeError from its zip writer, not as an OSError, and
# its words depend on where the write failed and on the C++ library: "[enforce fail at inline_container.cc:...]
# . unexpected pos 576 vs 534" (a full tmpfs, Debian 12), "basic_ios::clear: iostream error" (the same with
# Debian sid's libstdc++, closing the archive). Any other RuntimeError counts as a failed write only where the
# filesystem is full (WriteGuard.run).
_TORCH_WRITE_FAILURES = ("inline_container", "PytorchStreamWriter", "file write failed", "unexpected pos",
                         "iostream error", "basic_ios")
# Free space below which such a failed write is put down to a full filesystem.
_ALMOST_FULL = 1 << 20


def publish(ckpt_dir: Path, tag: str, keep_last: int) -> None:
    """Rank 0, after the barrier: mark complete, move `latest`, prune old tags."""
    atomic_write_text(ckpt_dir / tag / COMPLETE, "ok\n")
    atomic_write_text(ckpt_dir / LATEST, tag + "\n")
    tags = [p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step")]  # never best/
    complete = sorted(p for p in tags if (p / COMPLETE).exists())
    for old in complete[:-keep_last]:
        if old.name != tag:
            shutil.rmtree(old, ignore_errors=True)
    for partial in (p for p in tags if not (p / COMPLETE).exists()):
        if partial.name < tag:  # an interrupted save older than the newest complete one
            shutil.rmtree(partial, ignore_errors=True)


def publish_best(best_dir: Path, tag: str, record: dict[str, Any]) -> None:
    """Rank 0, after the barrier: mark the new best tag complete, point best.json and `latest` at it
    (atomic renames: a reader sees the old best or the new one), then remove the older best tags."""
    atomic_write_text(best_dir / tag / COMPLETE, "ok\n")
    atomic_write_text(best_dir / BEST_RECORD, json.dumps({**record, "tag": tag}) + "\n")
    atomic_write_text(best_dir / LATEST, tag + "\n")
    for old in best_dir.iterdir():
        if old.is_dir() and old.name != tag:
            shutil.rmtree(old, ignore_errors=True)


def remove_partial(ckpt_dir: Path, tag: str) -> None:
    """Rank 0, once every rank is done writing: remove a tag whose save failed, unless `latest` already
    names it (then it was published whole and only a later step, such as pruning, failed)."""
    if latest_tag(ckpt_dir) != tag:
        shutil.rmtree(ckpt_dir / tag, ignore_errors=True)


def remove_incomplete(ckpt_dir: Path) -> None:
    """Rank 0 at start: remove tags an earlier run left half-written (killed, or a node lost, mid-save).
    Nothing writes checkpoints at that point, and `latest` only ever names a complete tag."""
    if not ckpt_dir.is_dir():
        return
    keep = latest_tag(ckpt_dir)
    for path in ckpt_dir.iterdir():
        if path.is_dir() and path.name.startswith("step") and path.name != keep and not (path / COMPLETE).exists():
            shutil.rmtree(path, ignore_errors=True)


def write_error(exc: BaseException) -> str | None:
    """How a failed checkpoint write explains itself ('No space left on device (ENOSPC)'), or None when
    `exc` is not a failed write (a bug stays a bug, with its traceback)."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for err in chain:  # the OS's own words first: torch's writer wraps them when it writes to a file object
        if isinstance(err, OSError):
            code = errno.errorcode.get(err.errno or 0)
            reason = err.strerror or str(err) or type(err).__name__
            return f"{reason} ({code})" if code else reason
    for err in chain:
        if isinstance(err, RuntimeError) and any(m in str(err) for m in _TORCH_WRITE_FAILURES):
            return f"the write failed ({_first_line(err)})"
    return None


def _with_free_space(exc: RuntimeError, reason: str | None, folder: Path) -> str | None:
    """A RuntimeError of a write, asked of the filesystem: 'No space left on device (...)' where it is full
    (whatever torch's words were), torch's own known words where it is not, None (not a write) otherwise."""
    free = free_bytes(folder)
    if free is None or free >= _ALMOST_FULL:
        return reason
    return f"No space left on device ({format_bytes(free)} free; {reason or f'the write failed ({_first_line(exc)})'})"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]


class WriteGuard:
    """One rank's part of a collective save: file writes whose failure is recorded (the first one wins)
    instead of raised, so the rank still reaches the save's barriers and the ranks can agree afterwards."""

    def __init__(self) -> None:
        self.error: str | None = None
        self.path: str | None = None

    def run(self, fn: Callable[[], Any], path: object) -> Any:
        try:
            return fn()
        except Exception as exc:
            reason = write_error(exc)
            if isinstance(exc, RuntimeError):
                reason = _with_free_space(exc, reason, Path(str(path)).parent)  # torch's writer does not say why
            if reason is None:
                raise  # a bug stays a bug
            if self.error is None:
                self.error, self.path = reason, str(path)
            return None

    @contextlib.contextmanager
    def around_deepspeed(self, engine: Any) -> Iterator[None]:
        """Guard the file writes of `engine.save_checkpoint`: its checkpoint engine's save and makedirs,
        and the copy of its recovery scripts. Wrapped on this engine instance only, for the call."""
        ckpt_engine = getattr(engine, "checkpoint_engine", None)
        # (object, method, which argument names the file): save(state_dict, path), makedirs(path, ...),
        # _copy_recovery_script(save_path)
        targets = [(ckpt_engine, "save", 1), (ckpt_engine, "makedirs", 0), (engine, "_copy_recovery_script", 0)]
        undo: list[tuple[Any, str, Any]] = []
        for obj, name, path_arg in targets:
            original = getattr(obj, name, None) if obj is not None else None
            if original is None:
                continue
            undo.append((obj, name, vars(obj).get(name)))

            def guarded(*args: Any, _fn: Any = original, _at: int = path_arg, **kwargs: Any) -> Any:
                path = args[_at] if len(args) > _at else kwargs.get("path", kwargs.get("save_path", "?"))
                return self.run(lambda: _fn(*args, **kwargs), path)

            setattr(obj, name, guarded)
        try:
            yield
        finally:
            for obj, name, previous in undo:
                if previous is None:
                    delattr(obj, name)  # the class's own method again
                else:
                    setattr(obj, name, previous)


def failure_line(*, tag: str, ckpt_dir: Path, error: str, path: str | None, rank: int, latest: str | None,
                 requeue: str) -> str:
    """The one line a failed save leaves for `hpcai status` and the job log."""
    free = free_bytes(ckpt_dir)
    where = f"rank {rank}" + (f", {path}" if path else "") + (f"; {format_bytes(free)} free there now"
                                                            if free is not None else "")
    resume = (f"The latest complete checkpoint is {latest} (the partial {tag} was removed)" if latest else
              f"There is no complete checkpoint yet (the partial {tag} was removed): a rerun starts at step 0")
    then = f"`scontrol requeue {requeue}`" if requeue else "`scontrol requeue <jobid>`"
    return (f"Expected to write checkpoint {tag} in {ckpt_dir}. Got {error!r} instead ({where}). {resume}. "
            f"Free space there (or raise the quota), then run {then} to resume.")
