"""Every parser of Slurm output on real output of each supported version: Slurm 22.05 (tests/recorded/*.txt, the
dev cluster), 24.11 and 26.05 (tests/recorded/slurm-<version>/, written by scripts/record_slurm_outputs.py; their
COMMANDS.md names each file's command line, user and hpc_aidc caller). Each output goes to the parser hpc_aidc
uses for it and must mean the same on every version: a job's GPUs, nodes and state, job and array task ids,
the energy summary in AdminComment, node GRES, partitions, config values, associations, scancel's verdicts,
sbatch's verdicts. Where 22.05 has no recording of a command, the two newer versions are covered. Times and
ids differ from run to run: ids are taken from COMMANDS.md, times are checked for their form only."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import pytest
from conftest import RECORDED

from hpc_aidc.scheduler.parse import (
    SACCT_DELIMITER,
    AccountingRecord,
    clean_test_only,
    parse_gres,
    parse_key_values,
    parse_sacct,
    parse_squeue,
    parse_test_only,
)
from hpc_aidc.scheduler.slurm_version import SlurmVersion, config_version, parse_version, support

VERSIONS = {"22.05": RECORDED, "24.11": RECORDED / "slurm-24.11", "26.05": RECORDED / "slurm-26.05"}
NEWER = ["24.11", "26.05"]  # recorded by scripts/record_slurm_outputs.py: the same jobs on both
ALL = list(VERSIONS)


def text(version: str, name: str) -> str:
    return (VERSIONS[version] / f"{name}.txt").read_text()


def jobs(version: str) -> dict[str, str]:
    """The jobs the recording submitted, by name (-J): 'done', 'typed', 'arr', 'rq', 'later' -> job id."""
    commands = (VERSIONS[version] / "COMMANDS.md").read_text()
    found = re.findall(r"^- job (\d+) \(as \w+\): `sbatch .* -J (\w+) ", commands, re.MULTILINE)
    return {name: job for job, name in found}


def answering(outputs: Callable[[Sequence[str]], str], rc: int = 0, stderr: str = "") -> Callable[..., object]:
    """A run_slurm that answers each command line with a recorded output."""
    def run(argv: Sequence[str], **_: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(list(argv), rc, stdout=outputs(argv), stderr=stderr)
    return run


def by_id(records: list[AccountingRecord]) -> dict[str, AccountingRecord]:
    return {r.job_id: r for r in records}


# -- versions ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ALL)
def test_the_controller_says_its_version_and_it_is_tested(version: str) -> None:
    from hpc_aidc.scheduler.admin_check import AdminFacts, parse_show_config, version_support

    found = config_version(text(version, "scontrol_config"))
    assert found is not None and found.release == version
    facts = AdminFacts(config=parse_show_config(text(version, "scontrol_config")), source="scontrol show config")
    said = version_support(facts)
    assert said is not None and said.version == found and said.status == "tested" and said.warning is None
    assert said.line() == f"Slurm {found}: tested"


@pytest.mark.parametrize(("shown", "status"), [
    ("22.05.8", "tested"), ("24.11.0", "tested"), ("26.05.12", "tested"),
    ("23.02.7", "expected to work"), ("23.11.4", "expected to work"), ("25.05.6", "expected to work"),
    ("25.11.3", "expected to work"), ("21.08.8", "untested"), ("20.11.9", "untested"), ("26.11.0", "untested"),
    ("27.05.1", "untested"),
])
def test_versions_between_the_tested_are_expected_to_work_and_others_warned(shown: str, status: str) -> None:
    said = support(SlurmVersion(*map(int, shown.split("."))))
    assert said.status == status
    if status == "untested":
        assert said.warning is not None and f"Slurm {shown} is untested" in said.warning
        assert "parsers may misread" in said.warning
        assert ("older than 22.05" if shown < "22" else "newer than 26.05") in said.warning
        assert said.line() == f"Slurm {shown}: untested (tested: 22.05, 24.11, 26.05)"
    else:
        assert said.warning is None


def test_version_forms() -> None:
    assert parse_version("slurm 24.11.5\n") == SlurmVersion(24, 11, 5)
    assert parse_version("slurm-wlm 26.05.5") == SlurmVersion(26, 5, 5)
    assert parse_version("22.05.8-1") == SlurmVersion(22, 5, 8)
    assert parse_version("no version") is None
    assert str(SlurmVersion(26, 5, 5)) == "26.05.5"
    assert config_version("ClusterName = x\n") is None


def test_admin_check_says_the_version_without_another_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """`scontrol show config` is read once; the version row comes from its SLURM_VERSION line."""
    from site_fixture import site_doc

    from hpc_aidc.scheduler import admin_check
    from hpc_aidc.site_profile import parse_site

    calls: list[list[str]] = []
    shown = text("26.05", "scontrol_config")

    def run(argv: Sequence[str], **_: object) -> subprocess.CompletedProcess[str]:
        calls.append(list(argv))
        return subprocess.CompletedProcess(list(argv), 0, stdout=shown, stderr="")

    monkeypatch.setattr(admin_check, "run_slurm", run)
    facts = admin_check.gather_facts(parse_site(site_doc(), source="t.toml"))
    assert calls == [["scontrol", "show", "config"]]
    said = admin_check.version_support(facts)
    assert said is not None and said.line() == "Slurm 26.05.5: tested"
    old = admin_check.AdminFacts(config={**facts.config, "slurm_version": "21.08.8"}, source="x")
    said = admin_check.version_support(old)
    assert said is not None and said.status == "untested" and said.warning is not None
    assert admin_check.version_support(admin_check.AdminFacts(config={}, source="slurm.conf")) is None


# -- sacct (slurmdbd) ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ALL)
def test_sacct_allocations_read_alike(version: str) -> None:
    lines = [line for line in text(version, "sacct_allocations").splitlines() if line]
    records = parse_sacct(text(version, "sacct_allocations"))
    assert len(records) == len(lines)  # no row dropped: the same 21 fields on every version
    for r in records:
        assert r.job_id_raw.isdigit() and re.fullmatch(r"\d+(_\d+)?", r.job_id)
        assert r.state in {"COMPLETED", "CANCELLED", "FAILED", "RUNNING"}  # "CANCELLED by 0": the first word
        assert r.submit is not None and r.account in {"physics", "climate"}
        if "_" in r.job_id:  # an array task: its own raw id, the array's id before "_"
            assert (r.partition == "gpu" and r.name == "arr") or version == "22.05"


@pytest.mark.parametrize("version", NEWER)
def test_sacct_jobs_mean_the_same(version: str) -> None:
    ids = jobs(version)
    records = by_id(parse_sacct(text(version, "sacct_allocations")))
    done, typed, later, rq = (records[ids[n]] for n in ("done", "typed", "later", "rq"))
    assert (done.user, done.account, done.partition, done.state, done.gpus, done.nnodes, done.nodelist) == \
        ("alice", "physics", "debug", "COMPLETED", 1, 1, "n1")
    assert done.exit_code == "0:0" and done.elapsed_s == 1 and done.time_limit == "00:10:00" and done.finished
    assert isinstance(done.start, datetime) and done.end is not None and done.start <= done.end
    assert (typed.state, typed.gpus, typed.partition) == ("CANCELLED", 1, "gpu")  # --gres=gpu:h100:1
    assert (later.state, later.gpus, later.nodelist, later.start) == ("CANCELLED", 0, "None assigned", None)
    assert later.alloc_tres == {} and later.req_tres["node"] == 1
    assert (rq.state, rq.gpus) == ("COMPLETED", 0)
    tasks = sorted((r for r in records.values() if r.job_id.startswith(ids["arr"] + "_")), key=lambda r: r.job_id)
    assert [r.job_id for r in tasks] == [f"{ids['arr']}_{i}" for i in range(1, 5)]
    assert len({r.job_id_raw for r in tasks}) == 4 and ids["arr"] in {r.job_id_raw for r in tasks}
    assert all(r.state == "COMPLETED" and r.account == "climate" for r in tasks)


@pytest.mark.parametrize("version", NEWER)
def test_sacct_energy_summary_in_admin_comment(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from hpc_aidc.monitor import acct
    from hpc_aidc.scheduler import energy_accounting

    done = jobs(version)["done"]
    summary = by_id(parse_sacct(text(version, "sacct_allocations")))[done].admin_comment
    totals = acct.decode(summary)
    assert (totals.nodes, totals.gpus, totals.source, totals.runs) == (("n1",), 1, "counter", 1)
    assert totals.gpu_j is not None and totals.gpu_j > 0
    # energy_accounting's own sacct call (`-X -n -P -o jobid,...,admincomment`)
    monkeypatch.setattr(energy_accounting, "run_slurm",
                        answering(lambda argv: text(version, "sacct_energy_fields")))
    row = energy_accounting.job_with_comment(done)
    assert (row["jobid"], row["jobidraw"], row["user"], row["state"], row["nnodes"]) == (done, done, "alice",
                                                                                         "COMPLETED", "1")
    assert acct.decode(row["admincomment"]) == totals
    # `sacct -o AdminComment%300`: a table, the summary right-aligned in its column
    shown = text(version, "sacct_admincomment").splitlines()
    assert shown[0].strip() == "AdminComment" and set(shown[1].strip()) == {"-"}
    assert acct.decode(shown[2].strip()) == totals
    # rq ran twice (requeued): one summary over both runs
    rq = by_id(parse_sacct(text(version, "sacct_allocations")))[jobs(version)["rq"]]
    assert acct.decode(rq.admin_comment).runs == 2


@pytest.mark.parametrize("version", ALL)
def test_sacct_steps(version: str) -> None:
    records = parse_sacct(text(version, "sacct_steps"))
    steps = [r for r in records if "." in r.job_id]
    assert steps and all(r.job_id_raw.split(".")[1] == r.job_id.split(".")[1] for r in steps)
    assert all(not r.user and not r.partition for r in steps)  # steps have no user, partition or QOS
    allocations = {r.job_id for r in records if "." not in r.job_id}
    assert {r.job_id.split(".")[0] for r in steps} <= allocations
    if version in NEWER:
        ids = jobs(version)
        batch = by_id(records)[f"{ids['typed']}.batch"]
        # the batch step of a cancelled job: 24.11 says 0:15 (signal 15), 26.05 leaves ExitCode empty
        assert batch.state == "CANCELLED" and batch.exit_code in {"0:15", ""}


@pytest.mark.parametrize("version", ALL)
def test_report_rows(version: str) -> None:
    from hpc_aidc.report.rows import parse_rows

    lines = [line for line in text(version, "sacct_report").splitlines() if line]
    rows = parse_rows(lines)
    assert len(rows) == len(lines)
    assert all(r.submit is not None and r.eligible is not None for r in rows)
    assert all(r.cpus >= 1 and r.nodes >= 1 for r in rows if r.state != "CANCELLED")  # cancelled while pending: 0
    if version in NEWER:
        ids = jobs(version)
        runs = [r for r in rows if r.job_id == ids["rq"]]  # --duplicates: each run of the requeued job
        assert [r.state for r in runs] == ["REQUEUED", "COMPLETED"]
        done = next(r for r in rows if r.job_id == ids["done"])
        assert (done.gpus, done.cpus, done.nodes, done.elapsed_s, done.state) == (1, 1, 1, 1, "COMPLETED")
        assert next(r for r in rows if r.job_id == ids["typed"]).state == "CANCELLED"
    else:
        assert sum(r.gpus for r in rows) > 0


@pytest.mark.parametrize("version", ALL)
def test_array_states_for_inference(version: str) -> None:
    from hpc_aidc.scheduler.infer import parse_array_states

    rows = parse_array_states(text(version, "sacct_array_states"))
    if version == "22.05":
        assert [(r.job, r.indices, r.state) for r in rows] == [
            ("278", (0,), "COMPLETED"), ("278", (1,), "COMPLETED"), ("278", (2, 3, 4, 5), "PENDING")]
    else:
        arr = jobs(version)["arr"]
        assert [(r.job, r.indices, r.state) for r in rows] == [(arr, (i,), "COMPLETED") for i in range(1, 5)]


@pytest.mark.parametrize("version", NEWER)
def test_active_array_tasks_from_sacct_and_squeue(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from hpc_aidc.scheduler import infer

    outputs = {"sacct": text(version, "sacct_array_states"), "squeue": text(version, "squeue_infer_states")}
    monkeypatch.setattr(infer, "run_slurm", answering(lambda argv: outputs[argv[0]]))
    # squeue (recorded while tasks 1-2 ran and 3-4 waited) overrides sacct's later COMPLETED
    assert infer.active_tasks([(jobs(version)["arr"], 10)]) == {
        11: "RUNNING", 12: "RUNNING", 13: "PENDING", 14: "PENDING"}


@pytest.mark.parametrize("version", NEWER)
def test_ended_states_for_polling(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from hpc_aidc.scheduler import poll

    ids = jobs(version)
    monkeypatch.setattr(poll, "run_slurm", answering(lambda argv: text(version, "sacct_ended_states")))
    states = poll.ended_states(list(ids.values()))
    assert {name: states[ids[name]] for name in ids} == {
        "done": "COMPLETED", "typed": "CANCELLED", "arr": "COMPLETED", "rq": "COMPLETED", "later": "CANCELLED"}
    assert all(states[f"{ids['arr']}_{i}"] == "COMPLETED" for i in range(1, 5))


@pytest.mark.parametrize("version", ALL)
def test_batch_script_read_back_exactly(version: str) -> None:
    from hpc_aidc.scheduler.audit import parse_batch_script

    shown = text(version, "sacct_batch_script")
    sacct = SlurmVersion(*map(int, version.split(".")))
    command = "true" if version == "22.05" else "sleep 6"
    script = f"#!/bin/sh\n# This script was created by sbatch --wrap.\n\n{command}\n"  # what sbatch --wrap stores
    assert parse_batch_script(shown, sacct) == script
    assert parse_batch_script(shown) == script  # version unknown: right for a script ending in one newline


def test_batch_script_newline_is_sacct_s_only_before_24_11() -> None:
    from hpc_aidc.scheduler.audit import parse_batch_script

    no_newline = "Batch Script for 5\n" + "-" * 80 + "\n#!/bin/sh\ntrue"
    assert parse_batch_script(no_newline + "\n", SlurmVersion(22, 5, 8)) == "#!/bin/sh\ntrue"
    assert parse_batch_script(no_newline, SlurmVersion(24, 11, 5)) == "#!/bin/sh\ntrue"
    blank_end = "Batch Script for 5\n" + "-" * 80 + "\n#!/bin/sh\ntrue\n\n"
    assert parse_batch_script(blank_end, SlurmVersion(26, 5, 5)) == "#!/bin/sh\ntrue\n\n"
    assert parse_batch_script(blank_end + "\n", SlurmVersion(22, 5, 8)) == "#!/bin/sh\ntrue\n\n"


# -- squeue, scontrol (slurmctld) ---------------------------------------------------------------------------

@pytest.mark.parametrize("version", ALL)
def test_squeue_gpus_states_and_arrays(version: str) -> None:
    lines = [line for line in text(version, "squeue").splitlines() if line]
    records = by_id(parse_squeue(text(version, "squeue")))
    assert len(records) == len(lines)
    pending_arrays = [r for r in records.values() if "[" in r.job_id]
    assert len(pending_arrays) == 1 and pending_arrays[0].state == "PENDING"
    if version == "22.05":  # %b: gres:gpu:N (per node)
        assert records["47_[0-1]"].req_tres["gres/gpu"] == 4 and records["46"].gpus == 16
        assert records["45"].gpus == 0
        return
    ids = jobs(version)  # %b: gres/gpu:N, gres/gpu:h100:1
    typed, done, later = records[ids["typed"]], records[ids["done"]], records[ids["later"]]
    assert (typed.state, typed.gpus, typed.nnodes, typed.nodelist) == ("RUNNING", 1, 1, "n1")
    assert done.req_tres["gres/gpu"] == 1 and done.user == "alice"
    assert (later.state, later.gpus, later.nodelist, later.submit is not None) == ("PENDING", 0, "", True)
    assert pending_arrays[0].job_id == f"{ids['arr']}_[3-4%2]" and pending_arrays[0].job_id_raw == ids["arr"]
    running = [r for r in records.values() if r.job_id.startswith(ids["arr"] + "_") and r.state == "RUNNING"]
    assert sorted(r.job_id for r in running) == [f"{ids['arr']}_1", f"{ids['arr']}_2"]
    mine = parse_squeue(text(version, "squeue_alice"))
    assert {r.job_id for r in mine} == {ids["done"], ids["later"]} and {r.user for r in mine} == {"alice"}


@pytest.mark.parametrize("version", NEWER)
def test_queue_states_for_polling(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from hpc_aidc.scheduler import poll

    ids = jobs(version)
    monkeypatch.setattr(poll, "run_slurm", answering(lambda argv: text(version, "squeue_poll_states")))
    states = poll.queue_states([ids[n] for n in ("typed", "arr", "later", "rq")])
    assert (states[ids["typed"]], states[ids["later"]], states[ids["rq"]]) == ("RUNNING", "PENDING", "COMPLETING")
    assert poll.active(states[ids["arr"]])  # an array with tasks running and waiting
    assert {states[f"{ids['arr']}_{i}"] for i in (1, 2)} == {"RUNNING"}
    assert {states[f"{ids['arr']}_{i}"] for i in (3, 4)} == {"PENDING"}


@pytest.mark.parametrize(("name", "state"), [
    ("scontrol_job_finished", "COMPLETED"), ("scontrol_job_pending", "PENDING"),
    ("scontrol_job_running_typed_gres", "RUNNING"), ("scontrol_local_job", "RUNNING"), ("scontrol_job_array", None),
])
@pytest.mark.parametrize("version", NEWER)
def test_one_jobs_state_from_scontrol(version: str, name: str, state: str | None,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`scontrol --local show job N`: the state when exactly one record is shown (an array shows several)."""
    from hpc_aidc.scheduler import poll

    shown = text(version, name)
    job = re.match(r"JobId=(\d+) ", shown)
    assert job is not None
    monkeypatch.setattr(poll, "run_slurm", answering(lambda argv: shown))
    assert poll.single_state(job.group(1)) == state


