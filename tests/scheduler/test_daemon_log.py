"""Daemon logs: the `Invalid PrologSlurmctld/EpilogSlurmctld(...)` lines slurmctld writes once at start.

tests/recorded/slurmctld_invalid_scripts.log is a real Slurm 22.05.8 slurmctld log (a throwaway cluster
beside the dev cluster): started with PrologSlurmctld missing and EpilogSlurmctld in a 0700 folder of root's,
reconfigured (which logs nothing about them), ran two jobs, then restarted with both fixed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import RECORDED, REPO

from hpc_aidc.scheduler.daemon_log import InvalidScript, LogScan, invalid_scripts, scan_log

RECORDING = RECORDED / "slurmctld_invalid_scripts.log"
SECOND_START = "slurmctld version 22.05.8 started on cluster ctldexp"


def _first_run() -> list[str]:
    """The recording up to (not including) slurmctld's second start: the broken configuration's run."""
    lines = RECORDING.read_text().splitlines()
    second = [i for i, line in enumerate(lines) if SECOND_START in line][1]
    return lines[:second]


def test_the_recorded_lines_of_the_broken_run() -> None:
    assert invalid_scripts(_first_run()) == (
        InvalidScript("[2026-12-07T08:28:29.113] error: Invalid PrologSlurmctld(`/tmp/ctldexp/missing.sh`): "
                      "No such file or directory", "PrologSlurmctld", "/tmp/ctldexp/missing.sh",
                      "No such file or directory"),
        InvalidScript("[2026-12-07T08:28:29.113] error: Invalid EpilogSlurmctld(`/root/ctldexp_hidden/epi.sh`): "
                      "Permission denied", "EpilogSlurmctld", "/root/ctldexp_hidden/epi.sh", "Permission denied"),
    )


def test_a_restart_after_the_fix_clears_them() -> None:
    """The whole recording ends with a clean start: what was fixed and restarted away does not count."""
    text = RECORDING.read_text()
    assert "Invalid EpilogSlurmctld" in text and "Processing Reconfiguration Request" in text
    assert invalid_scripts(text.splitlines()) == ()


def test_a_file_object_and_newlines() -> None:
    with RECORDING.open() as f:
        assert invalid_scripts(f) == ()
    found = invalid_scripts(line + "\n" for line in _first_run())
    assert [s.line for s in found] == [s.line for s in invalid_scripts(_first_run())]


def test_the_form_without_backticks_and_every_setting() -> None:
    lines = [
        "[2026-01-01T00:00:00.000] slurmctld version 22.05.8 started on cluster c",
        "[2026-01-01T00:00:01.000] error: Invalid EpilogSlurmctld(/root/x/slurm/devcluster/../epilog_slurmctld.sh):"
        " Permission denied",
        "[2026-01-01T00:00:01.000] error: Invalid Prolog(`/opt/p.sh`): Permission denied",
        "[2026-01-01T00:00:01.000] error: Invalid Epilog(/opt/e.sh): No such file or directory",
        "[2026-01-01T00:00:01.000] error: Invalid PrologSlurmctld(`/opt/ps.sh`): Permission denied",
        "[2026-01-01T00:00:01.000] error: Configured MailProg is invalid",
        "[2026-01-01T00:00:01.000] error: Invalid node state specified",
        "[2026-01-01T00:00:01.000] error: Invalid TaskProlog(`/opt/t.sh`): Permission denied",
    ]
    found = invalid_scripts(lines)
    assert [(s.setting, s.path, s.reason) for s in found] == [
        ("EpilogSlurmctld", "/root/x/slurm/devcluster/../epilog_slurmctld.sh", "Permission denied"),
        ("Prolog", "/opt/p.sh", "Permission denied"),
        ("Epilog", "/opt/e.sh", "No such file or directory"),
        ("PrologSlurmctld", "/opt/ps.sh", "Permission denied"),
    ]


def test_only_the_daemons_own_start_resets() -> None:
    bad = "[t] error: Invalid Epilog(`/opt/e.sh`): Permission denied"
    slurmd_start = "[t] slurmd version 22.05.8 started"
    ctld_start = "[t] slurmctld version 22.05.8 started on cluster c"
    assert len(invalid_scripts([bad, slurmd_start])) == 1          # slurmctld's log: not its start
    assert invalid_scripts([bad, slurmd_start], daemon="slurmd") == ()
    assert invalid_scripts([bad, ctld_start], daemon="slurmd")[0].path == "/opt/e.sh"
    assert len(invalid_scripts([bad])) == 1                         # no start in the log (rotated): all count


def test_scan_log_reads_or_says_why_not(tmp_path: Path) -> None:
    log = tmp_path / "slurmctld.log"
    log.write_text("\n".join(_first_run()) + "\n")
    scan = scan_log(str(log))
    assert scan.skipped is None and scan.path == str(log)
    assert [s.setting for s in scan.invalid] == ["PrologSlurmctld", "EpilogSlurmctld"]
    missing = scan_log(str(tmp_path / "none.log"))
    assert missing == LogScan(str(tmp_path / "none.log"), skipped=f"cannot read {tmp_path}/none.log: "
                              "No such file or directory")
    assert scan_log(None).skipped == scan_log("").skipped == "no slurmctld log file is set (it logs to syslog)"


def _up_sh_check(state: Path) -> subprocess.CompletedProcess[str]:
    """up.sh's bash twin (slurm/devcluster/common.sh check_ctld_scripts) on $state/log/slurmctld.log."""
    script = f'set -euo pipefail; source "{REPO}/slurm/devcluster/common.sh"; check_ctld_scripts'
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False,
                          env={"PATH": "/usr/bin:/bin", "HPCAI_DEVCLUSTER_STATE": str(state)})


