import dataclasses

from conftest import RECORDED
from site_fixture import make_site, site_doc

from hpc_aidc.scheduler.site_check import ClusterFacts, parse_config_value, parse_scontrol_records, site_problems
from hpc_aidc.site_profile import parse_site


def facts() -> ClusterFacts:
    return ClusterFacts(
        partitions=parse_scontrol_records((RECORDED / "scontrol_partitions.txt").read_text(), "PartitionName"),
        nodes=parse_scontrol_records((RECORDED / "scontrol_nodes.txt").read_text(), "NodeName"),
        accounts=frozenset({"physics", "climate", "root"}),
        qos=frozenset({"normal", "debug"}),
    )


def test_matching_profile_has_no_problems() -> None:
    doc = site_doc()
    doc["partitions"] = {"gpu": {"nodes": 4, "gpus_per_node": 4, "gpu_type": "h100", "cpus_per_node": 4,
                                 "max_time": "1-00:00:00"}}
    assert site_problems(parse_site(doc), facts()) == []


def test_each_mismatch_is_one_line_with_a_fix() -> None:
    doc = site_doc()
    doc["partitions"]["gpu"].update(nodes=8, cpus_per_node=16, max_time="2-00:00:00")
    doc["gpu_types"]["a100"] = {"precisions": ["fp32"]}
    doc["partitions"]["debug"] = {"nodes": 2, "gpus_per_node": 2, "gpu_type": "a100", "cpus_per_node": 4}
    doc["cluster"].update(default_account="nobody", default_qos="gold")
    problems = site_problems(parse_site(doc), facts())
    text = "\n".join(problems)
    assert "partition 'cpu' is in" in text
    assert "set nodes = 4" in text
    assert "MaxTime=1-00:00:00" in text
    assert "set cpus_per_node = 4" in text
    assert "type 'a100'" in text and "Gres=gpu:h100:4" in text
    assert "'nobody' is not a Slurm account" in text
    assert "'gold' is not a Slurm QoS" in text
    assert make_site().name == "t"


def test_config_values_from_recorded_scontrol_show_config() -> None:
    text = (RECORDED / "scontrol_config.txt").read_text()
    assert parse_config_value(text, "Prolog") == "/opt/hpc-aidc/slurm/energy/prolog.sh"
    assert parse_config_value(text, "PrologSlurmctld") == ""  # (null)
    assert parse_config_value(text, "NoSuchKey") == ""


def test_energy_prolog_claim_is_checked_against_slurm_conf() -> None:
    doc = site_doc()
    doc["partitions"] = {"gpu": {"nodes": 4, "gpus_per_node": 4, "gpu_type": "h100", "cpus_per_node": 4}}
    doc["cluster"]["energy_prolog"] = True
    site = parse_site(doc)
    installed = dataclasses.replace(facts(), prolog="/opt/hpc-aidc/slurm/energy/prolog.sh")
    assert site_problems(site, installed) == []
    (problem,) = site_problems(site, facts())
    assert "energy_prolog = true" in problem and "Prolog is unset" in problem and "energy_prolog = false" in problem
