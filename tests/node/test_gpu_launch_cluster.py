"""What a GPU cluster's first training run depends on, on the real dev cluster where it shows on CPU:
one crashed rank ends the whole step at once (--kill-on-bad-exit) instead of leaving the others waiting;
a GPU job asks Slurm for the planned host memory (--mem) and the site's CPUs per GPU, and trains with
Slurm's GPU environment set; a sampler the job starts itself lives through Slurm's warning signal (sent
to every step) and writes its end record at the job's real end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import HPCAI

from hpc_aidc.monitor.launch import batch_script_line
from hpc_aidc.site_profile import load_site

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.usefixtures("cluster")]

CONFIG = """
[model]
preset = "tiny"
n_layer = 2
[train]
max_steps = {steps}
micro_batch = 8
zero = 2
[checkpoint]
every = 100
"""
ENTRY = """
import os
import time

from hpc_aidc.node.model import GPT


def build(config):
    if os.environ["RANK"] == "1":
        os._exit(3)  # a rank that dies (a segfault, an OOM kill, a failed GPU)
    time.sleep(600)  # the others are busy (with NCCL: blocked in a collective until its timeout)
    return GPT(config.model)
"""
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


def _hpcai(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HPCAI, *args], capture_output=True, text=True, cwd="/tmp", check=False,
                          env={**os.environ, **(env or {})})


def _accounting(job_id: str, timeout: float) -> dict[str, str]:
    """The job's sacct line once it has ended: State, Elapsed (s), requested memory, ReqCPUS. The memory
    comes from ReqTRES, read until it is settled: right after a job ends slurmdbd 22.05 was seen to report
    ReqMem as 2^64 M (its NO_VAL) for a moment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "--noconvert", "-o",
                              "State,ElapsedRaw,ReqTRES,ReqCPUS"],
                             capture_output=True, text=True, check=False).stdout.strip()
        if out:
            state, elapsed, tres, cpus = out.splitlines()[0].split("|")
            mem = next((kv.split("=", 1)[1] for kv in tres.split(",") if kv.startswith("mem=")), "")
            settled = mem[:-1].isdigit() and int(mem[:-1]) < 1 << 40  # not (yet) slurmdbd's NO_VAL
            if state.split()[0] in ENDED and settled:
                return {"state": state.split()[0], "elapsed": elapsed, "mem": mem, "cpus": cpus}
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not end within {timeout} s")


def test_one_dead_rank_ends_the_job_at_once(tmp_path: Path) -> None:
    (tmp_path / "crashing_entry.py").write_text(ENTRY)
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.format(steps=5))
    proc = _hpcai("submit", "train", "-N", "2", "--ntasks-per-node", "1", "-A", "physics", "-J", "t-kill",
                  "--config", str(config), "--entry", "crashing_entry:build", "--json",
                  env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    job = json.loads(proc.stdout)
    assert "--kill-on-bad-exit=1" in Path(job["script"]).read_text()
    done = _accounting(job["job_id"], timeout=300)
    # Rank 0 would sleep 600 s; srun ends its task as soon as rank 1 exits non-zero.
    assert done["state"] == "FAILED", done
    assert int(done["elapsed"]) < 120, done


def test_gpu_job_asks_for_host_memory_and_cpus_per_gpu(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.format(steps=3))
    flags = ["-N", "1", "-G", "1", "-A", "physics", "-J", "t-gpu-shape", "--config", str(config)]
    dry = _hpcai("submit", "train", *flags, "--dry-run", "--no-test-only")
    assert dry.returncode == 0, dry.stderr
    mem = re.search(r"^#SBATCH --mem=(\d+)M$", dry.stdout, re.M)
    assert mem, dry.stdout
    site = load_site()
    gpu = site.partitions["gpu"]
    expected_cpus = gpu.cpus_per_gpu or gpu.cpus_per_node // gpu.gpus_per_node
    assert f"#SBATCH --cpus-per-task={expected_cpus}\n" in dry.stdout
    assert "bf16" in dry.stderr  # the dev cluster's h100 type lists bf16: the default precision
    proc = _hpcai("submit", "train", *flags, "--json")
    assert proc.returncode == 0, proc.stderr
    job = json.loads(proc.stdout)
    done = _accounting(job["job_id"], timeout=600)
    assert done["state"] == "COMPLETED", (done, (Path(job["folder"]) / f"{job['job_id']}_0_log.out").read_text())
    assert done["mem"] == f"{mem.group(1)}M" and int(done["cpus"]) == expected_cpus
    summary = json.loads((Path(job["folder"]) / "summary.json").read_text())
    # Slurm set CUDA_VISIBLE_DEVICES for the placeholder GPU; without CUDA the rank trains on CPU (gloo)
    assert summary["precision"] == "bf16" and summary["world_size"] == 1 and summary["mfu"] is None
    assert summary["host_max_rss_gib"] * 1024 < int(mem.group(1))  # the rank stayed within what was asked
    events = [json.loads(line) for line in (Path(job["folder"]) / "metrics.jsonl").read_text().splitlines()]
    checkpoint = next(e for e in events if e.get("event") == "checkpoint")
    assert checkpoint["seconds"] >= 0 and checkpoint["grace_needed_s"] > 0


def _private_site(tmp_path: Path) -> tuple[Path, Path]:
    """The dev cluster's profile, but with a private energy store and no prolog: the job samples itself."""
    store = tmp_path / "energy"
    store.mkdir()
    store.chmod(0o1733)
    text = Path(load_site().source).read_text()
    text = re.sub(r'(?m)^energy_store = .*$', f'energy_store = "{store}"', text)
    text = re.sub(r'(?m)^energy_prolog = .*$', "energy_prolog = false", text)
    site = tmp_path / "site.toml"
    site.write_text(text)
    tmp_path.chmod(0o755)
    return site, store


def test_the_job_sampler_outlives_the_warning_signal(tmp_path: Path) -> None:
    site, store = _private_site(tmp_path)
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\nset -euo pipefail\n" + batch_script_line(interval_s=0.2, python=sys.executable)
                      + "\nsleep 12\n")
    out = subprocess.run(["sbatch", "--parsable", "-N1", "--gres=gpu:h100:1", "-A", "physics", "-J", "t-usr2",
                          "-o", "/dev/null", str(script)], capture_output=True, text=True, check=True, cwd="/tmp",
                         env={**os.environ, "HPCAI_SITE": str(site)})
    job_id = out.stdout.strip().split(";")[0]
    run = store / job_id / "r0"
    deadline = time.monotonic() + 60
    series: list[Path] = []
    while not series:
        assert time.monotonic() < deadline, f"the job's sampler wrote no rows in {run}"
        series = [p for p in run.glob("*.series.bin") if p.stat().st_size > 0] if run.exists() else []
        time.sleep(0.2)
    # Slurm's warning, as --signal=USR2@<s> sends it: to every step of the job (not the batch shell)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    size = series[0].stat().st_size
    time.sleep(2)
    assert series[0].stat().st_size > size, "the sampler stopped at the warning signal"
    done = _accounting(job_id, timeout=120)
    assert done["state"] == "COMPLETED", done
    node = series[0].name.removesuffix(".series.bin")
    deadline = time.monotonic() + 30
    while not (run / f"{node}.end.json").exists():
        assert time.monotonic() < deadline, "no end record: the sampler did not see the job's end"
        time.sleep(0.2)
    end: dict[str, Any] = json.loads((run / f"{node}.end.json").read_text())
    assert end["source"] == "sampler"
