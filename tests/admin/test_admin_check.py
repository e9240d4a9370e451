"""`hpcai admin check`: slurm.conf (live or a file) against the site profile, one line per problem with its
fix; the prolog.d glob counts for `hpcai site check` too."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import RECORDED, REPO, RunHpcai, assert_clean_error
from site_fixture import site_doc

from hpc_aidc.scheduler import admin_check
from hpc_aidc.scheduler.admin_check import AdminFacts, PathFacts, admin_problems, parse_show_config, parse_slurm_conf
from hpc_aidc.scheduler.daemon_log import LogScan, invalid_scripts
from hpc_aidc.scheduler.site_check import ClusterFacts, runs_energy_prolog
from hpc_aidc.site_profile import SiteProfile, parse_site

STORE = "/energy"
GOOD_CONF = {
    "prolog": "/opt/hpcai/slurm/prolog.d/*", "prologflags": "Alloc", "schedulerparameters": "nohold_on_prolog_fail",
    "epilog": "/opt/hpcai/slurm/energy/epilog.sh", "epilogslurmctld": "/opt/hpcai/slurm/energy/epilog_slurmctld.sh",
    "jobsubmitplugins": "lua", "grestypes": "gpu", "accountingstoragetres": "cpu,mem,gres/gpu",
    "privatedata": "accounts,jobs,usage,users",
}
SCRIPTS = ("/opt/hpcai/slurm/prolog.d/10-energy.sh", "/opt/hpcai/slurm/prolog.d/20-gpu-health.sh")
GOOD_PATHS = {
    STORE: PathFacts(0, 0, 0o711, True, False),
    f"{STORE}/accounting": PathFacts(0, 0, 0o2770, True, False),
    f"{STORE}/accounting/spool": PathFacts(0, 0, 0o2770, True, False),
    "/etc/hpcai/site.toml": PathFacts(0, 0, 0o644, False, False),
    "/etc/hpcai/energy.env": PathFacts(0, 0, 0o644, False, False),
}


def site() -> SiteProfile:
    doc = site_doc()
    doc["cluster"]["energy_prolog"] = True
    doc["policy"] = {"require_account": True}
    return parse_site(doc, source="t.toml")


def facts(**changes: object) -> AdminFacts:
    base = AdminFacts(config=dict(GOOD_CONF), source="test", prolog_scripts=SCRIPTS, paths=dict(GOOD_PATHS),
                      job_submit_lua="LUA", job_submit_lua_path="/etc/slurm/job_submit.lua", slurm_group="root")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def conf(**changes: str) -> dict[str, str]:
    return {k: v for k, v in {**GOOD_CONF, **changes}.items() if v != "-"}


def test_a_good_setup_has_no_problems() -> None:
    assert admin_problems(site(), facts(), "LUA") == []


@pytest.mark.parametrize(("change", "needle"), [
    ({"config": conf(prolog="/opt/hpcai/slurm/energy/prolog.sh"), "prolog_scripts": ()},
     "without the GPU health check"),
    ({"config": conf(prolog="-"), "prolog_scripts": ()}, "without hpc-aidc's energy prolog (energy_prolog = true"),
    ({"config": conf(prologflags="-")}, "PrologFlags=Alloc"),
    ({"config": conf(schedulerparameters="bf_continue")}, "nohold_on_prolog_fail"),
    ({"config": conf(epilog="-")}, "Epilog=/opt/hpcai/slurm/energy/epilog.sh"),
    ({"config": conf(epilogslurmctld="/x.sh")}, "EpilogSlurmctld=/opt/hpcai/slurm/energy/epilog_slurmctld.sh"),
    ({"config": conf(jobsubmitplugins="-")}, "JobSubmitPlugins=lua"),
    ({"job_submit_lua": None}, "is missing: slurmctld refuses every job"),
    ({"job_submit_lua": "OLD"}, "stale policy"),
    ({"config": conf(accountingstoragetres="cpu,mem")}, "AccountingStorageTRES=gres/gpu"),
    ({"config": conf(privatedata="jobs")}, "PrivateData lacks accounts,usage,users"),
    ({"paths": {**GOOD_PATHS, STORE: PathFacts(1000, 0, 0o1777, True, False)}}, "chmod 0711 /energy"),
    ({"paths": {**GOOD_PATHS, STORE: None}}, "install -d -o root -g root -m 0711 /energy"),
    ({"paths": {**GOOD_PATHS, f"{STORE}/accounting": PathFacts(0, 0, 0o777, True, False)}}, "expected root:root 2770"),
    ({"paths": {**GOOD_PATHS, "/etc/hpcai/site.toml": PathFacts(1000, 0, 0o644, False, False)}},
     "chown root:root /etc/hpcai/site.toml"),
])
def test_each_problem_is_one_line_with_its_fix(change: dict[str, object], needle: str) -> None:
    problems = admin_problems(site(), facts(**change), "LUA")
    assert len(problems) == 1, problems
    assert needle in problems[0] and "fix: " in problems[0] and "\n" not in problems[0]


CTLD_LOG = "/var/log/slurm/slurmctld.log"
# Recorded from Slurm 22.05.8 (tests/recorded/slurmctld_invalid_scripts.log) and the report.
INVALID_LINES = (
    "[2026-12-07T08:28:29.111] slurmctld version 22.05.8 started on cluster ctldexp",
    "[2026-12-07T08:28:29.113] error: Invalid PrologSlurmctld(`/tmp/ctldexp/missing.sh`): No such file or directory",
    "[2026-12-07T08:28:29.113] error: Invalid EpilogSlurmctld(`/root/ctldexp_hidden/epi.sh`): Permission denied",
)


def test_each_invalid_script_line_since_the_start_is_a_problem() -> None:
    scan = LogScan(CTLD_LOG, invalid_scripts(INVALID_LINES))
    problems = admin_problems(site(), facts(config=conf(slurmuser="slurm(64030)"), ctld_log=scan), "LUA")
    assert len(problems) == 2, problems
    for problem, line in zip(problems, INVALID_LINES[1:], strict=True):
        assert problem.startswith(f"{CTLD_LOG}: {line}: slurmctld found ") and "\n" not in problem
        assert "fix: " in problem and "executable by root and slurm, with every folder above it enterable" in problem
        assert problem.endswith("then restart slurmctld (`scontrol reconfigure` does not check it again)")
    assert "namei -l /root/ctldexp_hidden/epi.sh" in problems[1]
    node = LogScan(CTLD_LOG, invalid_scripts(["[t] error: Invalid Epilog(/opt/e.sh): Permission denied"]))
    assert "then restart slurmctld and the slurmds" in admin_problems(site(), facts(ctld_log=node), "LUA")[0]


def test_a_clean_or_unread_log_is_no_problem() -> None:
    restarted = LogScan(CTLD_LOG, invalid_scripts((*INVALID_LINES, INVALID_LINES[0])))
    skipped = LogScan(CTLD_LOG, skipped=f"cannot read {CTLD_LOG}: Permission denied")
    assert admin_problems(site(), facts(ctld_log=restarted), "LUA") == []
    assert admin_problems(site(), facts(ctld_log=skipped), "LUA") == []


def test_gather_facts_reads_slurmctlds_log_live_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    log = tmp_path / "slurmctld.log"
    shown = (RECORDED / "scontrol_config_admin.txt").read_text().replace(
        "/var/lib/hpcai-devcluster/log/slurmctld.log", str(log))
    monkeypatch.setattr(admin_check, "run_slurm",
                        lambda argv: subprocess.CompletedProcess(argv, 0, stdout=shown, stderr=""))
    unread = admin_check.gather_facts(site())
    assert unread.source == (f"scontrol show config (slurmctld log not checked: cannot read {log}: "
                             "No such file or directory)")
    log.write_text("\n".join(INVALID_LINES) + "\n")
    live = admin_check.gather_facts(site())
    assert live.source == "scontrol show config" and live.ctld_log is not None
    assert [bad.setting for bad in live.ctld_log.invalid] == ["PrologSlurmctld", "EpilogSlurmctld"]
    written = tmp_path / "slurm.conf"
    written.write_text(f"SlurmctldLogFile={log}\n")
    assert admin_check.gather_facts(site(), written).ctld_log is None  # a file to check, not a running slurmctld


def test_parsers_on_recorded_and_written_config() -> None:
    shown = parse_show_config((RECORDED / "scontrol_config_admin.txt").read_text())
    assert shown["jobsubmitplugins"] == "lua" and shown["prolog"].endswith("prolog.d/*")
    assert "gres/gpu" in shown["accountingstoragetres"] and shown["prologslurmctld"] == ""
    written = parse_slurm_conf((REPO / "slurm/devcluster/slurm.conf.in").read_text())
    assert written["prolog"] == "@PREFIX@/slurm/prolog.d/*"
    assert written["schedulerparameters"] == "nohold_on_prolog_fail"
    assert written["nodename"] == "n1"  # the first of repeated keys


def test_site_check_understands_a_prolog_directory() -> None:
    bare = ClusterFacts(partitions={}, nodes={}, accounts=frozenset(), qos=frozenset())
    assert runs_energy_prolog(dataclasses.replace(bare, prolog="/opt/hpcai/slurm/energy/prolog.sh"))
    assert runs_energy_prolog(dataclasses.replace(bare, prolog="/x/prolog.d/*", prolog_scripts=SCRIPTS))
    assert not runs_energy_prolog(dataclasses.replace(bare, prolog="/x/prolog.d/*", prolog_scripts=(SCRIPTS[1],)))


def test_bad_slurm_conf_path(hpcai: RunHpcai, tmp_path: Path) -> None:
    assert_clean_error(hpcai("admin", "check", "--slurm-conf", str(tmp_path / "none.conf")), "does not exist")


@pytest.mark.cluster
@pytest.mark.usefixtures("cluster")
def test_the_dev_cluster_passes(hpcai: RunHpcai, tmp_path: Path) -> None:
    live = hpcai("admin", "check")
    assert live.returncode == 0 and live.stdout.strip().endswith(": OK"), live.stdout + live.stderr
    assert "not checked" not in live.stdout  # root reads slurmctld's log: no Invalid EpilogSlurmctld since start
    unread = hpcai("admin", "check", user="alice")  # slurmctld.log is slurm's 0600: said, never a problem
    assert "(slurmctld log not checked: cannot read " in unread.stdout and "Permission denied" in unread.stdout
    assert "  - /var/lib/hpcai-devcluster/log/slurmctld.log" not in unread.stdout and "Traceback" not in unread.stderr
    site = hpcai("site", "check")
    assert site.returncode == 0, site.stdout
    broken = tmp_path / "slurm.conf"
    broken.write_text(Path("/etc/slurm/slurm.conf").read_text().replace("PrivateData=", "#PrivateData="))
    (tmp_path / "job_submit.lua").write_text(Path("/etc/slurm/job_submit.lua").read_text())
    proc = hpcai("admin", "check", "--slurm-conf", str(broken), "--json")
    assert proc.returncode == 1
    assert "PrivateData lacks accounts,jobs,usage,users" in proc.stdout


# -- the chain of what slurm.conf runs as root ----------------------------------------------------------------

def test_configured_scripts_and_the_kit_beside_them(tmp_path: Path) -> None:
    from hpc_aidc.install.kit_chain import configured_scripts, kit_scripts
    from hpc_aidc.install.plan import SLURM_SCRIPTS

    config = {"prolog": "/k/slurm/prolog.d/*", "epilog": "/k/slurm/energy/epilog.sh", "epilogslurmctld": "",
              "prologslurmctld": "/site/ctld-prolog.sh"}
    assert configured_scripts(config, SCRIPTS) == [
        ("Prolog (/k/slurm/prolog.d/*)", SCRIPTS[0]), ("Prolog (/k/slurm/prolog.d/*)", SCRIPTS[1]),
        ("Epilog", "/k/slurm/energy/epilog.sh"), ("PrologSlurmctld", "/site/ctld-prolog.sh")]
    kit = tmp_path / "slurm"
    for rel in SLURM_SCRIPTS:
        (kit / rel).parent.mkdir(parents=True, exist_ok=True)
        (kit / rel).write_text("#!/bin/sh\n")
    found = kit_scripts([str(kit / "energy/epilog.sh"), "/site/other.sh"])
    assert sorted(found) == sorted(str(kit / rel) for rel in SLURM_SCRIPTS)


def test_each_chain_link_is_one_problem_line() -> None:
    from hpc_aidc.scheduler.admin_check import ChainLink

    links = (ChainLink("/opt/kit", "owned by uid 1001", "Epilog /opt/kit/slurm/energy/epilog.sh"),
             ChainLink("/opt/venv/bin/python", "writable by everyone", "the Python the scripts run"))
    problems = admin_problems(site(), facts(chain=links), "LUA")
    assert len(problems) == 2
    assert problems[0].startswith("/opt/kit (owned by uid 1001) is on the way to Epilog /opt/kit/slurm/energy/")
    assert all("fix: " in p and "\n" not in p for p in problems)


@pytest.mark.skipif(os.geteuid() != 0 or subprocess.run(["id", "alice"], capture_output=True, check=False).returncode,
                    reason="needs root and the dev cluster's user alice")
def test_check_names_each_link_of_the_chain_others_could_change(hpcai: RunHpcai) -> None:
    """A kit laid out as `hpcai admin install` does, then weakened link by link as alice could use it: a folder
    above a script hers, a script anyone may write, and the Python in her folder. `hpcai admin check` names each
    (and runs no Python it cannot trust); the same kit, root's alone, has no such problem."""
    import shutil
    import sys
    import tempfile

    from hpc_aidc.install.plan import SLURM_SCRIPTS

    top = Path(tempfile.mkdtemp(prefix="hpcai-chain-", dir="/tmp"))
    try:
        top.chmod(0o755)
        kit = top / "kit" / "slurm"
        for rel in SLURM_SCRIPTS:
            (kit / rel).parent.mkdir(parents=True, exist_ok=True)
            (kit / rel).parent.chmod(0o755)
            shutil.copyfile(REPO / "slurm" / rel, kit / rel)
            (kit / rel).chmod(0o755)
        (kit.parent).chmod(0o755)
        settings = top / "energy.env"
        common = kit / "energy" / "common.sh"
        common.write_text(common.read_text().replace("HPCAI_ENERGY_CONF=/etc/hpcai/energy.env",
                                                     f"HPCAI_ENERGY_CONF={settings}"))
        alice = top / "alice"
        alice.mkdir(mode=0o755)
        shutil.chown(alice, "alice")
        conf = top / "slurm.conf"
        conf.write_text(f"Prolog={kit}/prolog.d/*\nEpilog={kit}/energy/epilog.sh\n"
                        f"EpilogSlurmctld={kit}/epilog_slurmctld.sh\n")

        def chain_problems() -> list[str]:
            proc = hpcai("admin", "check", "--slurm-conf", str(conf), "--json")
            assert "Traceback" not in proc.stderr, proc.stderr
            return [p for p in json.loads(proc.stdout)["problems"] if "is on the way to" in p]

        settings.write_text(f"HPCAI_PYTHON={sys.executable}\n")
        settings.chmod(0o644)
        assert chain_problems() == []  # root's alone

        subprocess.run(["runuser", "-u", "alice", "--", "ln", "-s", sys.executable, str(alice / "python")], check=True)
        settings.write_text(f"HPCAI_PYTHON={alice}/python\n")
        shutil.chown(kit / "health", "alice")
        (kit / "energy" / "epilog.sh").chmod(0o757)
        problems = chain_problems()
        uid = str(pwd_uid("alice"))
        expected = {f"{kit}/health (owned by uid {uid})": "the admin kit's", f"{alice} (owned by uid {uid})": "Python",
                    f"{alice}/python (a link owned by uid {uid})": "Python",
                    f"{kit}/energy/epilog.sh (writable by everyone)": "Epilog"}
        for link, what in expected.items():
            assert [p for p in problems if p.startswith(link) and what in p], (link, problems)
        assert len(problems) == len(expected), problems
    finally:
        shutil.rmtree(top, ignore_errors=True)


def pwd_uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid
