from pathlib import Path

from site_fixture import make_site

from hpc_aidc.render.sbatch import job_folder, render_sbatch, setup_lines, submitit_parameters
from hpc_aidc.spec.resources import parse_resources


def test_parameters_map_resources() -> None:
    site = make_site()
    r = parse_resources(site, nodes=2, gpus_per_node=4, gpu_type="h100", account="physics", job_name="t")
    p = submitit_parameters(r, site)
    assert p["nodes"] == 2 and p["ntasks_per_node"] == 4 and p["gpus_per_node"] == "h100:4"
    assert p["account"] == "physics" and p["time"] == 30 and p["wckey"] is None


def test_env_values_are_quoted() -> None:
    lines = setup_lines(make_site(), {"EVIL": "$(touch /tmp/pwned)'; x"})
    assert "export EVIL=''\"'\"'" not in lines  # sanity: not double-escaped nonsense
    assert "export EVIL='$(touch /tmp/pwned)'\"'\"'; x'" in lines
    assert lines[0] == "module load cuda"


def test_script_shape() -> None:
    site = make_site()
    r = parse_resources(site, nodes=2, gpus_per_node=2, account="physics", job_name="x'; touch /tmp/pwned; '")
    folder = job_folder(site, "alice")
    assert folder == Path("/jobs/alice/%j")
    script = render_sbatch(submitit_parameters(r, site), folder, "/venv/bin/python")
    assert script.startswith("#!/bin/bash\n")
    assert "#SBATCH --nodes=2\n" in script and "#SBATCH --gpus-per-node=2\n" in script
    assert "#SBATCH --job-name='x'\"'\"'; touch /tmp/pwned; '\"'\"''\n" in script
    assert "#SBATCH --signal=USR2@120" in script
    assert script.rstrip().endswith("/venv/bin/python -u -m submitit.core._submit /jobs/alice/%j")


def test_a_dependency_comes_with_kill_on_invalid_dep() -> None:
    site = make_site()
    r = parse_resources(site, nodes=1, account="physics", job_name="stage")
    plain = render_sbatch(submitit_parameters(r, site), Path("/jobs/alice/%j"), "/venv/bin/python")
    assert "--dependency" not in plain and "--kill-on-invalid-dep" not in plain
    params = submitit_parameters(r, site, dependency="afterok:12:13", additional={"requeue": True})
    script = render_sbatch(params, Path("/jobs/alice/%j"), "/venv/bin/python")
    # Slurm then cancels the job when a job it waits for fails, instead of leaving it pending forever
    assert "#SBATCH --dependency=afterok:12:13\n" in script
    assert "#SBATCH --kill-on-invalid-dep=yes\n" in script and "#SBATCH --requeue\n" in script
