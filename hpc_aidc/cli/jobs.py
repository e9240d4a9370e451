"""`hpcai jobs | status | logs | cancel`: what Slurm knows about your jobs, in one batched call each."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hpc_aidc.cli.common import echo_json, json_option, site_from
from hpc_aidc.errors import SpecError

if TYPE_CHECKING:
    from hpc_aidc.scheduler.parse import AccountingRecord


@click.command()
@click.option("--since", default="now-2days", show_default=True, help="Jobs that ran since (sacct time).")
@click.option("--all-users", "-a", is_flag=True, help="Everyone's jobs that you may see.")
@click.option("--account", "-A", "accounts", multiple=True, help="Only these accounts.")
@json_option
def jobs(since: str, all_users: bool, accounts: tuple[str, ...], as_json: bool) -> None:
    """List your jobs: one sacct and one squeue call, whatever their number."""
    from hpc_aidc.ids import current_user
    from hpc_aidc.render.table import format_duration, format_table
    from hpc_aidc.scheduler.accounting import SLURMDBD_DOWN_NOTE, list_jobs

    listing = list_jobs(user=current_user(), all_users=all_users, accounts=accounts, since=since)
    if listing.live_only:
        click.echo(SLURMDBD_DOWN_NOTE, err=True)
    records = listing.records
    if as_json:
        echo_json([r.to_json() for r in records])
        return
    if not records:
        click.echo(f"No jobs since {since}.")
        return
    rows = [(r.job_id, r.name, r.user, r.account, r.partition, r.state, r.nnodes, r.gpus,
             format_duration(r.elapsed_s), r.nodelist) for r in records]
    click.echo(format_table(["JOBID", "NAME", "USER", "ACCOUNT", "PARTITION", "STATE", "NODES", "GPUS",
                             "ELAPSED", "NODELIST"], rows, right=(6, 7)))


def _readable(path: Path) -> bool:
    try:
        return path.is_file()
    except PermissionError:
        return False


def _job_folder(ctx: click.Context, job_id: str, user: str) -> Path:
    return site_from(ctx).job_root / user / job_id


@click.command()
@click.argument("job_id")
@click.option("--env", "show_env", is_flag=True,
              help="Show the job's environment record instead (environment.json: driver, CUDA, NCCL, packages, "
                   "git commit, GPUs, variables with secrets redacted).")
@json_option
@click.pass_context
def status(ctx: click.Context, job_id: str, show_env: bool, as_json: bool) -> None:
    """Show one job: state, resources, where it ran, and its job directory. JOB_ID may also be a
    pipeline's name or directory (`hpcai submit pipeline`): its stages, their states and job ids."""
    from hpc_aidc.ids import is_job_id

    if not is_job_id(job_id) and not show_env:
        from hpc_aidc.cli.pipeline import show_status

        show_status(ctx, job_id, as_json)
        return
    if show_env:
        _show_environment(ctx, job_id, as_json)
        return
    from hpc_aidc.render.progress import last_problem, read_metrics, training_progress, validation_line
    from hpc_aidc.render.table import format_duration, printable
    from hpc_aidc.scheduler.accounting import SLURMDBD_DOWN_NOTE, find_job

    lookup = find_job(job_id)
    if lookup.live_only:
        click.echo(SLURMDBD_DOWN_NOTE, err=True)
    record = lookup.record
    folder = _job_folder(ctx, record.job_id, record.user)
    metrics = folder / "metrics.jsonl"
    events = read_metrics(metrics.read_text(errors="replace").splitlines()) if _readable(metrics) else []
    progress = training_progress(events)
    problem = last_problem(events)  # e.g. the checkpoint a full filesystem stopped, and what to do
    inference = _inference(ctx, record.job_id, record.user)
    if as_json:
        echo_json({**record.to_json(), "folder": str(folder), "progress": progress, "problem": problem,
                   "inference": inference[1].to_json() if inference else None})
        return
    fields: list[tuple[str, Any]] = [
        ("job", f"{record.job_id} ({record.name})"), ("state", record.state), ("exit code", record.exit_code),
        ("user", record.user), ("account", record.account), ("partition", record.partition),
        ("qos", record.qos), ("nodes", f"{record.nnodes} ({record.nodelist})"), ("gpus", record.gpus),
        ("elapsed", f"{format_duration(record.elapsed_s)} of {record.time_limit}"),
        ("submitted", record.submit), ("started", record.start), ("ended", record.end),
        ("job directory", folder),
    ]
    if progress:
        tps = f"{progress['tokens_per_s']:,.0f}" if progress["tokens_per_s"] else "-"
        fields.append(("progress", f"step {progress['step']}/{progress['max_steps']}, loss {progress['loss']:.4f}, "
                                   f"tokens/s {tps}, ETA {format_duration(progress['eta_s'])}, "
                                   f"restarts {progress['restarts']}"))
        validation = validation_line(progress)
        if validation:
            fields.append(("validation", validation))
        if progress["stopped"]:
            fields.append(("stopped", progress["stopped"]))
    if problem:
        fields.append(("problem", problem))
    for key, value in fields:
        click.echo(f"{key + ':':15s}{printable(value)}")
    if inference:
        from hpc_aidc.cli.infer import render_progress

        out, prog, plan = inference
        click.echo(f"{'inference:':15s}{printable(out)}")
        for line in render_progress(plan, prog, str(out)):
            click.echo(f"{'':15s}{printable(line)}")


