"""`hpcai admin install | uninstall` and the packaged files: the plan (pure), the trust check, a real install
into a temporary prefix and its rollback, attempts by alice, and the wheel and sdist installed far from the
checkout rendering templates, the policy and the report site and installing the Slurm side from there."""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import stat
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest
from conftest import RECORDED, REPO, RunHpcai, assert_clean_error

from hpc_aidc.assets import asset_path
from hpc_aidc.install.plan import (
    DEFAULT_ENERGY_ENV,
    ENERGY_ENV_LINE,
    MONITORING_FILES,
    SLURM_SCRIPTS,
    InstallSpec,
    install_plan,
    slurm_conf_lines,
    slurm_conf_mismatches,
)
from hpc_aidc.install.trust import untrusted_links

SITE = "/etc/hpcai/site.toml"
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="installs as root")


def spec(tmp: PurePosixPath, etc: str = "etc") -> InstallSpec:
    return InstallSpec(prefix=tmp / "opt", etc=tmp / etc, python="/opt/py 3/bin/python", site_profile=tmp / "site.toml",
                       energy_store=tmp / "store", energy_prolog=True, energy_log=tmp / "log" / "energy.log",
                       energy_interval=1.0, audit_log=tmp / "audit" / "submissions.jsonl", slurm_uid=64030,
                       slurm_gid=64030)


def packaged() -> tuple[dict[str, bytes], dict[str, bytes]]:
    return ({rel: asset_path("slurm", rel).read_bytes() for rel in SLURM_SCRIPTS},
            {rel: asset_path("monitoring", rel).read_bytes() for rel in MONITORING_FILES})


# -- the plan ---------------------------------------------------------------------------------------------

def test_every_packaged_script_is_planned_executable_and_root_owned() -> None:
    scripts, monitoring = packaged()
    plan = install_plan(spec(PurePosixPath("/t")), scripts, monitoring)
    by_path = {str(e.path): e for e in plan}
    for rel in SLURM_SCRIPTS:
        entry = by_path[f"/t/opt/slurm/{rel}"]
        assert (entry.uid, entry.gid, entry.mode) == (0, 0, 0o755)
    assert by_path["/t/store"].mode == 0o711 and by_path["/t/store/accounting"].mode == 0o2770
    assert by_path["/t/log/energy.log"].mode == 0o640 and by_path["/t/log"].uid == 0
    # parents come before children, each once
    paths = [e.path for e in plan]
    assert len(paths) == len(set(paths))
    for i, path in enumerate(paths):
        assert all(p not in paths[i:] for p in path.parents)


def test_energy_env_is_quoted_and_the_settings_path_follows_etc() -> None:
    scripts, monitoring = packaged()
    assert ENERGY_ENV_LINE.encode() in scripts["energy/common.sh"]
    plan = {str(e.path): e for e in install_plan(spec(PurePosixPath("/t"), etc="my etc"), scripts, monitoring)}
    env = plan["/t/my etc/energy.env"].content
    assert env is not None and b"HPCAI_PYTHON='/opt/py 3/bin/python'\n" in env
    common = plan["/t/opt/slurm/energy/common.sh"].content
    assert common is not None and b"HPCAI_ENERGY_CONF='/t/my etc/energy.env'" in common
    at_etc = dataclasses.replace(spec(PurePosixPath("/t")), etc=PurePosixPath("/etc/hpcai"))
    default = {str(e.path): e for e in install_plan(at_etc, scripts, monitoring)}
    assert default["/t/opt/slurm/energy/common.sh"].content == scripts["energy/common.sh"]
    assert DEFAULT_ENERGY_ENV == "/etc/hpcai/energy.env"


def test_slurm_conf_lines_and_mismatches() -> None:
    lines = slurm_conf_lines(PurePosixPath("/opt/hpcai"))
    conf = {k.lower(): v for k, v in lines.items()}
    assert slurm_conf_mismatches(conf, PurePosixPath("/opt/hpcai")) == []
    conf["epilogslurmctld"] = "/home/admin/hpc-aidc/slurm/epilog_slurmctld.sh"
    conf["accountingstoreflags"] = "job_comment"
    problems = slurm_conf_mismatches(conf, PurePosixPath("/opt/hpcai"))
    assert len(problems) == 2 and "expected /opt/hpcai/slurm/epilog_slurmctld.sh" in problems[0]


# -- trust ------------------------------------------------------------------------------------------------

