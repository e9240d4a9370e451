"""The admin's sbatch templates: rendered from site profiles (StrictUndefined), each passes bash -n and
shellcheck; on the dev cluster each passes `sbatch --test-only` and really runs as a user with plain
sbatch, shows in sacct with its account, and gets its energy in AdminComment."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, RunHpcai, assert_clean_error, wait_until
from site_fixture import site_doc

from hpc_aidc.errors import ConfigError
from hpc_aidc.render.admin_templates import TemplateOptions, render_templates, template_context
from hpc_aidc.site_profile import load_site, parse_site
from hpc_aidc.spec.policy import PolicyRequest, first_broken_rule

TEMPLATES = REPO / "templates" / "sbatch"
NAMES = ["infer-array.sbatch", "interactive-gpu.sbatch", "multinode-pytorch.sbatch", "pack-array.sbatch",
         "preprocess-cpu.sbatch", "train.sbatch"]
# the root-owned venv running the tests: the users running the rendered scripts can reach it
PYTHON = sys.executable


def sources() -> dict[str, str]:
    return {p.name: p.read_text() for p in TEMPLATES.iterdir()}


def render(site_text: str | None = None, tmp: Path | None = None, account: str | None = None) -> dict[str, str]:
    if site_text is None:
        site = parse_site(site_doc(), source="test.toml")
    else:
        assert tmp is not None
        (tmp / "site.toml").write_text(site_text)
        site = load_site(tmp / "site.toml", environ={})
    opts = TemplateOptions(python=PYTHON, energy_line="srun --overlap true &", account=account)
    return render_templates(sources(), template_context(site, opts))


def dev_profile() -> str:
    text = (REPO / "slurm/devcluster/site.toml.in").read_text()
    return text.replace("@JOBS@", "/srv/hpcai/jobs").replace("@STATE@", "/var/lib/hpcai-devcluster") \
        .replace("@CLUSTER@", "devcluster")


@pytest.mark.parametrize("profile", ["unit", "dev", "example"])
def test_every_template_renders_and_passes_bash_and_shellcheck(profile: str, tmp_path: Path) -> None:
    if profile == "unit":
        rendered = render(account="physics")
    elif profile == "dev":
        rendered = render(dev_profile(), tmp_path, account="physics")
    else:
        rendered = render((REPO / "templates/site.example.toml").read_text(), tmp_path)
    assert sorted(rendered) == NAMES
    for name, text in rendered.items():
        path = tmp_path / name
        path.write_text(text)
        assert text.startswith("#!/bin/bash\n") and "set -euo pipefail" in text
        assert subprocess.run(["bash", "-n", str(path)], check=False).returncode == 0, name
        if shutil.which("shellcheck"):
            sc = subprocess.run(["shellcheck", "-S", "warning", str(path)], capture_output=True, text=True, check=False)
            assert sc.returncode == 0, (name, sc.stdout)
        # #SBATCH lines come before the first command, or sbatch ignores them
        lines = text.splitlines()
        first_command = next(i for i, x in enumerate(lines[1:], 1) if x and not x.startswith("#"))
        assert all(i < first_command for i, x in enumerate(lines) if x.startswith("#SBATCH"))


def test_profile_values_reach_the_scripts(tmp_path: Path) -> None:
    rendered = render((REPO / "templates/site.example.toml").read_text(), tmp_path)
    train = rendered["train.sbatch"]
    assert "#SBATCH --partition=gpu" in train and "#SBATCH --gres=gpu:h100:8" in train
    assert "#SBATCH --qos=normal" in train and "#SBATCH --time=04:00:00" in train
    assert "module load cuda/12.4" in train and "export NCCL_IB_HCA=mlx5" in train
    assert "#SBATCH --signal=B:USR2@120" in train and 'scontrol requeue "$REQUEUE_TARGET"' in train
    # no account in the example profile and none given: the script says how to add one
    assert "--account" not in "\n".join(x for x in train.splitlines() if x.startswith("#SBATCH"))
    # the example site's prolog does not sample energy: the job starts its own sampler
    assert "srun --overlap true &" in train
    dev = render(dev_profile(), tmp_path, account="physics")
    assert "#SBATCH --account=physics" in dev["train.sbatch"] and "srun --overlap true &" not in dev["train.sbatch"]
    assert "#SBATCH --partition=cpu" in dev["preprocess-cpu.sbatch"]
    assert "#SBATCH --partition=debug" in dev["interactive-gpu.sbatch"]
    assert "#SBATCH --array=0-2" in dev["infer-array.sbatch"]


def _request(text: str) -> PolicyRequest:
    """The request a rendered script makes, from its #SBATCH lines."""
    opts = dict(line[len("#SBATCH --"):].split("=", 1) for line in text.splitlines() if line.startswith("#SBATCH --")
                and "=" in line)
    nodes, tasks, cpus = int(opts["nodes"]), int(opts["ntasks-per-node"]), int(opts["cpus-per-task"])
    gpus = int(opts["gres"].rsplit(":", 1)[1]) if "gres" in opts else 0
    gpu_type = opts["gres"].split(":")[1] if "gres" in opts and opts["gres"].count(":") == 2 else None
    return PolicyRequest(user="alice", account=opts.get("account"), partition=opts["partition"], qos=opts.get("qos"),
                      time_given="time" in opts, nodes=nodes, gpus=gpus * nodes, gpus_per_node=gpus,
                      gpu_type=gpu_type, cpus=tasks * cpus * nodes, cpus_per_node=tasks * cpus)


@pytest.mark.parametrize("profile", ["dev", "example"])
def test_rendered_scripts_keep_the_sites_own_policy(profile: str, tmp_path: Path) -> None:
    text = dev_profile() if profile == "dev" else (REPO / "templates/site.example.toml").read_text()
    rendered = render(text, tmp_path, account="physics")
    site = load_site(tmp_path / "site.toml", environ={})
    assert site.policy.enabled
    for name, script in rendered.items():
        assert first_broken_rule(site, _request(script)) is None, name


def test_strict_undefined_and_unsafe_values() -> None:
    with pytest.raises(ConfigError, match="'nonsense' is undefined"):
        render_templates({"x.sbatch.j2": "#!/bin/bash\n{{ nonsense }}\n"}, {})
    doc = site_doc()
    doc["cluster"]["default_qos"] = "normal\n#SBATCH --uid=0"
    site = parse_site(doc, source="t.toml")
    with pytest.raises(ConfigError, match="without spaces or control characters"):
        render_templates(sources(), template_context(site, TemplateOptions(python=PYTHON)))


def test_cli_errors_are_one_line(hpcai: RunHpcai, tmp_path: Path) -> None:
    assert_clean_error(hpcai("admin", "templates", "--out", str(tmp_path / "o"), "--templates", str(tmp_path / "no")),
                       "Expected a template directory")
    assert_clean_error(hpcai("admin", "templates", "--out", str(tmp_path / "o"), "-G", "9"), "--gpus-per-node")


# -- on the dev cluster ------------------------------------------------------------------------------------