@pytest.mark.parametrize("version", ALL)
def test_scontrol_job_gres(version: str) -> None:
    """TresPerNode: 'gres:gpu:2' (22.05) and 'gres/gpu:h100:1' (24.11, 26.05) read as the same kind of GPUs.
    The TRES line differs too (22.05: TRES=; later: ReqTRES= and AllocTRES=): nothing of hpc_aidc reads it."""
    name = "scontrol_job_running" if version == "22.05" else "scontrol_job_running_typed_gres"
    record = parse_key_values(text(version, name))
    if version == "22.05":
        assert parse_gres(record["TresPerNode"]) == [("gpu", None, 2)] and "gres/gpu=4" in record["TRES"]
    else:
        assert parse_gres(record["TresPerNode"]) == [("gpu", "h100", 1)]
        assert "gres/gpu=1" in record["ReqTRES"] and "gres/gpu=1" in record["AllocTRES"] and "TRES" not in record
    assert record["JobState"] in {"PENDING", "RUNNING"} and record["Partition"] == "gpu"


@pytest.mark.parametrize("version", ALL)
def test_nodes_gres_and_partitions(version: str) -> None:
    from hpc_aidc.scheduler.site_check import parse_scontrol_records
    from hpc_aidc.slurmtime import parse_time_limit

    nodes = parse_scontrol_records(text(version, "scontrol_nodes"), "NodeName")
    assert sorted(nodes) == ["n1", "n2", "n3", "n4"]
    for node in nodes.values():
        assert parse_gres(node["Gres"]) == [("gpu", "h100", 4)]
        assert int(node["CPUTot"]) >= 4 and node["Version"].startswith(version)
        assert node["State"].split("+")[0] in {"IDLE", "MIXED", "ALLOCATED"}
    assert "debug" in nodes["n1"]["Partitions"].split(",")
    parts = parse_scontrol_records(text(version, "scontrol_partitions"), "PartitionName")
    assert {"gpu", "debug"} <= set(parts)
    assert (parts["gpu"]["TotalNodes"], parts["gpu"]["Nodes"], parts["gpu"]["Default"]) == ("4", "n[1-4]", "YES")
    assert parse_time_limit(parts["gpu"]["MaxTime"]) == 1440 and parse_time_limit(parts["debug"]["MaxTime"]) == 60


