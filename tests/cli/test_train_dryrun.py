"""`hpcai submit train --dry-run` prints exactly the script in tests/golden/ (paths normalised)."""

import sys
from pathlib import Path

from conftest import REPO, RunHpcai

GOLDEN = REPO / "tests/golden/train_dryrun.sbatch"
SITE = """
[cluster]
job_root = "/shared/jobs"
energy_store = "/shared/energy"
scratch = "/local"
default_partition = "gpu"
setup = ["module load cuda/12.4"]
[partitions.gpu]
nodes = 16
gpus_per_node = 4
gpu_type = "h100"
cpus_per_node = 64
[gpu_types.h100]
precisions = ["fp32", "bf16"]
peak_bf16_tflops = 989.0
memory_gib = 80
[env]
NCCL_SOCKET_IFNAME = "ib0"
"""


def normalise(script: str) -> str:
    import getpass

    user_dir = f"/shared/jobs/{getpass.getuser()}/"
    return script.replace(sys.executable, "{PYTHON}").replace(user_dir, "/shared/jobs/{USER}/")


def test_train_dry_run_matches_golden(hpcai: RunHpcai, tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(SITE)
    proc = hpcai("--site", str(site), "submit", "train", "--dry-run", "--no-test-only", "--nodes", "8",
                 "--gpus-per-node", "4", "--gpu-type", "h100", "--account", "physics", "--time", "12:00:00",
                 "--config", str(REPO / "examples/tiny.toml"), "--precision", "bf16", "--zero", "3")
    assert proc.returncode == 0, proc.stderr
    assert normalise(proc.stdout) == GOLDEN.read_text()