@pytest.fixture()
def workdir() -> Iterator[Path]:
    """A submit directory of alice's (pytest's tmp_path is root's)."""
    path = Path(tempfile.mkdtemp(prefix="hpcai-templates-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _as_alice(workdir: Path, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    extra = [f"{k}={v}" for k, v in (env or {}).items()]
    return subprocess.run(["runuser", "-u", "alice", "--", "env", *extra, *argv], capture_output=True, text=True,
                          cwd=workdir, check=False, timeout=120)


def _sacct(job: str) -> list[list[str]]:
    out = subprocess.run(["sacct", "-j", job, "-X", "-n", "-P", "-o", "JobID,State,Account,AdminComment"],
                         capture_output=True, text=True, check=True).stdout
    return [line.split("|", 3) for line in out.splitlines() if line.strip()]


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.usefixtures("cluster")
def test_every_template_runs_on_the_dev_cluster(hpcai: RunHpcai, workdir: Path) -> None:
    proc = hpcai("admin", "templates", "--out", str(workdir), "-A", "physics", "-G", "1", "--python", PYTHON)
    assert proc.returncode == 0, proc.stderr
    (workdir / "corpus").mkdir()
    for i in range(3):
        lines = "".join(f'{{"text": "doc {i} line {j}"}}\n' for j in range(4))
        (workdir / "corpus" / f"part{i}.jsonl").write_text(lines)
    (workdir / "prompts.jsonl").write_text('{"prompt": "a b c"}\n{"prompt": "d e"}\nnot json\n{"prompt": "f"}\n')
    subprocess.run(["chown", "-R", "alice:", str(workdir)], check=True)
    for name in NAMES:
        test = _as_alice(workdir, "sbatch", "--test-only", name)
        assert test.returncode == 0 and "to start at" in test.stderr, (name, test.stderr)
    jobs = {}
    for name in NAMES:
        sub = _as_alice(workdir, "sbatch", "--parsable", name, env={"SEQ_LEN": "8"})
        assert sub.returncode == 0, (name, sub.stderr)
        jobs[name] = sub.stdout.strip().split(";")[0]
    session = jobs["interactive-gpu.sbatch"]
    deadline = time.monotonic() + 240
    attached = False
    while time.monotonic() < deadline:
        if not attached and subprocess.run(["squeue", "-h", "-j", session, "-t", "R"], capture_output=True,
                                           text=True, check=False).stdout.strip():
            # a user works in the session from the login node, then ends it
            attach = _as_alice(workdir, "srun", f"--jobid={session}", "--overlap", "hostname")
            assert attach.returncode == 0, attach.stderr
            _as_alice(workdir, "touch", str(workdir / f".session-{session}.end"))
            attached = True
        pending = subprocess.run(["squeue", "-h", "-j", ",".join(jobs.values())], capture_output=True, text=True,
                                 check=False).stdout.strip()
        if attached and not pending:
            break
        time.sleep(1)
    assert attached, "the session never started"
    # AdminComment is written by EpilogSlurmctld just after each job ends
    deadline = time.monotonic() + 30
    while True:
        rows = {name: _sacct(job) for name, job in jobs.items()}
        done = all(r and all("hpcai-energy-v1" in x[3] for x in r) for r in rows.values())
        if done or time.monotonic() > deadline:
            break
        time.sleep(1)
    for name, job_rows in rows.items():
        assert job_rows, name
        for _, state, account, comment in job_rows:
            assert (state, account) == ("COMPLETED", "physics"), (name, job_rows, _log(workdir, jobs[name]))
            assert "hpcai-energy-v1" in comment, (name, comment)
    assert len(rows["infer-array.sbatch"]) == 3 and len(rows["pack-array.sbatch"]) == 2
    assert "saved checkpoint at step 40" in _log(workdir, jobs["train.sbatch"])
    assert "all_reduce 3 (expected 3)" in _log(workdir, jobs["multinode-pytorch.sbatch"])
    assert sorted(p.name for p in (workdir / "packed").iterdir()) == ["part-000.zarr", "part-001.zarr"]
    assert len(list((workdir / "infer-out").glob("*.done"))) == 3


def _log(workdir: Path, job: str) -> str:
    return "\n".join(p.read_text(errors="replace") for p in workdir.glob(f"*-{job}*.out"))


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.usefixtures("cluster")
def test_training_template_saves_requeues_and_resumes_on_the_warning_signal(hpcai: RunHpcai, workdir: Path) -> None:
    proc = hpcai("admin", "templates", "--out", str(workdir), "-A", "physics", "-G", "1", "-N", "1", "--python", PYTHON)
    assert proc.returncode == 0, proc.stderr
    subprocess.run(["chown", "-R", "alice:", str(workdir)], check=True)
    job = _as_alice(workdir, "sbatch", "--parsable", "train.sbatch", env={"STEPS": "1000000"}).stdout.strip()
    try:
        _wait_log(workdir, job, "step 10/")
        # what Slurm sends --signal=B:USR2@120 before the time limit, sent now
        assert _as_alice(workdir, "scancel", "--batch", "--signal=USR2", job).returncode == 0
        _wait_log(workdir, job, "saved checkpoint at step")
        shown: list[str] = []

        def requeued_and_held() -> bool:
            shown.append(subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True,
                                        check=False).stdout)
            # held two minutes (Reason=BeginTime); on a loaded machine that may already have passed
            return "Restarts=1" in shown[-1] and ("JobState=PENDING" in shown[-1] or "JobState=RUNNING" in shown[-1])

        wait_until(f"job {job} requeued and held", requeued_and_held, 30, detail=lambda: shown[-1])
        # Slurm holds a requeued job two minutes (BeginTime); an admin's StartTime=now skips the wait
        subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], check=True)
        saved = _log(workdir, job).split("saved checkpoint at step ")[1].split()[0]
        _wait_log(workdir, job, f"resumed from step {saved}")
        assert "time limit near: saving state and requeueing" in _log(workdir, job)  # the log survived (append)
    finally:
        subprocess.run(["scancel", job], check=False)


def _wait_log(workdir: Path, job: str, needle: str, timeout: float = 120) -> None:
    wait_until(f"{needle!r} in the log of job {job}", lambda: needle in _log(workdir, job), timeout,
               detail=lambda: _log(workdir, job)[-2000:])
