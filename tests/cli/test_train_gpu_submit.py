"""`hpcai submit train` for GPU partitions, through the real CLI (dry-run, nothing submitted): bf16 by
default where the GPUs do it, one rank per GPU, host memory planned and asked for (or refused), CPUs
per task and srun binding from the site profile, the rendezvous port range, the warning grace derived
from the last run of the same shape (and a warning when a fixed grace is shorter)."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

from conftest import REPO, RunHpcai, assert_clean_error

from hpc_aidc.spec.grace import shape_key
from hpc_aidc.spec.train import load_train_config, resolve_precision

EXAMPLE = REPO / "examples/tiny.toml"
SITE = """
[cluster]
job_root = "{root}/jobs"
energy_store = "{root}/energy"
scratch = "/tmp"
default_partition = "gpu"
rendezvous_ports = "24000-24999"
[partitions.gpu]
nodes = 4
gpus_per_node = 4
gpu_type = "h100"
cpus_per_node = 32
mem_per_node_mb = {mem}
cpus_per_gpu = 6
cpu_bind = "cores"
gpu_bind = "closest"
[gpu_types.h100]
precisions = ["fp32", "bf16"]
peak_bf16_tflops = 989.0
memory_gib = 80
"""


def _site(tmp_path: Path, mem: int = 512_000) -> Path:
    site = tmp_path / "site.toml"
    site.write_text(SITE.format(root=tmp_path, mem=mem))
    return site


def _config(tmp_path: Path, extra: str = "") -> Path:
    # the tiny example without its explicit fp32: the precision is left to the partition
    text = EXAMPLE.read_text().replace('precision = "fp32"\n', "") + extra
    path = tmp_path / "gpt.toml"
    path.write_text(text)
    return path


def _dry_run(hpcai: RunHpcai, site: Path, config: Path, *flags: str) -> tuple[str, str]:
    proc = hpcai("--site", str(site), "submit", "train", "--dry-run", "--no-test-only", "-A", "physics",
                 "--config", str(config), *flags)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, proc.stderr


def test_gpu_job_defaults(hpcai: RunHpcai, tmp_path: Path) -> None:
    script, notes = _dry_run(hpcai, _site(tmp_path), _config(tmp_path), "-N", "2", "-G", "4")
    assert "bf16, ZeRO-2" in notes  # bf16: the partition's GPUs do it
    assert "#SBATCH --cpus-per-task=6\n" in script  # the site's CPUs per GPU
    assert "#SBATCH --mem=0\n" in script  # all 4 GPUs of the node: all of its memory
    assert "export HPCAI_RENDEZVOUS_PORTS=24000-24999\n" in script
    assert "export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True\n" in script
    srun = next(line for line in script.splitlines() if "submitit.core._submit" in line)
    assert "--kill-on-bad-exit=1" in srun and "--cpu-bind=cores" in srun and "--gpu-bind=closest" in srun
    # two of four GPUs: at least their share of the node's memory
    script, _ = _dry_run(hpcai, _site(tmp_path), _config(tmp_path), "-G", "2")
    assert "#SBATCH --mem=256000M\n" in script
    # no GPUs: fp32, one CPU per task, no GPU binding
    script, notes = _dry_run(hpcai, _site(tmp_path), _config(tmp_path), "--ntasks-per-node", "2")
    assert "fp32, ZeRO-2" in notes and "#SBATCH --cpus-per-task=1\n" in script and "--gpu-bind" not in script
    assert "PYTORCH_CUDA_ALLOC_CONF" not in script


def test_more_ranks_than_gpus_is_refused(hpcai: RunHpcai, tmp_path: Path) -> None:
    proc = hpcai("--site", str(_site(tmp_path)), "submit", "train", "--dry-run", "--no-test-only", "--config",
                 str(_config(tmp_path)), "-G", "2", "--ntasks-per-node", "4", "--cpus-per-task", "1")
    assert_clean_error(proc, "Expected at most one training rank per GPU (2 per node). Got --ntasks-per-node 4")


def test_host_memory_that_does_not_fit_a_node_is_refused(hpcai: RunHpcai, tmp_path: Path) -> None:
    # 4 ranks of ~2 GiB each on a 4 GB node
    proc = hpcai("--site", str(_site(tmp_path, mem=4000)), "submit", "train", "--dry-run", "--no-test-only",
                 "--config", str(_config(tmp_path)), "-G", "4")
    assert_clean_error(proc, "Expected the job's host memory to fit a node of partition 'gpu' (4000 MiB)",
                       "Use fewer ranks per node")


def _plant_record(tmp_path: Path, config: Path, step_s: float, checkpoint_s: float, world: int) -> None:
    c = resolve_precision(load_train_config(config), ("fp32", "bf16"))
    user_dir = tmp_path / "jobs" / getpass.getuser()
    (user_dir / ".cache" / "grace").mkdir(parents=True)
    record = {"step_s": step_s, "checkpoint_s": checkpoint_s, "needed_s": 0, "job_id": "4242", "time": 0}
    (user_dir / ".cache" / "grace" / f"{shape_key(c, world, 'h100')}.json").write_text(json.dumps(record))


def test_the_grace_covers_what_the_last_run_of_the_shape_needed(hpcai: RunHpcai, tmp_path: Path) -> None:
    site, config = _site(tmp_path), _config(tmp_path)
    script, notes = _dry_run(hpcai, site, config, "-G", "4")
    assert "#SBATCH --signal=USR2@120\n" in script  # nothing measured yet, a small model: the default
    _plant_record(tmp_path, config, step_s=100.0, checkpoint_s=60.0, world=4)
    script, notes = _dry_run(hpcai, site, config, "-G", "4")
    assert "#SBATCH --signal=USR2@355\n" in script and "warning grace 355 s" in notes  # 1.25 x (200 + 60) + 30
    assert "export HPCAI_SIGNAL_GRACE_S=355\n" in script
    # a short job: at most half its time limit, and said
    script, notes = _dry_run(hpcai, site, config, "-G", "4", "--time", "10")
    assert "#SBATCH --signal=USR2@300\n" in script and "capped at half the time limit" in notes


def test_a_fixed_grace_shorter_than_the_last_run_needed_is_warned(hpcai: RunHpcai, tmp_path: Path) -> None:
    site = _site(tmp_path)
    config = _config(tmp_path)
    config.write_text(config.read_text().replace("max_restarts = 3\n", "max_restarts = 3\ngrace_s = 60\n"))
    _plant_record(tmp_path, config, step_s=100.0, checkpoint_s=60.0, world=4)
    script, notes = _dry_run(hpcai, site, config, "-G", "4")
    assert "#SBATCH --signal=USR2@60\n" in script
    assert "hpcai: warning: [checkpoint] grace_s = 60 is shorter than the 355 s the last run of this shape " \
           "needed (job 4242" in notes


def test_plan_shows_every_term_and_host_memory(hpcai: RunHpcai, tmp_path: Path) -> None:
    config = tmp_path / "7b.toml"
    config.write_text('[model]\npreset = "7b"\n[train]\nmicro_batch = 1\n')
    proc = hpcai("--site", str(_site(tmp_path, mem=100_000)), "plan", "--config", str(config), "-N", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["precision"] == "bf16" and plan["host_memory_gib_per_node"] == 100_000 / 1024
    rows = {(r["zero"], r["offload"]): r for r in plan["rows"]}
    z2, z3 = rows[(2, "none")], rows[(3, "none")]
    for row in (z2, z3):
        assert row["buffers_gib"] > 0 and row["runtime_gib"] > 0 and row["total_gib"] > row["allocated_gib"]
    # 4 ranks each reading the whole 7b module in bf16 on resume: more than a 100 GB node below ZeRO-3
    assert z2["host_gib_per_node"] > 100_000 / 1024 and not z2["fits"]
    assert z3["fits"] and plan["suggestion"]["zero"] == 3