@as_root
def test_untrusted_links_name_each_weak_link(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.mkdir(mode=0o755)
    assert untrusted_links(good / "not" / "yet") == []
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    assert [u.why for u in untrusted_links(open_dir / "x")] == ["writable by everyone"]
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    assert untrusted_links(sticky / "x") == []  # like /tmp: nobody else can rename root's entries
    assert untrusted_links(sticky) != []        # but not as the prefix itself
    alice = tmp_path / "alice"
    alice.mkdir()
    os.chown(alice, pwd.getpwnam("alice").pw_uid, -1)
    assert "owned by uid" in untrusted_links(alice / "opt")[0].why
    link = good / "link"
    link.symlink_to(alice)
    assert [u.path for u in untrusted_links(link / "opt")] == [str(alice)]


# -- a real install, as root and as alice ---------------------------------------------------------------------

def install_args(tmp: Path) -> list[str]:
    return ["--site", SITE, "admin", "install", "--prefix", str(tmp / "opt"), "--etc", str(tmp / "etc"),
            "--energy-log", str(tmp / "log" / "energy.log")]


@as_root
@pytest.mark.cluster
def test_install_is_idempotent_and_uninstall_rolls_back(hpcai: RunHpcai, tmp_path: Path, cluster: None) -> None:
    tmp_path.chmod(0o755)
    (tmp_path / "opt" / "slurm").mkdir(parents=True)
    (tmp_path / "opt" / "slurm" / "epilog_slurmctld.sh").write_text("#!/bin/sh\n# the admin's own\n")
    dry = hpcai(*install_args(tmp_path), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert {c["action"] for c in report["changes"]} >= {"create", "update"}
    assert not (tmp_path / "etc").exists()  # a dry run changes nothing
    first = hpcai(*install_args(tmp_path), "--json")
    assert first.returncode == 0, first.stderr
    script = tmp_path / "opt" / "slurm" / "prolog.d" / "10-energy.sh"
    st = script.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755)
    env = (tmp_path / "etc" / "energy.env").read_text()
    assert f"HPCAI_PYTHON={sys.executable}" in env and f"HPCAI_ENERGY_LOG={tmp_path}/log/energy.log" in env
    second = hpcai(*install_args(tmp_path), "--json")
    assert {c["action"] for c in json.loads(second.stdout)["changes"]} == {"unchanged"}
    # the Slurm side really runs from there: the installed prolog.d script finds its siblings
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    undo = hpcai("admin", "uninstall", "--prefix", str(tmp_path / "opt"), "--json")
    assert undo.returncode == 0, undo.stderr
    assert (tmp_path / "opt" / "slurm" / "epilog_slurmctld.sh").read_text() == "#!/bin/sh\n# the admin's own\n"
    assert not (tmp_path / "etc").exists() and not script.exists()
    assert sorted(p.name for p in (tmp_path / "opt").iterdir()) == ["slurm"]


@as_root
@pytest.mark.cluster
def test_install_refuses_what_others_could_change(hpcai: RunHpcai, tmp_path: Path, cluster: None) -> None:
    tmp_path.chmod(0o755)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    proc = hpcai("--site", SITE, "admin", "install", "--prefix", str(shared / "opt"), "--etc", str(tmp_path / "etc"),
                 "--energy-log", str(tmp_path / "log" / "e.log"))
    assert_clean_error(proc, f"{shared} (writable by everyone)")
    assert not (shared / "opt").exists()
    # a link planted where a file goes is refused, never followed
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "energy.env").symlink_to("/etc/shadow")
    proc = hpcai(*install_args(tmp_path))
    assert_clean_error(proc, "symbolic link")
    assert (tmp_path / "etc" / "energy.env").is_symlink()
    # alice may look, not install
    proc = hpcai(*install_args(Path("/tmp/hpcai-alice-try")), user="alice")
    assert_clean_error(proc, "Expected to run as root")
    proc = hpcai("admin", "uninstall", "--prefix", str(tmp_path / "opt"), user="alice")
    assert_clean_error(proc, "Expected to run as root")


def tmp_site(tmp: Path, **changes: str) -> Path:
    """The dev cluster's profile with admin keys changed (TOML values as written)."""
    import re

    text = Path(SITE).read_text()
    for key, value in changes.items():
        text, count = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        assert count == 1, key
    path = tmp / "site.toml"
    path.write_text(text)
    return path


