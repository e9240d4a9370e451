"""The Open OnDemand app for the training template: form.yml offers only the profile's GPU partitions and
their sizes, submit.yml.erb (rendered with Debian's Ruby ERB, as OnDemand does) turns choices into sbatch
options and clamps what a hand-edited request asks beyond them; the job script is train.sbatch."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, RunHpcai

RUBY = shutil.which("ruby")
pytestmark = pytest.mark.skipif(RUBY is None, reason="ruby not installed (scripts/bootstrap.sh installs it)")

RENDER = r"""
require "erb"
require "yaml"
require "json"
v = JSON.parse(ARGV[1])
account, partition, num_nodes, gpus_per_node, bc_num_hours, zero_stage =
  v.values_at("account", "partition", "num_nodes", "gpus_per_node", "bc_num_hours", "zero_stage")
out = ERB.new(File.read(ARGV[0]), trim_mode: "-").result(binding)
puts JSON.generate(YAML.safe_load(out))
"""


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, hpcai: RunHpcai) -> Path:
    out = tmp_path_factory.mktemp("ood")
    text = (REPO / "slurm/devcluster/site.toml.in").read_text()
    site = out / "site.toml"
    site.write_text(text.replace("@JOBS@", "/j").replace("@STATE@", "/s").replace("@CLUSTER@", "devcluster"))
    proc = hpcai("--site", str(site), "admin", "ood", "--out", str(out / "app"), "-A", "physics")
    assert proc.returncode == 0, proc.stderr
    return out / "app"


def _submit(app: Path, **values: str) -> dict[str, Any]:
    choice = {"account": "physics", "partition": "gpu", "num_nodes": "2", "gpus_per_node": "4", "bc_num_hours": "2",
              "zero_stage": "3", **values}
    out = subprocess.run([str(RUBY), "-e", RENDER, str(app / "submit.yml.erb"), json.dumps(choice)],
                         capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out))


def test_form_offers_the_profile(app: Path) -> None:
    to_json = "puts JSON.generate(YAML.safe_load(File.read(ARGV[0])))"
    form = json.loads(subprocess.run([str(RUBY), "-ryaml", "-rjson", "-e", to_json, str(app / "form.yml")],
                                     capture_output=True, text=True, check=True).stdout)
    options = form["attributes"]["partition"]["options"]
    assert [o[1] for o in options] == ["gpu", "debug"]  # GPU partitions only, not cpu
    assert options[1][2] == {"data-max-num-nodes-for-debug": 2, "data-max-gpus-per-node-for-debug": 4,
                             "data-max-bc-num-hours-for-debug": 1}
    assert form["attributes"]["account"]["value"] == "physics" and form["cluster"] == "devcluster"


def test_submit_turns_choices_into_sbatch_options(app: Path) -> None:
    script = _submit(app)["script"]
    assert script["queue_name"] == "gpu" and script["accounting_id"] == "physics" and script["wall_time"] == 7200
    assert script["native"] == ["--nodes=2", "--ntasks-per-node=4", "--gres=gpu:h100:4", "--cpus-per-task=2"]
    assert script["job_environment"] == {"ZERO_STAGE": "3"}


def test_submit_clamps_what_the_form_would_not_allow(app: Path) -> None:
    script = _submit(app, partition="debug", num_nodes="9", gpus_per_node="16", bc_num_hours="48",
                     zero_stage="7; rm -rf /", account="physics`id`")["script"]
    assert script["native"][:2] == ["--nodes=2", "--ntasks-per-node=4"] and script["wall_time"] == 3600
    assert script["job_environment"] == {"ZERO_STAGE": "2"} and script["accounting_id"] == "physicsid"
    assert _submit(app, partition="cpu")["script"]["queue_name"] == "gpu"


def test_job_script_is_the_training_template(app: Path, hpcai: RunHpcai) -> None:
    erb = subprocess.run([str(RUBY), "-rerb", "-e", "print ERB.new(File.read(ARGV[0])).result",
                          str(app / "template/script.sh.erb")], capture_output=True, text=True, check=True).stdout
    assert erb.startswith("#!/bin/bash\n") and "deepspeed.initialize" in erb
    assert subprocess.run(["bash", "-n"], input=erb, text=True, check=False).returncode == 0
    assert (app / "manifest.yml").read_text().startswith("---\nname: ")
