from pathlib import Path

import pytest
from site_fixture import make_site, site_doc

from hpc_aidc.errors import SiteProfileError
from hpc_aidc.site_profile import find_site_path, load_site, parse_site


def test_parses_partitions_prices_and_env() -> None:
    site = make_site()
    assert site.partition("gpu").gpus_per_node == 4
    assert site.partition(None).name == "gpu"
    assert site.partitions["cpu"].gpu_type is None
    assert site.prices.pue == 1.3
    assert site.default_time_min == 30
    assert site.env == {"NCCL_SOCKET_IFNAME": "ib0"}


def test_env_overrides_cluster_keys() -> None:
    site = parse_site(site_doc(), environ={"HPCAI_JOB_ROOT": "/elsewhere", "HPCAI_DEFAULT_QOS": "high"})
    assert site.job_root == Path("/elsewhere")
    assert site.default_qos == "high"


@pytest.mark.parametrize(("mutate", "needle"), [
    (lambda d: d["partitions"]["gpu"].update(colour="red"), "unknown ['colour']"),
    (lambda d: d["partitions"]["gpu"].update(nodes=0), "partitions.gpu.nodes >= 1"),
    (lambda d: d["partitions"]["gpu"].update(nodes="4"), "to be a int"),
    (lambda d: d["partitions"]["gpu"].update(gpu_type="a100"), "gpu_types.a100"),
    (lambda d: d["cluster"].pop("job_root"), "[cluster].job_root"),
    (lambda d: d["cluster"].update(default_partition="nope"), "default_partition"),
    (lambda d: d.update(extra={}), "unknown ['extra']"),
    (lambda d: d.update(partitions={}), "at least one [partitions.NAME]"),
])
def test_invalid_profiles_say_what_is_wrong(mutate, needle: str) -> None:  # type: ignore[no-untyped-def]
    doc = site_doc()
    mutate(doc)
    with pytest.raises(SiteProfileError) as err:
        parse_site(doc, source="x.toml")
    assert needle in str(err.value)


def test_unknown_partition_lists_known_ones() -> None:
    with pytest.raises(SiteProfileError, match=r"\(cpu, gpu\)"):
        make_site().partition("nope")


def test_lookup_order(tmp_path: Path) -> None:
    assert find_site_path("a.toml", {"HPCAI_SITE": "b.toml"}) == Path("a.toml")
    assert find_site_path(None, {"HPCAI_SITE": "b.toml"}) == Path("b.toml")
    assert find_site_path(None, {}) == Path("/etc/hpcai/site.toml")


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(SiteProfileError, match="Got no such file"):
        load_site(tmp_path / "none.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[cluster\n")
    with pytest.raises(SiteProfileError, match="valid TOML"):
        load_site(bad, environ={})


def test_devcluster_profile_template_parses(tmp_path: Path) -> None:
    template = Path(__file__).resolve().parents[1] / "slurm/devcluster/site.toml.in"
    text = template.read_text().replace("@JOBS@", "/j").replace("@STATE@", "/s").replace("@CLUSTER@", "c")
    (tmp_path / "site.toml").write_text(text)
    site = load_site(tmp_path / "site.toml", environ={})
    assert site.partition("gpu").gpu_type == "h100"
    assert site.energy_prolog is True  # up.sh installs the prolog


def test_example_profile_for_admins_parses() -> None:
    example = Path(__file__).resolve().parents[1] / "templates/site.example.toml"
    site = load_site(example, environ={})
    assert site.partition(None).gpus_per_node == 8 and site.energy_prolog is False


def test_energy_prolog_flag_and_its_override() -> None:
    assert make_site().energy_prolog is False
    doc = site_doc()
    doc["cluster"]["energy_prolog"] = True
    assert parse_site(doc).energy_prolog is True
    # an admin-only key: a user's HPCAI_ENERGY_PROLOG changes nothing (tests/test_site_trusted.py)
    assert parse_site(doc, environ={"HPCAI_ENERGY_PROLOG": "0"}).energy_prolog is True
    assert parse_site(site_doc(), environ={"HPCAI_ENERGY_PROLOG": "yes"}).energy_prolog is False
    doc["cluster"]["energy_prolog"] = "sometimes"
    with pytest.raises(SiteProfileError, match="energy_prolog to be true or false"):
        parse_site(doc, source="x.toml")