def test_site_check_on_each_version() -> None:
    """`hpcai site check`'s comparison gives the same verdict on the three clusters (gpu: 4 nodes of 4 h100)."""
    from site_fixture import site_doc

    from hpc_aidc.scheduler.site_check import ClusterFacts, parse_scontrol_records, site_problems
    from hpc_aidc.site_profile import parse_site

    doc = site_doc()
    doc["partitions"] = {"gpu": {"nodes": 4, "gpus_per_node": 4, "gpu_type": "h100", "cpus_per_node": 4}}
    doc["cluster"]["default_partition"] = "gpu"
    doc["cluster"].pop("default_account", None)
    doc["cluster"].pop("default_qos", None)
    doc["cluster"]["energy_prolog"] = False
    site = parse_site(doc, source="t.toml")
    for version in ALL:
        facts = ClusterFacts(partitions=parse_scontrol_records(text(version, "scontrol_partitions"), "PartitionName"),
                             nodes=parse_scontrol_records(text(version, "scontrol_nodes"), "NodeName"),
                             accounts=frozenset({"physics"}), qos=frozenset({"normal"}))
        assert site_problems(site, facts) == [], version


@pytest.mark.parametrize("version", ALL)
def test_config_values_hpcai_reads(version: str) -> None:
    from hpc_aidc.report.access import parse_private_data
    from hpc_aidc.scheduler.admin_check import parse_show_config
    from hpc_aidc.scheduler.infer import parse_max_array_size
    from hpc_aidc.scheduler.site_check import parse_config_value

    shown = text(version, "scontrol_config")
    assert parse_max_array_size(shown) == 1001
    assert parse_private_data(shown) <= {"accounts", "jobs", "usage", "users"} and parse_private_data(shown)
    config = parse_show_config(shown)
    assert config["clustername"] == "devcluster" and "gres/gpu" in config["accountingstoragetres"]
    assert config["slurm_version"].startswith(version) and config["authtype"] == "auth/munge"
    assert parse_config_value(shown, "ClusterName") == "devcluster"
    assert parse_config_value(shown, "AccountingStorageBackupHost") == ""  # (null)