def _show_environment(ctx: click.Context, job_id: str, as_json: bool) -> None:
    from hpc_aidc.cli.env import job_environment
    from hpc_aidc.render.environment import summary_lines

    _, record = job_environment(ctx, job_id)
    if as_json:
        echo_json(record)
        return
    for line in summary_lines(record):
        click.echo(line)


def _inference(ctx: click.Context, job_id: str, user: str) -> tuple[Path, Any, Any] | None:
    """(output directory, progress, plan) when the job is a batch-inference array task."""
    from hpc_aidc.errors import HpcAidcError
    from hpc_aidc.scheduler.infer_submit import infer_output_of, run_progress

    out = infer_output_of(site_from(ctx).job_root / user, job_id)
    if out is None:
        return None
    try:
        plan, prog = run_progress(out)
    except (HpcAidcError, OSError):
        return None
    return out, prog, plan


@click.command()
@click.argument("job_id")
@click.option("--task", "-t", "task", type=int, default=0, show_default=True, help="Task (rank) whose log to show.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the job ends (one job or one "
                                                  "array task).")
@click.pass_context
def logs(ctx: click.Context, job_id: str, task: int, follow: bool) -> None:
    """Print a job's task log (stdout and stderr of one srun task).

    \b
    JOB_ID is a job (42), an array task (715_3: a task of `hpcai submit infer`, a sweep trial, a data pack
    task) or a whole array (715): then every task's log, in task order, each after a header line
    `==> 715_3 (STATE) <==`; tasks that have not started are named with no log. --follow takes one job or
    one array task:
      hpcai logs 715_3 --follow"""
    from hpc_aidc.render.table import printable
    from hpc_aidc.scheduler.accounting import find_job_tasks

    if task < 0:
        raise SpecError(f"Expected --task >= 0. Got {task} instead. Tasks count from 0.")
    found = find_job_tasks(job_id)
    site = site_from(ctx)
    if found.array:
        if follow:
            first = next((r.job_id for r in found.records if "[" not in r.job_id), f"{job_id}_0")
            raise SpecError(f"Expected one job or one array task with --follow. Got the whole array {job_id}. "
                            f"Follow one task: `hpcai logs {printable(first)} --follow`.")
        _print_array_logs(site.job_root, found.records, task)
        return
    record = found.records[0]
    name = task_log_name(record.job_id, task)
    if not follow:
        parts = locate_task_log(site.job_root, record.user, record.job_id, task)
        fd = _open_job_file(site.job_root, parts, record.user) if parts else None
        if fd is None:
            raise SpecError(
                f"Expected a log {name} in {site.job_root / record.user / record.job_id} or a run folder of "
                f"{record.user}'s. Got no such file. The job may not have started, may have fewer than "
                f"{task + 1} tasks, or was not submitted by hpcai (state: {record.state})."
            )
        try:
            _copy_out(fd)
        finally:
            os.close(fd)
        return
    _follow(site.job_root, record.user, record.job_id, task)


def task_log_name(job_id: str, rank: int) -> str:
    """The log of one srun task: `<job>_<rank>_log.out`, an array task's job being `<array>_<task>`
    (render.batch_script: %j_%t, and %A_%a_%t for arrays)."""
    return f"{job_id}_{rank}_log.out"


