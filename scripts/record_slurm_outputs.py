"""Record real Slurm output for the parsers' tests: run on a dev cluster (as root), e.g. inside a chroot one:

    slurm/devcluster/chroot.sh 24.11 run env PYTHONPATH=$PWD /opt/hpcai/venv/bin/python \\
        $PWD/scripts/record_slurm_outputs.py /tmp/recorded

It submits a few jobs (a finished GPU job, a running one with a typed GRES, a throttled array, a requeued
job, a pending one), runs the same command lines hpc_aidc runs (its own argv builders and fences) and writes
each output to OUT/<name>.txt: fenced listings (sacct, squeue) unfenced into the canonical form the parsers
read, like tests/recorded/*.txt; everything else as Slurm printed it. OUT/COMMANDS.md says which exact
command, as which user, wrote each file."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from hpc_aidc.report.rows import REPORT_FIELDS
from hpc_aidc.scheduler.accounting import sacct_argv
from hpc_aidc.scheduler.energy_accounting import JOB_FIELDS
from hpc_aidc.scheduler.fence import Fence, unfence
from hpc_aidc.scheduler.parse import SACCT_FIELDS, SQUEUE_FIELDS

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/recorded")
NOTES: list[str] = []


def run(argv: Sequence[str], user: str | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    full = ["runuser", "-u", user, "--", *argv] if user else list(argv)
    return subprocess.run(full, input=stdin, capture_output=True, text=True, check=False, cwd="/tmp")


def record(name: str, argv: Sequence[str], *, user: str | None = None, stdin: str | None = None,
           fenced: tuple[Fence, int] | None = None, stderr: bool = False, note: str = "") -> str:
    """Run argv, write OUT/name.txt (stdout; with stderr=True stderr after it), log the command line."""
    proc = run(argv, user, stdin)
    text = proc.stdout
    if fenced is not None:
        fence, nfields = fenced
        rows = unfence(text, fence, nfields)
        assert not rows.quarantined, (name, rows.quarantined)
        text = "".join(f"{line}\n" for line in rows.lines)
    if stderr:
        text += proc.stderr
    (OUT / f"{name}.txt").write_text(text)
    who = f"as {user}" if user else "as root"
    extra = f"; stdin: {stdin!r}" if stdin else ""
    how = "; unfenced to the canonical form (fields joined by \\x1f, trailer dropped)" if fenced else ""
    err = "; stderr appended" if stderr else ""
    NOTES.append(f"- `{name}.txt` ({who}, exit {proc.returncode}{how}{err}{extra}{'; ' + note if note else ''}):\n"
                 f"  `{shlex.join(argv)}`")
    return proc.stdout


def submit(argv: Sequence[str], user: str | None = None) -> str:
    proc = run(["sbatch", "--parsable", *argv], user)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    NOTES.append(f"- job {job_id} ({'as ' + user if user else 'as root'}): `sbatch --parsable {shlex.join(argv)}`")
    return job_id


def state(job_id: str) -> str:
    out = run(["squeue", "-h", "-j", job_id, "-o", "%T"]).stdout.split()
    if out:
        return out[0]
    acct = run(["sacct", "-X", "-n", "-P", "-o", "State", "-j", job_id]).stdout.split()
    return acct[0] if acct else "UNKNOWN"


def wait(what: str, ready: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.5)


def ended(job_id: str) -> bool:
    return run(["squeue", "-h", "-j", job_id, "-o", "%T"]).stdout.strip() == "" or \
        state(job_id) in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}


def ended_check(job_id: str) -> Callable[[], bool]:
    return lambda: ended(job_id)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    version = run(["sinfo", "-V"]).stdout.strip()
    start = datetime.now().replace(microsecond=0) - timedelta(minutes=1)

    done = submit(["-A", "physics", "-p", "debug", "--gres=gpu:1", "-J", "done", "-o", "/dev/null",
                   "--wrap", "env | grep CUDA"], "alice")
    typed = submit(["-A", "physics", "-p", "gpu", "--gres=gpu:h100:1", "-J", "typed", "-o", "/dev/null",
                    "--wrap", "sleep 120"])
    array = submit(["-A", "climate", "--array=1-4%2", "-J", "arr", "-o", "/tmp/arr_%A_%a.out",
                    "--wrap", "sleep 4"])
    requeued = submit(["-A", "physics", "-J", "rq", "-o", "/dev/null", "--wrap", "sleep 6"])
    pending = submit(["-A", "physics", "-p", "debug", "-J", "later", "--begin=now+1hour", "-o", "/dev/null",
                      "--wrap", "true"], "alice")

    wait("the typed job to run", lambda: state(typed) == "RUNNING")
    wait("the requeue job to run", lambda: state(requeued) == "RUNNING")
    requeue = run(["scontrol", "requeue", requeued])
    NOTES.append(f"- `scontrol requeue {requeued}` while it ran (exit {requeue.returncode})")
    wait("the array's first tasks to run", lambda: "RUNNING" in run(
        ["squeue", "-h", "-r", "-j", array, "-o", "%T"]).stdout)

    # live: slurmctld's view
    record("scontrol_job_running_typed_gres", ["scontrol", "show", "job", typed])
    record("scontrol_job_pending", ["scontrol", "show", "job", pending], user="alice")
    record("scontrol_job_array", ["scontrol", "show", "job", array])
    record("scontrol_local_job", ["scontrol", "--local", "show", "job", typed])
    record("scontrol_nodes", ["scontrol", "show", "node", "-o"])
    record("scontrol_partitions", ["scontrol", "show", "partition", "-o"])
    record("scontrol_config", ["scontrol", "show", "config"])
    fence = Fence.new()
    record("squeue", ["squeue", "--noheader", f"--format={fence.squeue_format(SQUEUE_FIELDS)}", "--states=all",
                      "--all"], fenced=(fence, len(SQUEUE_FIELDS) + 1), note="hpc_aidc.scheduler.accounting.queue_jobs")
    fence = Fence.new()
    record("squeue_alice", ["squeue", "--noheader", f"--format={fence.squeue_format(SQUEUE_FIELDS)}",
                            "--user=alice"], user="alice", fenced=(fence, len(SQUEUE_FIELDS) + 1))
    ids = ",".join([typed, array, pending, requeued])
    record("squeue_poll_states", ["squeue", "--local", "--noheader", "--array", "--states=all", f"--jobs={ids}",
                                  "--format=%i|%A|%T"], note="hpc_aidc.scheduler.poll.queue_states")
    record("squeue_infer_states", ["squeue", "-h", "-r", "-o", "%i|%T", "-j", array],
           note="hpc_aidc.scheduler.infer")
    script = ("#!/bin/bash\n#SBATCH -A physics\n#SBATCH -p debug\n#SBATCH --gres=gpu:1\n#SBATCH -t 00:05:00\n"
              "srun hostname\n")
    record("sbatch_test_only", ["sbatch", "--test-only"], user="alice", stdin=script, stderr=True,
           note="hpc_aidc.scheduler.submit (the script on stdin)")
    record("sbatch_policy_refused", ["sbatch", "-A", "physics", "-p", "cpu", "-t", "10", "--gres=gpu:1",
                                     "--wrap", "true"], user="alice", stderr=True,
           note="job_submit.lua refuses a GPU job on the cpu partition")
    record("scancel_verbose", ["scancel", "--verbose", pending, "999999", typed], user="alice", stderr=True,
           note=f"{pending}: alice's pending job, 999999: none, {typed}: root's running job")
    run(["scancel", typed])

    for job in (done, typed, array, requeued, pending):  # a requeued job waits ~2 min before it runs again
        wait(f"job {job} to end", ended_check(job), timeout=240)
    wait("the array's tasks to end", lambda: run(["squeue", "-h", "-r", "-j", array]).stdout.strip() == "")
    time.sleep(2)  # slurmdbd has the last records
    record("scontrol_job_finished", ["scontrol", "show", "job", done])

    jobs = [done, typed, array, requeued, pending]
    fence = Fence.new()
    record("sacct_allocations", sacct_argv(fence, job_ids=jobs, all_users=True),
           fenced=(fence, len(SACCT_FIELDS) + 1), note="hpc_aidc.scheduler.accounting.sacct_argv")
    fence = Fence.new()
    record("sacct_alice", sacct_argv(fence, user="alice"), user="alice", fenced=(fence, len(SACCT_FIELDS) + 1))
    fence = Fence.new()
    record("sacct_steps", sacct_argv(fence, job_ids=jobs, all_users=True, allocations_only=False),
           fenced=(fence, len(SACCT_FIELDS) + 1))
    fence = Fence.new()
    end = datetime.now().replace(microsecond=0) + timedelta(minutes=1)
    record("sacct_report", ["sacct", *fence.sacct_args(REPORT_FIELDS), "--allocations", "--duplicates", "--allusers",
                            f"--starttime={start.isoformat()}", f"--endtime={end.isoformat()}"],
           fenced=(fence, len(REPORT_FIELDS) + 1), note="hpc_aidc.report.source.report_sacct_argv (no filters)")
    record("sacct_ended_states", ["sacct", "--noheader", "--parsable2", "--allocations",
                                  "--format=JobID,JobIDRaw,State", f"--jobs={','.join(jobs)}"],
           note="hpc_aidc.scheduler.poll.ended_states")
    record("sacct_array_states", ["sacct", "-X", "-n", "-P", "-o", "jobid,state", "-j", array],
           note="hpc_aidc.scheduler.infer")
    record("sacct_energy_fields", ["sacct", "-j", done, "-X", "-n", "-P", "-o", ",".join(JOB_FIELDS)],
           note="hpc_aidc.scheduler.energy_accounting")
    record("sacct_admincomment", ["sacct", "-j", done, "-o", "AdminComment%300"])
    record("sacct_requeued_duplicates", ["sacct", "-X", "--duplicates", "-P", "-o", "JobID,JobIDRaw,State,Start,End",
                                         "-j", requeued])
    record("sacct_batch_script", ["sacct", "--batch-script", "-j", requeued], note="hpc_aidc.scheduler.audit")
    record("sacct_json", ["sacct", "--json", "-j", done])
    record("sacctmgr_assoc", ["sacctmgr", "show", "assoc", "-P"])
    record("sacctmgr_user_assocs", ["sacctmgr", "--noheader", "--parsable2", "show", "associations", "where",
                                    "user=alice", "format=account,qos"], user="alice",
           note="hpc_aidc.scheduler.associations.user_associations")
    record("sacctmgr_assoc_users", ["sacctmgr", "--noheader", "--parsable2", "show", "associations",
                                    "format=user"], note="hpc_aidc.install.user_folders")
    record("sacctmgr_user_withcoord", ["sacctmgr", "--noheader", "--parsable2", "show", "user", "alice", "withcoord",
                                       "format=user,adminlevel,coordinators"], user="alice",
           note="hpc_aidc.report.access.viewer")
    record("sreport_cluster_utilization", ["sreport", "cluster", "utilization", "-P"])
    record("sdiag", ["sdiag"])

    header = [f"# Recorded on {version} (slurm/devcluster/chroot.sh dev cluster), {datetime.now():%Y-%m-%d}",
              "", "Written by scripts/record_slurm_outputs.py. The files hold only what Slurm printed (no header "
              "line), as tests/recorded/*.txt do.", ""]
    (OUT / "COMMANDS.md").write_text("\n".join([*header, *NOTES, ""]))
    print(f"recorded {len(list(OUT.glob('*.txt')))} outputs of {version} into {OUT}")


if __name__ == "__main__":
    main()
