"""`--dry-run` of every kind that prints a script prints exactly the one in tests/golden/ (paths normalised):
`submit train`, `submit run` and `submit sweep`. Each carries the parts every submission gets from
scheduler/admission.py: the audit tag, the energy line (this profile starts no prolog)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from conftest import REPO, RunHpcai

GOLDEN = REPO / "tests" / "golden"
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


CASES = {
    "train": ["submit", "train", "--dry-run", "--no-test-only", "--nodes", "8", "--gpus-per-node", "4", "--gpu-type",
              "h100", "--account", "physics", "--time", "12:00:00", "--config", str(REPO / "examples/tiny.toml"),
              "--precision", "bf16", "--zero", "3"],
    "run": ["submit", "run", "--dry-run", "--no-test-only", "-N", "2", "--gpus-per-node", "2", "-A", "physics",
            "--time", "01:00:00", "--", "python", "train.py", "--lr", "3e-4; rm -rf /"],
    "sweep": ["submit", "sweep", "--dry-run", "--no-test-only", "--config", str(REPO / "examples/tiny.toml"),
              "-A", "physics", "-N", "1", "--gpus-per-node", "1", "--max-steps", "20", "--grid",
              "optimizer.lr=[1e-3,3e-3]"],
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_dry_run_matches_golden(kind: str, hpcai: RunHpcai, tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(SITE)
    proc = hpcai("--site", str(site), *CASES[kind])
    assert proc.returncode == 0, proc.stderr
    text = re.sub(r"sweep-\d{8}-\d{6}-[0-9a-f]{6}", "sweep-{TIME}-{HEX}", normalise(proc.stdout))
    assert sys.executable not in text
    assert text == (GOLDEN / f"{kind}_dryrun.sbatch").read_text()