@pytest.mark.parametrize(("lines", "fails"), [
    (_first_run(), True),
    (RECORDING.read_text().splitlines(), False),
    ([line for line in _first_run() if "started" not in line], True),
    (["[t] error: Invalid EpilogSlurmctld(/root/x/epilog_slurmctld.sh): Permission denied"], True),
    (["[t] slurmctld version 22.05.8 started on cluster c"], False),
], ids=["broken", "restarted-after-fix", "no-start-line", "issue-form", "clean"])
def test_up_sh_agrees_with_the_parser(tmp_path: Path, lines: list[str], fails: bool) -> None:
    (tmp_path / "log").mkdir()
    (tmp_path / "log/slurmctld.log").write_text("\n".join(lines) + "\n")
    proc = _up_sh_check(tmp_path)
    assert (proc.returncode != 0) == fails == bool(invalid_scripts(lines)), proc.stderr
    for bad in invalid_scripts(lines):
        assert bad.line in proc.stderr.splitlines()
    if fails:
        assert "then restart slurmctld" in proc.stderr


def test_up_sh_fails_on_an_unreadable_log(tmp_path: Path) -> None:
    proc = _up_sh_check(tmp_path)
    assert proc.returncode == 1 and "cannot read" in proc.stderr


def test_user_text_logged_mid_line_neither_raises_nor_hides_an_alarm() -> None:
    """The log also holds text users wrote (a policy refusal quotes the request): only Slurm's own lines,
    from their start, count."""
    real = "[t] error: Invalid EpilogSlurmctld(`/opt/e.sh`): Permission denied"
    forged_start = "[t] lua: hpc-aidc policy: refused a job of uid 1001: slurmctld version 9 started on cluster c"
    forged_alarm = "[t] lua: hpc-aidc policy: refused a job of uid 1001: error: Invalid Prolog(`/x`): y"
    start = "[t] slurmctld version 22.05.8 started on cluster c"
    assert [s.line for s in invalid_scripts([start, real, forged_start, forged_alarm])] == [real]
    assert [s.line for s in invalid_scripts([start, real.removeprefix("[t] ")])] == [real.removeprefix("[t] ")]
