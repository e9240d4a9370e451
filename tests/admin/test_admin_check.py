"""`hpcai admin check`: slurm.conf (live or a file) against the site profile, one line per problem with its
fix; the prolog.d glob counts for `hpcai site check` too."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import RECORDED, REPO, RunHpcai, assert_clean_error
from site_fixture import site_doc

from hpc_aidc.scheduler.admin_check import AdminFacts, PathFacts, admin_problems, parse_show_config, parse_slurm_conf
from hpc_aidc.scheduler.site_check import ClusterFacts, runs_energy_prolog
from hpc_aidc.site import SiteProfile, parse_site

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


def test_parsers_on_recorded_and_written_config() -> None:
    shown = parse_show_config((RECORDED / "scontrol_config_admin.txt").read_text())
    assert shown["jobsubmitplugins"] == "lua" and shown["prolog"].endswith("prolog.d/*")
    assert "gres/gpu" in shown["accountingstoragetres"] and shown["prologslurmctld"] == ""
    written = parse_slurm_conf((REPO / "slurm/devcluster/slurm.conf.in").read_text())
    assert written["prolog"] == "@LIBEXEC@/../prolog.d/*" and written["schedulerparameters"] == "nohold_on_prolog_fail"
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
    site = hpcai("site", "check")
    assert site.returncode == 0, site.stdout
    broken = tmp_path / "slurm.conf"
    broken.write_text(Path("/etc/slurm/slurm.conf").read_text().replace("PrivateData=", "#PrivateData="))
    (tmp_path / "job_submit.lua").write_text(Path("/etc/slurm/job_submit.lua").read_text())
    proc = hpcai("admin", "check", "--slurm-conf", str(broken), "--json")
    assert proc.returncode == 1
    assert "PrivateData lacks accounts,jobs,usage,users" in proc.stdout