@as_root
@pytest.mark.cluster
def test_a_self_sampling_store_installs_twice_and_uninstall_keeps_what_was_there(
        hpcai: RunHpcai, tmp_path: Path, cluster: None) -> None:
    tmp_path.chmod(0o755)
    site = tmp_site(tmp_path, energy_prolog="false", energy_store=f'"{tmp_path}/store"',
                    audit_log=f'"{tmp_path}/audit/submissions.jsonl"')
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "energy.env").write_text("placeholder\n")
    args = ["--site", str(site), *install_args(tmp_path)[2:]]
    assert hpcai(*args).returncode == 0
    env_text = (tmp_path / "etc" / "energy.env").read_text()
    assert stat.S_IMODE((tmp_path / "store").stat().st_mode) == 0o1733
    again = hpcai(*args, "--json")  # the world-writable (sticky) store is no reason to refuse the second run
    assert again.returncode == 0, again.stderr
    assert {c["action"] for c in json.loads(again.stdout)["changes"]} == {"unchanged"}
    # a second prefix sharing /etc finds energy.env as it would write it: uninstalling it must not delete it
    other = ["--site", str(site), "admin", "install", "--prefix", str(tmp_path / "opt2"), "--etc",
             str(tmp_path / "etc"), "--energy-log", str(tmp_path / "log" / "energy.log")]
    assert hpcai(*other).returncode == 0
    assert (tmp_path / "etc" / "energy.env").read_text() == env_text  # the same settings: found as is
    assert hpcai("admin", "uninstall", "--prefix", str(tmp_path / "opt2")).returncode == 0
    assert (tmp_path / "etc" / "energy.env").exists()
    assert hpcai("admin", "uninstall", "--prefix", str(tmp_path / "opt")).returncode == 0
    assert (tmp_path / "etc" / "energy.env").read_text() == "placeholder\n"


@as_root
@pytest.mark.cluster
def test_a_run_stopped_half_way_is_still_rolled_back(hpcai: RunHpcai, tmp_path: Path, cluster: None) -> None:
    tmp_path.chmod(0o755)
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "energy.log").symlink_to("/etc/passwd")
    failed = hpcai(*install_args(tmp_path))
    assert_clean_error(failed, "symbolic link")
    assert (tmp_path / "opt" / "slurm" / "prolog.d" / "10-energy.sh").exists()  # made before the link was met
    undo = hpcai("admin", "uninstall", "--prefix", str(tmp_path / "opt"))
    assert undo.returncode == 0, undo.stderr
    assert not (tmp_path / "opt").exists() and not (tmp_path / "etc").exists()
    assert (tmp_path / "log" / "energy.log").is_symlink()


@as_root
@pytest.mark.cluster
def test_no_existing_folder_changes_hands(hpcai: RunHpcai, tmp_path: Path, cluster: None) -> None:
    tmp_path.chmod(0o755)
    (tmp_path / "var-log").mkdir()  # root's, like /var/log: must not become SlurmUser's audit folder
    site = tmp_site(tmp_path, audit_log=f'"{tmp_path}/var-log/submissions.jsonl"')
    proc = hpcai("--site", str(site), *install_args(tmp_path)[2:])
    assert_clean_error(proc, f"{tmp_path}/var-log", "Move it away")
    assert (tmp_path / "var-log").stat().st_uid == 0


@as_root
@pytest.mark.cluster
def test_alice_cannot_dry_run_into_roots_install(hpcai: RunHpcai, tmp_path: Path, cluster: None) -> None:
    tmp_path.chmod(0o755)
    assert hpcai(*install_args(tmp_path)).returncode == 0
    (tmp_path / "opt").chmod(0o700)
    proc = hpcai(*install_args(tmp_path), "--dry-run", user="alice")
    assert_clean_error(proc, "ermission denied")  # the trust check or the manifest, whichever alice meets first
    (tmp_path / "opt").chmod(0o755)
    assert hpcai("admin", "uninstall", "--prefix", str(tmp_path / "opt")).returncode == 0


# -- the wheel and the sdist, far from the checkout ------------------------------------------------------------

WANTED = ("hpc_aidc/share/templates/sbatch/train.sbatch.j2", "hpc_aidc/share/report_site/templates/index.html.j2",
          "hpc_aidc/share/report_site/assets/style.css", "hpc_aidc/share/slurm/energy/prolog.sh",
          "hpc_aidc/share/slurm/prolog.d/10-energy.sh", "hpc_aidc/share/monitoring/systemd/hpcai-metrics.service",
          "hpc_aidc/render/job_submit.lua")