@pytest.mark.parametrize("version", ALL)
def test_prolog_and_epilog_settings(version: str) -> None:
    """22.05 prints `Prolog = X`; 24.11 and 26.05 print `Prolog[0] = X` (several scripts allowed since 23.02)
    and leave an unset PrologSlurmctld out: each reads as the setting itself."""
    from hpc_aidc.install.kit_chain import configured_scripts
    from hpc_aidc.scheduler.admin_check import parse_show_config
    from hpc_aidc.scheduler.site_check import parse_config_value

    name = "scontrol_config_admin" if version == "22.05" else "scontrol_config"  # the kit's prolog.d setup
    shown = text(version, name)
    config = parse_show_config(shown)
    assert config["prolog"].endswith("/slurm/prolog.d/*") or config["prolog"].endswith("/prolog.d/*")
    assert config["epilog"].endswith("/energy/epilog.sh") and config["prologflags"] == "Alloc"
    assert config["epilogslurmctld"].endswith("epilog_slurmctld.sh")
    assert config.get("prologslurmctld", "") == ""
    assert not any("[" in key for key in config)
    assert parse_config_value(shown, "Prolog") == config["prolog"]
    scripts = configured_scripts(config, ("/p/prolog.d/10-energy.sh",))
    assert [role for role, _ in scripts] == [f"Prolog ({config['prolog']})", "Epilog", "EpilogSlurmctld"]


