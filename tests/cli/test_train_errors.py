"""Bad `hpcai submit train` input is refused before submission: one line, exit 2."""

from pathlib import Path

import pytest
from conftest import REPO, RunHpcai, assert_clean_error

EXAMPLE = str(REPO / "examples/tiny.toml")


@pytest.mark.parametrize(("doc", "flags", "needle"), [
    ("[train]\nsteps = 3\n", [], "unknown ['steps']"),
    ("[model]\nn_layer = 3\n", ["--pipeline-stages", "2", "--zero", "1", "--grad-accum", "2"], "divide model.n_layer"),
    ("", ["--pipeline-stages", "2", "--zero", "1", "--nodes", "3"], "multiple of --pipeline-stages"),
    ("", ["--entry", "no_such_pkg.mod:build"], "--entry module 'no_such_pkg.mod' to import"),
    ("", ["--entry", "json:no_such_function"], "function 'no_such_function' in json"),
    ("", ["--zero", "7"], "--zero from"),
    ("[model]\npreset = \"7b\"\n[train]\nmicro_batch = 64\n", ["--gpus-per-node", "1"], "Expected the model to fit"),
    ("", ["--target-loss", "-1"], "--target-loss (train.target_loss) >= 0"),
    ("[eval]\nevery = 5\nholdout = 2.0\n", [], "eval.holdout between 0 and 1"),
])
def test_bad_training_requests(hpcai: RunHpcai, tmp_path: Path, doc: str, flags: list[str], needle: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(doc)
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    proc = hpcai("submit", "train", "--config", str(config), *flags, env={"HPCAI_JOB_ROOT": str(jobs)})
    assert_clean_error(proc, needle)
    assert list(jobs.iterdir()) == []


def test_missing_config(hpcai: RunHpcai, tmp_path: Path) -> None:
    assert_clean_error(hpcai("submit", "train", "--config", str(tmp_path / "none.toml")), "Got no such file")


def test_precision_the_gpus_cannot_do(hpcai: RunHpcai, tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(f"""
[cluster]
job_root = "{tmp_path}"
energy_store = "{tmp_path}"
scratch = "/tmp"
default_partition = "old"
[partitions.old]
nodes = 2
gpus_per_node = 4
gpu_type = "v100"
cpus_per_node = 8
[gpu_types.v100]
precisions = ["fp32", "fp16"]
memory_gib = 32
""")
    proc = hpcai("--site", str(site), "submit", "train", "--config", EXAMPLE, "-G", "1", "--precision", "bf16")
    assert_clean_error(proc, "precision these GPUs support (fp32, fp16)")


def test_plan_prints_every_stage(hpcai: RunHpcai, tmp_path: Path) -> None:
    # the dev cluster's profile as up.sh writes it (4 GiB nodes whose "GPU" ranks are CPU processes)
    text = (REPO / "slurm/devcluster/site.toml.in").read_text()
    for key, value in {"@CLUSTER@": "dev", "@JOBS@": str(tmp_path), "@STATE@": str(tmp_path)}.items():
        text = text.replace(key, value)
    site = tmp_path / "site.toml"
    site.write_text(text)
    proc = hpcai("--site", str(site), "plan", "--config", EXAMPLE, "--nodes", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    import json

    plan = json.loads(proc.stdout)
    assert [r["zero"] for r in plan["rows"]] == [0, 1, 1, 2, 2, 3, 3, 3]
    assert plan["suggestion"] == {"nodes": 1, "zero": 0, "offload": "none"}


def test_a_held_out_split_too_small_for_validation(hpcai: RunHpcai, tmp_path: Path) -> None:
    import numpy as np

    tokens = tmp_path / "tokens.npy"
    np.save(tokens, (np.arange(6500) % 251).astype(np.uint16))  # 100 samples of 65 tokens
    store = tmp_path / "corpus.zarr"
    packed = hpcai("data", "pack", str(tokens), "-o", str(store), "--seq-len", "65", "--vocab-size", "256")
    assert packed.returncode == 0, packed.stderr
    config = tmp_path / "c.toml"
    config.write_text("[model]\nseq_len = 64\n[eval]\nevery = 5\nholdout = 0.05\n")  # 5 held out
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    proc = hpcai("submit", "train", "--config", str(config), "--data", str(store), "--nodes", "2",
                 "--ntasks-per-node", "1", "--micro-batch", "4", env={"HPCAI_JOB_ROOT": str(jobs)})
    assert_clean_error(proc, "at least 8 held-out samples (2 data-parallel ranks x micro_batch 4). Got 5")
    assert list(jobs.iterdir()) == []