def run_folders() -> tuple[tuple[tuple[str, ...], str], ...]:
    """(parent folder below the user's, name prefix) of the folders whose jobs keep their logs together
    (one folder per run rather than one per job): inference runs and data packs."""
    from hpc_aidc.scheduler.data_pack import PACK_PREFIX, PACKS
    from hpc_aidc.scheduler.infer_submit import RUN_FOLDER_PREFIX

    return (((), RUN_FOLDER_PREFIX), ((PACKS,), PACK_PREFIX))


def locate_task_log(job_root: Path, user: str, job_id: str, rank: int) -> tuple[str, ...] | None:
    """Where the log of task `rank` of job `job_id` (an array task as 715_3) is, as the parts below
    job_root that _open_job_file takes, or None while there is none:
    - `<user>/<job>/` (submit run and train, a sweep trial), else
    - a run folder (run_folders: `<user>/infer-<run>/`, `<user>/data-pack/pack-*/`) that holds it: the
      most recently written one, should Slurm have reused a job id.
    Every folder is opened below job_root without following a link, and a log counts only as the job
    user's own plain file (_open_job_file)."""
    name = task_log_name(job_id, rank)
    own = (user, job_id, name)
    fd = _open_job_file(job_root, own, user)
    if fd is not None:
        os.close(fd)
        return own
    best: tuple[float, tuple[str, ...]] | None = None
    for parent, prefix in run_folders():
        for folder in _subfolders(job_root, (user, *parent), prefix):
            parts = (user, *parent, folder, name)
            fd = _open_job_file(job_root, parts, user)
            if fd is None:
                continue
            try:
                mtime = os.fstat(fd).st_mtime
            finally:
                os.close(fd)
            if best is None or mtime > best[0]:
                best = (mtime, parts)
    return best[1] if best else None