@as_root
@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.host_only  # installs the wheel's dependencies from PyPI
def test_the_wheel_works_far_from_the_checkout(tmp_path: Path, cluster: None) -> None:
    tmp_path.chmod(0o755)
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir",
                            str(dist), str(REPO)], capture_output=True, text=True, check=False, timeout=600)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    assert "deprecated" not in build.stderr.lower() and "license" not in build.stderr.lower(), build.stderr
    wheel = next(dist.glob("*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(WANTED) <= names, set(WANTED) - names
    sdist = next(dist.glob("*.tar.gz"))
    listing = subprocess.run(["tar", "tzf", str(sdist)], capture_output=True, text=True, check=True).stdout
    assert all(f"/{name}" in listing for name in WANTED)
    meta = zipfile.ZipFile(wheel).read(f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info/METADATA")
    assert b"License-Expression: Apache-2.0" in meta and b"Requires-Python: >=3.11" in meta

    elsewhere = tmp_path / "elsewhere"
    subprocess.run(["/usr/bin/python3.11", "-m", "venv", str(elsewhere)], check=True)
    pip = subprocess.run([str(elsewhere / "bin/pip"), "install", "-q", str(wheel)], capture_output=True, text=True,
                         check=False, timeout=600)
    assert pip.returncode == 0, pip.stderr[-2000:]
    hpcai = [str(elsewhere / "bin" / "hpcai"), "--site", SITE]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        # from /, isolated from this checkout: nothing here is on its path
        env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8"}
        return subprocess.run([*hpcai, *args], capture_output=True, text=True, cwd="/", env=env, check=False,
                              timeout=300)

    templates = run("admin", "templates", "--out", str(tmp_path / "sbatch"))
    assert templates.returncode == 0, templates.stderr
    assert (tmp_path / "sbatch" / "train.sbatch").read_text().startswith("#!/")
    policy = run("admin", "policy")
    assert policy.returncode == 0 and "function slurm_job_submit" in policy.stdout, policy.stderr
    site = run("report", "site", "--out", str(tmp_path / "web"), "--from-file", str(RECORDED / "sacct_report.txt"),
               "--since", "2026-11-01", "--until", "2026-12-01")
    assert site.returncode == 0, site.stderr
    assert (tmp_path / "web" / "index.html").exists() and (tmp_path / "web" / "assets" / "style.css").exists()
    install = run("admin", "install", "--prefix", str(tmp_path / "opt"), "--etc", str(tmp_path / "etc"),
                  "--energy-log", str(tmp_path / "log" / "energy.log"), "--slurm-conf", "/etc/slurm/slurm.conf")
    # the dev cluster runs /opt/hpcai's scripts, not these: the check names the three that differ
    assert install.returncode == 1, install.stderr
    assert f"HPCAI_PYTHON={elsewhere}/bin/python" in (tmp_path / "etc" / "energy.env").read_text()
    assert "3 problem(s)" in install.stdout and f"expected {tmp_path}/opt/slurm/prolog.d/*" in install.stdout
    assert (tmp_path / "opt" / "slurm" / "health" / "gpu_prolog.sh").stat().st_mode & 0o111
    undo = run("admin", "uninstall", "--prefix", str(tmp_path / "opt"))
    assert undo.returncode == 0, undo.stderr
    assert not (tmp_path / "opt").exists()
    # --venv: the kit's own venv, from a wheel named relative to where the admin stands
    venv = subprocess.run([*hpcai, "admin", "install", "--prefix", str(tmp_path / "kit"), "--etc",
                           str(tmp_path / "etc"), "--energy-log", str(tmp_path / "log" / "energy.log"),
                           "--venv", f"{wheel.name}[energy]"],
                          capture_output=True, text=True, cwd=dist, env={"PATH": os.environ["PATH"]}, check=False,
                          timeout=600)
    assert venv.returncode == 0, venv.stderr[-2000:]
    kit_python = tmp_path / "kit" / "venv" / "bin" / "python"
    assert f"HPCAI_PYTHON={kit_python}" in (tmp_path / "etc" / "energy.env").read_text()
    assert subprocess.run([str(kit_python), "-I", "-c", "import hpc_aidc, pynvml"], check=False).returncode == 0
    assert run("admin", "uninstall", "--prefix", str(tmp_path / "kit")).returncode == 0
    assert not (tmp_path / "kit").exists()


def test_the_checkout_links_its_top_level_folders_into_the_package() -> None:
    for name, target in (("templates", "templates"), ("report_site", "site"), ("slurm", "slurm"),
                         ("monitoring", "monitoring")):
        link = REPO / "hpc_aidc" / "share" / name
        assert link.is_symlink() and link.resolve() == (REPO / target).resolve()


@pytest.mark.cluster
def test_the_dev_cluster_runs_only_root_owned_scripts(cluster: None) -> None:
    """slurm.conf names the installed kit, never this checkout, and root may trust every link of its chain."""
    from hpc_aidc.scheduler.admin_check import parse_slurm_conf

    conf = parse_slurm_conf(Path("/etc/slurm/slurm.conf").read_text())
    scripts = [*Path(conf["prolog"].removesuffix("/*")).iterdir(), Path(conf["epilog"]), Path(conf["epilogslurmctld"])]
    env = {k: v for k, v in (line.split("=", 1) for line in Path("/etc/hpcai/energy.env").read_text().splitlines()
                             if "=" in line and not line.startswith("#"))}
    for path in [*scripts, Path(env["HPCAI_PYTHON"])]:
        assert not path.resolve().is_relative_to(REPO.resolve()), path
        assert untrusted_links(path) == [], path