def test_several_prolog_scripts() -> None:
    from hpc_aidc.install.kit_chain import configured_scripts
    from hpc_aidc.scheduler.admin_check import parse_show_config
    from hpc_aidc.scheduler.site_check import ClusterFacts, runs_energy_prolog

    config = parse_show_config("Prolog[0]               = /etc/slurm/site.sh\n"
                               "Prolog[1]               = /opt/hpcai/slurm/energy/prolog.sh\n"
                               "PrologSlurmctld         = (null)\n")
    assert config["prolog"] == "/etc/slurm/site.sh,/opt/hpcai/slurm/energy/prolog.sh"
    assert configured_scripts(config, ()) == [("Prolog", "/etc/slurm/site.sh"),
                                              ("Prolog", "/opt/hpcai/slurm/energy/prolog.sh")]
    bare = ClusterFacts(partitions={}, nodes={}, accounts=frozenset(), qos=frozenset(), prolog=config["prolog"])
    assert runs_energy_prolog(bare)


@pytest.mark.parametrize("version", NEWER)
def test_admin_check_reads_a_current_config(version: str) -> None:
    """The recorded 24.11/26.05 clusters run the kit (prolog.d, energy epilog, the audit's EpilogSlurmctld):
    no problem with their settings may come from the `Prolog[0]` form (the files checked are not here)."""
    from site_fixture import site_doc

    from hpc_aidc.scheduler.admin_check import AdminFacts, admin_problems, parse_show_config
    from hpc_aidc.site_profile import parse_site

    doc = site_doc()
    doc["cluster"]["energy_prolog"] = True
    site = parse_site(doc, source="t.toml")
    config = parse_show_config(text(version, "scontrol_config"))
    facts = AdminFacts(config=config, source="scontrol show config",
                       prolog_scripts=("/opt/hpcai/slurm/prolog.d/10-energy.sh",
                                       "/opt/hpcai/slurm/prolog.d/20-gpu-health.sh"))
    problems = admin_problems(site, facts, None)
    assert problems and all(p.startswith(("energy store", "/energy/", "/etc/hpcai/")) for p in problems), problems


