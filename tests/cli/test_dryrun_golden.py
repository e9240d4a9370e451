"""`--dry-run` of every kind prints exactly the scripts in tests/golden/ (paths normalised): `submit train`,
`submit run`, `submit sweep`, `submit infer`, and a pipeline whose stages are a data pack (its array and
finalize job), a run and an inference stage submitted by its launcher job. Each carries the parts every
submission gets from scheduler/admission.py: the audit tag, the energy line (this profile starts no
prolog)."""

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


INFER = ["submit", "infer", "--dry-run", "--entry", "myentry:run", "--input", "prompts.jsonl", "--output", "out",
         "--rows-per-shard", "5", "--tasks", "2", "-A", "physics", "--time", "00:30:00"]
PIPELINE = """
[pipeline]
name = "golden"
[stage.pack]
kind = "data-pack"
inputs = ["tokens.npy"]
out = "corpus.zarr"
seq_len = 65
array = 2
account = "physics"
[stage.count]
kind = "run"
after = ["pack"]
command = ["python", "count.py", "{stage.pack.out}"]
account = "physics"
time = "00:05:00"
[stage.embed]
kind = "infer"
after = ["pack"]
entry = "myentry:run"
input = "{stage.pack.out}"
output = "embedded"
account = "physics"
time = "00:30:00"
"""


@pytest.mark.parametrize("kind", [*sorted(CASES), "infer", "pipeline"])
def test_dry_run_matches_golden(kind: str, hpcai: RunHpcai, tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(SITE)
    (tmp_path / "myentry.py").write_text("def run(texts, task, params):\n    return [t.upper() for t in texts]\n")
    (tmp_path / "prompts.jsonl").write_text("".join(f'{{"text": "row {i}"}}\n' for i in range(10)))
    np = pytest.importorskip("numpy")
    np.save(tmp_path / "tokens.npy", (np.arange(5000) % 251).astype(np.uint16))
    (tmp_path / "golden.toml").write_text(PIPELINE)
    argv = {"infer": INFER, "pipeline": ["submit", "pipeline", "--dry-run", "golden.toml"]}.get(kind) or CASES[kind]
    proc = hpcai("--site", str(site), *argv, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = normalise(proc.stdout).replace(str(tmp_path), "{TMP}")
    for pattern, stands_for in [(r"sweep-\d{8}-\d{6}-[0-9a-f]{6}", "sweep-{TIME}-{HEX}"),
                                (r"pack-\d{8}-\d{6}-[0-9a-f]{6}", "pack-{TIME}-{HEX}"),
                                (r"infer-[0-9a-f]{8,}", "infer-{RUN}")]:
        text = re.sub(pattern, stands_for, text)
    assert sys.executable not in text
    assert text == (GOLDEN / f"{kind}_dryrun.sbatch").read_text()


def test_dry_run_json_is_the_whole_request(hpcai: RunHpcai, tmp_path: Path) -> None:
    """`--dry-run --json`: the request submit would hand to Slurm, its script the same as the plain dry run."""
    import json

    site = tmp_path / "site.toml"
    site.write_text(SITE)
    plain = hpcai("--site", str(site), *CASES["train"])
    proc = hpcai("--site", str(site), *CASES["train"], "--json")
    assert proc.returncode == 0 and plain.returncode == 0, proc.stderr
    request = json.loads(proc.stdout)
    assert request["kind"] == "train" and request["audit_tag"] == "hpcai-submit-train"
    assert [job["script"] for job in request["jobs"]] == [plain.stdout]
    assert request["jobs"][0]["pickled_call"]["function"] == "hpc_aidc.node.train:train_task"
    assert request["policy"]["account"] == "physics" and request["policy"]["gpus"] == 32
    assert request["output"].endswith("/<job:0>")
    assert [Path(p).name for p in request["writes_after"]] == ["config.json", "deepspeed.json"]


def _gpu_forms(script: str) -> set[str]:
    """How a script asks for GPUs: `--gres=gpu...` and/or `--gpus-per-node` (sbatch lines or srun options)."""
    return ({"--gres"} if re.search(r"--gres[= ](gres[:/])?gpu", script) else set()) | \
        ({"--gpus-per-node"} if "--gpus-per-node" in script else set())


def test_no_script_asks_for_gpus_both_ways() -> None:
    """Slurm 26.05 refuses `--gres=gpu:N` together with `--gpus-per-node`: every script hpcai submits (the
    golden dry runs: submitit's `--gpus-per-node`) and every template `hpcai admin templates` renders
    (`--gres=gpu:TYPE:N`) uses one form."""
    from site_fixture import site_doc

    from hpc_aidc.render.admin_templates import TemplateOptions, render_templates, template_context
    from hpc_aidc.site_profile import parse_site

    scripts = {}
    for path in sorted(GOLDEN.glob("*.sbatch")):  # a pipeline's file holds several scripts
        for n, chunk in enumerate(re.split(r"^(?=#!)", path.read_text(), flags=re.MULTILINE)):
            scripts[f"{path.name}#{n}"] = chunk
    site = parse_site(site_doc(), source="t.toml")
    sources = {p.name: p.read_text() for p in (REPO / "templates" / "sbatch").iterdir()}
    scripts.update(render_templates(sources, template_context(site, TemplateOptions(python=sys.executable))))
    forms = {name: _gpu_forms(text) for name, text in scripts.items()}
    assert all(len(found) <= 1 for found in forms.values()), forms
    assert {"--gres"} in forms.values() and {"--gpus-per-node"} in forms.values()  # both kinds were checked