def _subfolders(job_root: Path, parts: tuple[str, ...], prefix: str) -> list[str]:
    """Names of the folders in job_root/parts that start with `prefix`, sorted; the folders on the way are
    opened without following a link below job_root, and an entry that is a link is not listed. None there:
    []."""
    from hpc_aidc.fsutil import DIR_FLAGS

    try:
        fd = os.open(job_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the admin's path: may be a link
        try:
            for part in parts:
                nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nxt
            with os.scandir(fd) as entries:
                return sorted(e.name for e in entries
                              if e.name.startswith(prefix) and e.is_dir(follow_symlinks=False))
        finally:
            os.close(fd)
    except OSError:  # no such folder, a link, or not ours to list: no run folder there
        return []


def _print_array_logs(job_root: Path, records: list[AccountingRecord], rank: int) -> None:
    """Each task's log after a `==> <task> (<state>) <==` header, in task order; an error when no task
    has one."""
    from hpc_aidc.render.table import printable

    shown = 0
    for record in records:
        click.echo(f"==> {printable(record.job_id)} ({printable(record.state)}) <==")
        if "[" in record.job_id:  # 715_[4-7%2]: tasks Slurm has not started
            click.echo("(not started: no log yet)")
            continue
        parts = locate_task_log(job_root, record.user, record.job_id, rank)
        fd = _open_job_file(job_root, parts, record.user) if parts else None
        if fd is None:
            click.echo(f"(no log {task_log_name(record.job_id, rank)})")
            continue
        shown += 1
        try:
            _copy_out(fd)
        finally:
            os.close(fd)
    if not shown:
        ids = ", ".join(printable(r.job_id) for r in records[:5]) + (", ..." if len(records) > 5 else "")
        raise SpecError(f"Expected a log of task {rank} of at least one of the array's tasks ({ids}). Got none. "
                        "They may not have started, may have fewer tasks, or were not submitted by hpcai.")


_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _open_job_file(job_root: Path, parts: tuple[str, ...], user: str) -> int | None:
    """A file of `user`'s job folder, opened as a user's file must be when root (or anyone) reads it: each
    folder below the admin's job_root opened without following a link, the file with O_NOFOLLOW and O_NONBLOCK
    (a FIFO cannot hang us), and used only if it is a regular file owned by the job's user, so a link or a hard
    link to a file only root may read shows nothing. None when it is not there (yet)."""
    import errno
    import pwd
    import stat

    from hpc_aidc.errors import AccessError
    from hpc_aidc.fsutil import DIR_FLAGS

    path = job_root.joinpath(*parts)
    try:
        owner = pwd.getpwnam(user).pw_uid
    except KeyError:
        raise AccessError(f"Expected the job's user {user!r} to exist here. Got no such user. Its files are not "
                          "read.") from None
    try:
        fd = os.open(job_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the admin's path: may be a link
        try:
            for part in parts[:-1]:
                nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nxt
            file_fd = os.open(parts[-1], _READ_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)
    except FileNotFoundError:
        return None
    except PermissionError:
        raise AccessError(f"Expected read access to {path}. Got permission denied. Job logs are readable by the "
                          "job's user (and root).") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
            raise AccessError(f"Expected {path} to be a plain file in {user}'s job folder. Got a link (or a "
                              "link above it): not followed.") from None
        raise
    st = os.fstat(file_fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != owner:
        os.close(file_fd)
        raise AccessError(f"Expected {path} to be a regular file of {user}'s. Got "
                          f"{'owner uid ' + str(st.st_uid) if stat.S_ISREG(st.st_mode) else 'no regular file'}: "
                          "not read. The job's user can say why it is there.")
    os.set_blocking(file_fd, True)
    return file_fd


def _copy_out(fd: int) -> int:
    """Print what `fd` holds from its current offset on, a block at a time (a log may be larger than memory)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    copied = 0
    while chunk := os.read(fd, 1 << 20):
        sys.stdout.write(decoder.decode(chunk))
        copied += len(chunk)
    sys.stdout.write(decoder.decode(b"", final=True))
    sys.stdout.flush()
    return copied


def _follow(job_root: Path, user: str, job_id: str, rank: int) -> None:
    """Print the log as it grows (a local file, read every half second) until the job ends; Slurm is asked
    for the job's state by the policy (scheduler.poll: at most once per 15 s), at once when the job's
    folder holds submitit's result (the task ended). The log is looked for (locate_task_log) until it
    is there: an array task's run folder is known by its log."""
    from hpc_aidc.scheduler.poll import JobWatch

    watch = JobWatch((job_id,))
    result = job_root / user / job_id / f"{job_id}_0_result.pkl"
    fd: int | None = None
    finished = False
    try:
        while True:
            if fd is None:
                parts = locate_task_log(job_root, user, job_id, rank)
                fd = _open_job_file(job_root, parts, user) if parts else None
            if fd is not None:
                _copy_out(fd)
            if finished:
                return
            if _readable(result):
                watch.check_soon()
            watch.poll()
            # One more read after the job ends catches lines flushed at exit.
            finished = watch.done
            time.sleep(0.5)
    finally:
        if fd is not None:
            os.close(fd)


@click.command()
@click.argument("job_ids", nargs=-1, required=True)
@json_option
def cancel(job_ids: tuple[str, ...], as_json: bool) -> None:
    """Cancel one or more jobs (array tasks as 123_4). An id Slurm does not know, or a job you may not
    cancel, is an error (exit 2); a job that had already ended is said so."""
    from hpc_aidc.scheduler.accounting import cancel_jobs

    outcome = cancel_jobs(job_ids)
    if as_json:
        echo_json({"cancelled": outcome.cancelled, "already_ended": outcome.already_ended})
        return
    if outcome.cancelled:
        click.echo(f"Cancelled {', '.join(outcome.cancelled)}")
    if outcome.already_ended:
        click.echo(f"Already ended, nothing to cancel: {', '.join(outcome.already_ended)}")


@click.command()
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--timeout", "timeout_s", type=float, default=None, metavar="SECONDS",
              help="Give up (exit 3) after this long [wait as long as it takes].")
@json_option
def wait(job_ids: tuple[str, ...], timeout_s: float | None, as_json: bool) -> None:
    """Wait until every JOB_ID (an array: all its tasks) has ended; exit 1 unless all COMPLETED.

    Slurm is asked in one call for all of them, soon after they were submitted and then at most once per
    15 s (squeue while they are queued, sacct once they have left the queue), so a waiting terminal
    costs the controller 4 calls a minute."""
    from hpc_aidc.ids import parse_job_id
    from hpc_aidc.scheduler.wait import wait_for_jobs

    ids = [parse_job_id(j) for j in job_ids]
    try:
        states = wait_for_jobs(ids, timeout_s=timeout_s)
    except TimeoutError as exc:
        click.echo(f"hpcai: {exc}", err=True)
        sys.exit(3)
    final = {j: states.get(j, "UNKNOWN") for j in ids}
    if as_json:
        echo_json([{"job_id": j, "state": state} for j, state in final.items()])
    else:
        for j, state in final.items():
            click.echo(f"{j} {state}")
    if any(state != "COMPLETED" for state in final.values()):
        sys.exit(1)