# -- sacctmgr -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", NEWER)
def test_associations(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import pwd

    from hpc_aidc import slurm_client
    from hpc_aidc.install.user_folders import associated_users
    from hpc_aidc.report.access import parse_user_line
    from hpc_aidc.scheduler.associations import parse_associations

    assert parse_associations(text(version, "sacctmgr_user_assocs")) == {"physics": {"debug", "normal"}}
    assert parse_user_line(text(version, "sacctmgr_user_withcoord")) == (False, frozenset())
    monkeypatch.setattr(slurm_client, "run_slurm", answering(lambda argv: text(version, "sacctmgr_assoc_users")))
    known = set()
    for user in ("alice", "bob", "root"):
        try:
            pwd.getpwnam(user)
            known.add(user)
        except KeyError:
            pass
    assert associated_users() == sorted(known)  # blank lines (the accounts' own rows) dropped


# -- sbatch, scancel ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", NEWER)
def test_test_only_verdict_reads_alike(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from hpc_aidc.scheduler import submit

    shown = text(version, "sbatch_test_only")
    verdict = parse_test_only(shown)
    assert verdict is not None and verdict.job_id.isdigit()
    assert (verdict.cpus, verdict.nodes, verdict.partition) == (1, "n2", "debug")
    assert isinstance(verdict.start, datetime)
    clean = f"sbatch: Job {verdict.job_id} to start at {verdict.when} using 1 processors on nodes n2 in partition debug"
    assert clean_test_only(shown).strip() == clean  # 26.05's "to start at T a using" reads as 24.11's
    monkeypatch.setattr(submit, "run_slurm", lambda argv, **_: subprocess.CompletedProcess(argv, 0, "", shown))
    assert submit.test_only("#!/bin/bash\n") == clean.removeprefix("sbatch: ")


def test_test_only_keeps_other_lines() -> None:
    shown = ("sbatch: warning: something\n"
             "sbatch: Job 9 to start at 2026-12-07T15:26:47 a using 1 processors on nodes n2 in partition debug\n")
    assert clean_test_only(shown) == shown.replace(" a using", " using")
    assert parse_test_only("sbatch: error: nothing") is None


@pytest.mark.parametrize("version", NEWER)
def test_policy_refusal_says_the_policys_reason(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """job_submit.lua's refusal: its own line, then sbatch's generic one; hpcai says the first."""
    from hpc_aidc.errors import SlurmError
    from hpc_aidc.scheduler import submit
    from hpc_aidc.slurm_client import first_error_line

    shown = text(version, "sbatch_policy_refused")
    assert shown.splitlines()[-1] == "sbatch: error: Batch job submission failed: Unspecified error"
    reason = first_error_line(shown)
    assert reason.startswith("HPCAI-P002: Expected no GPUs on CPU-only partition cpu.")
    monkeypatch.setattr(submit, "run_slurm", lambda argv, **_: subprocess.CompletedProcess(argv, 1, "", shown))
    with pytest.raises(SlurmError, match="sbatch refused the job: HPCAI-P002: Expected no GPUs"):
        submit._sbatch(Path("/x.sh"), {}, "the job")
    with pytest.raises(SlurmError, match="refused the job: HPCAI-P002"):
        submit.test_only("#!/bin/bash\n")
    assert first_error_line("sbatch: error: Batch job submission failed: Invalid account") == \
        "Batch job submission failed: Invalid account"
    assert first_error_line("sbatch: error: Batch job submission failed: Unspecified error") == \
        "Batch job submission failed: Unspecified error"


@pytest.mark.parametrize("version", ALL)
def test_scancel_verbose(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from hpc_aidc.errors import JobNotFoundError
    from hpc_aidc.scheduler import accounting
    from hpc_aidc.scheduler.accounting import parse_scancel_verbose

    refused = parse_scancel_verbose(text(version, "scancel_verbose"))
    assert refused["999999"] == "Invalid job id specified"
    assert "Access/permission denied" in refused.values()
    if version == "22.05":
        return
    ids = jobs(version)
    assert refused == {"999999": "Invalid job id specified", ids["typed"]: "Access/permission denied"}
    monkeypatch.setattr(accounting, "run_slurm", answering(lambda argv: "", rc=210,
                                                           stderr=text(version, "scancel_verbose")))
    with pytest.raises(JobNotFoundError, match=f"no job 999999 .*cancelled: {ids['later']}"):
        accounting.cancel_jobs([ids["later"], "999999", ids["typed"]])


# -- sdiag (bench/controller_load), sreport, sacct --json ----------------------------------------------------

@pytest.mark.parametrize("version", NEWER)
def test_sdiag_rpc_counts_by_user(version: str) -> None:
    from bench.controller_load.run import user_rpc_count

    shown = text(version, "sdiag")
    assert user_rpc_count(shown, "alice") > 0 and user_rpc_count(shown, "root") > 1000
    assert user_rpc_count(shown, "bob") == 0


def test_nothing_parses_sreport_or_sacct_json_by_name() -> None:
    """24.11's `sreport cluster utilization` names two columns "Planned" (22.05 and 26.05: "PLND Down" and
    "Planned"); `sacct --json` changes shape with each data_parser (v0.0.38, v0.0.42, v0.0.45: states become
    lists, exit codes objects). hpc_aidc reads neither (the bench reads sreport only with `-n` and its own
    `format=`): this test fails the day code starts to, so that it gets its versions' tests."""
    header = {v: text(v, "sreport_cluster_utilization").splitlines()[4].split("|") for v in NEWER}
    assert header["24.11"].count("Planned") == 2 and "PLND Down" in header["26.05"]
    repo = RECORDED.parents[1]
    for path in [*repo.joinpath("hpc_aidc").rglob("*.py"), *repo.joinpath("bench").rglob("*.py")]:
        code = path.read_text()
        assert not re.search(r"\"sacct\"[^\]]*\"--json\"", code), path
        assert "PLND" not in code and not re.search(r"[\"']Planned[\"']", code), path


def test_records_have_their_fields() -> None:
    """The canonical (unfenced) form every recorded sacct listing has: SACCT_FIELDS joined by US."""
    from hpc_aidc.scheduler.parse import SACCT_FIELDS

    for version in ALL:
        for line in text(version, "sacct_allocations").splitlines():
            assert line.count(SACCT_DELIMITER) == len(SACCT_FIELDS) - 1, version
