"""The site policy: [policy] parsing, the rules in Python, the same rules in the rendered job_submit.lua
(run in Lua 5.1, the version Debian's job_submit_lua.so links, with a stub `slurm` table) on submissions and
on changes (slurm_job_modify), and the catalogue users read. The real slurmctld is in test_policy_cluster.py."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, RunHpcai, assert_clean_error
from site_fixture import site_doc

from hpc_aidc.errors import PolicyError, SiteProfileError
from hpc_aidc.render.job_submit_lua import lua_string, render_job_submit_lua
from hpc_aidc.site_profile import SiteProfile, parse_site
from hpc_aidc.spec.policy import (
    RULES,
    PolicyRequest,
    catalogue_markdown,
    enforce,
    first_broken_change,
    first_broken_rule,
    request_from_job_desc,
    request_from_resources,
)
from hpc_aidc.spec.resources import parse_resources

POLICY: dict[str, Any] = {
    "exempt_users": ["root"], "require_account": True, "require_time": ["cpu"], "gpu_only_partitions": ["gpu"],
    "qos": {"normal": {"max_gpus_per_job": 8}, "debug": {"max_gpus_per_job": 2}},
    "gpu_types": {"h100": {"max_cpus_per_gpu": 2, "max_mem_per_gpu_mb": 1000}},
}


def policy_site(**overrides: Any) -> SiteProfile:
    doc = site_doc()
    doc["policy"] = {**POLICY, **overrides}
    return parse_site(doc, source="test.toml")


def req(**kw: Any) -> PolicyRequest:
    base: dict[str, Any] = {"user": "alice", "account": "physics", "partition": "gpu", "qos": None,
                            "time_given": True, "nodes": 1, "gpus": 1, "gpus_per_node": 1, "gpu_type": None,
                            "cpus": 1, "cpus_per_node": 1, "mem_per_node_mb": None}
    return PolicyRequest(**{**base, **kw})


# (name, python request, the same request as Slurm's job_desc, expected code or None)
CASES: list[tuple[str, dict[str, Any], dict[str, Any], str | None]] = [
    ("valid gpu job", {}, {"account": "physics", "tres_per_node": "gres:gpu:h100:1", "time_limit": 30}, None),
    ("no account", {"account": None}, {"tres_per_node": "gres:gpu:1", "time_limit": 30}, "HPCAI-P001"),
    ("gpus on cpu partition", {"partition": "cpu"},
     {"account": "physics", "partition": "cpu", "tres_per_node": "gres:gpu:1", "time_limit": 30}, "HPCAI-P002"),
    ("cpu job on gpu-only partition", {"gpus": 0, "gpus_per_node": 0},
     {"account": "physics", "partition": "gpu", "time_limit": 30}, "HPCAI-P003"),
    ("too many nodes", {"nodes": 5, "gpus": 5},
     {"account": "physics", "min_nodes": 5, "tres_per_node": "gres:gpu:1", "time_limit": 30}, "HPCAI-P004"),
    ("too many gpus per node", {"gpus": 6, "gpus_per_node": 6, "qos": "normal"},
     {"account": "physics", "tres_per_node": "gres:gpu:h100:6", "time_limit": 30}, "HPCAI-P004"),
    ("too much memory per node", {"mem_per_node_mb": 5000},
     {"account": "physics", "tres_per_node": "gres:gpu:1", "min_mem_per_node": 5000, "time_limit": 30}, "HPCAI-P004"),
    ("no time on cpu partition", {"partition": "cpu", "gpus": 0, "gpus_per_node": 0, "time_given": False},
     {"account": "physics", "partition": "cpu"}, "HPCAI-P005"),
    ("no time where none is required", {"time_given": False}, {"account": "physics", "tres_per_node": "gres:gpu:1"},
     None),
    ("qos gpu cap", {"qos": "debug", "nodes": 2, "gpus": 4, "gpus_per_node": 2},
     {"account": "physics", "qos": "debug", "min_nodes": 2, "tres_per_node": "gres:gpu:2", "time_limit": 30},
     "HPCAI-P006"),
    ("default qos cap", {"nodes": 3, "gpus": 12, "gpus_per_node": 4},
     {"account": "physics", "min_nodes": 3, "tres_per_node": "gres:gpu:4", "time_limit": 30}, "HPCAI-P006"),
    ("cpus per gpu", {"cpus": 4, "cpus_per_node": 4},
     {"account": "physics", "tres_per_node": "gres:gpu:h100:1", "cpus_per_task": 4, "min_cpus": 4, "time_limit": 30},
     "HPCAI-P007"),
    ("cpus per gpu through --gpus and -n", {"gpus": 2, "gpus_per_node": 2, "cpus": 6, "cpus_per_node": 6},
     {"account": "physics", "tres_per_job": "gres:gpu:2", "num_tasks": 6, "time_limit": 30}, "HPCAI-P007"),
    ("mem per gpu", {"mem_per_node_mb": 1500},
     {"account": "physics", "tres_per_node": "gres:gpu:1", "min_mem_per_node": 1500, "time_limit": 30}, "HPCAI-P008"),
    ("exempt root", {"user": "root", "account": None}, {"tres_per_node": "gres:gpu:9", "uid": 0}, None),
    # -- what the issue found misread: each of these passed before (or gave another code) --
    ("a node range counts at its top", {"nodes": 64, "gpus": 64},
     {"account": "physics", "min_nodes": 1, "max_nodes": 64, "tres_per_node": "gres:gpu:1", "time_limit": 30},
     "HPCAI-P004"),
    ("a node range within the partition, over the qos cap", {"qos": "debug", "nodes": 2, "gpus": 4, "gpus_per_node": 2},
     {"account": "physics", "qos": "debug", "min_nodes": 1, "max_nodes": 2, "tres_per_node": "gres:gpu:h100:2",
      "time_limit": 30}, "HPCAI-P006"),
    ("--mem=0 is all of the node's memory", {"mem_per_node_mb": 0},
     {"account": "physics", "tres_per_node": "gres:gpu:1", "min_mem_per_node": 0, "time_limit": 30}, "HPCAI-P008"),
    ("--mem=0 with all of the node's GPUs", {"gpus": 4, "gpus_per_node": 4, "mem_per_node_mb": 0},
     {"account": "physics", "tres_per_node": "gres:gpu:4", "min_mem_per_node": 0, "time_limit": 30}, None),
    ("--gpus-per-socket counts", {"qos": "debug", "gpus": 4, "gpus_per_node": 4},
     {"account": "physics", "qos": "debug", "tres_per_socket": "gres:gpu:2", "sockets_per_node": 2,
      "time_limit": 30}, "HPCAI-P006"),
    ("--gpus-per-socket on a cpu partition", {"partition": "cpu"},
     {"account": "physics", "partition": "cpu", "tres_per_socket": "gres:gpu:1", "time_limit": 30}, "HPCAI-P002"),
    ("--gpus-per-socket alone is a gpu job", {},
     {"account": "physics", "tres_per_socket": "gres:gpu:1", "time_limit": 30}, None),
    ("--gpus-per-task counts per task", {"qos": "debug", "gpus": 3, "gpus_per_node": 3, "cpus": 3, "cpus_per_node": 3},
     {"account": "physics", "qos": "debug", "tres_per_task": "gres:gpu:1", "num_tasks": 3, "time_limit": 30},
     "HPCAI-P006"),
    ("--gres with a type, slurm 23 spelling", {"qos": "debug", "nodes": 2, "gpus": 4, "gpus_per_node": 2},
     {"account": "physics", "qos": "debug", "min_nodes": 2, "tres_per_node": "gres/gpu:h100:2", "time_limit": 30},
     "HPCAI-P006"),
    ("--gres with a type on a cpu partition", {"partition": "cpu", "gpu_type": "h100"},
     {"account": "physics", "partition": "cpu", "tres_per_node": "gres:gpu:h100:1", "time_limit": 30}, "HPCAI-P002"),
    ("--gpus does not hide --gpus-per-node", {"qos": "debug", "gpus": 3, "gpus_per_node": 3},
     {"account": "physics", "qos": "debug", "tres_per_job": "gres:gpu:1", "tres_per_node": "gres:gpu:3",
      "time_limit": 30}, "HPCAI-P006"),
    ("--exclusive holds every gpu of the node", {"qos": "debug", "exclusive": True},
     {"account": "physics", "qos": "debug", "tres_per_node": "gres:gpu:1", "shared": 0, "time_limit": 30},
     "HPCAI-P006"),
    ("--exclusive on three nodes", {"nodes": 3, "gpus": 3, "exclusive": True},
     {"account": "physics", "min_nodes": 3, "tres_per_node": "gres:gpu:1", "shared": 0, "time_limit": 30},
     "HPCAI-P006"),
    ("--exclusive alone is no gpu job", {"gpus": 0, "gpus_per_node": 0, "exclusive": True},
     {"account": "physics", "shared": 0, "time_limit": 30}, "HPCAI-P003"),
    ("--exclusive=user is not whole nodes", {"qos": "debug"},
     {"account": "physics", "qos": "debug", "tres_per_node": "gres:gpu:1", "shared": 2, "time_limit": 30}, None),
    ("--exclusive on the cpu partition", {"partition": "cpu", "gpus": 0, "gpus_per_node": 0, "exclusive": True},
     {"account": "physics", "partition": "cpu", "shared": 0, "time_limit": 30}, None),
    ("every partition of -p a,b must pass", {"partition": "gpu,cpu"},
     {"account": "physics", "partition": "gpu,cpu", "tres_per_node": "gres:gpu:1", "time_limit": 30}, "HPCAI-P002"),
]

# The fields a Lua job_desc has when sbatch leaves them unset (the harness below starts from these too).
NO_VAL, NO_VAL16 = 4294967294, 65534
DESC_DEFAULTS: dict[str, Any] = {"time_limit": NO_VAL, "min_nodes": NO_VAL, "num_tasks": NO_VAL,
                                 "ntasks_per_node": NO_VAL16, "cpus_per_task": NO_VAL16, "min_cpus": 1}


@pytest.mark.parametrize(("name", "py", "lua", "code"), CASES, ids=[c[0] for c in CASES])
def test_rules_in_python(name: str, py: dict[str, Any], lua: dict[str, Any], code: str | None) -> None:
    verdict = first_broken_rule(policy_site(), req(**py))
    assert (verdict.code if verdict else None) == code, verdict
    if verdict:
        text = str(verdict)
        assert text.startswith(f"{code}: Expected ") and "Got" in text and "\n" not in text


def test_no_policy_table_means_no_client_rules() -> None:
    assert first_broken_rule(parse_site(site_doc()), req(account=None, partition="cpu", gpus=4)) is None


def test_enforce_raises_a_typed_error_with_the_code() -> None:
    with pytest.raises(PolicyError) as info:
        enforce(policy_site(), req(account=None))
    assert info.value.code == "HPCAI-P001" and info.value.exit_code == 2


def test_impossible_requests_carry_the_code_in_hpcai_too() -> None:
    site = policy_site()
    with pytest.raises(Exception, match=r"^HPCAI-P004: Expected at most 4 GPUs per node"):
        parse_resources(site, gpus_per_node=8)
    with pytest.raises(Exception, match=r"^HPCAI-P002: Expected no GPUs on CPU-only partition cpu"):
        parse_resources(site, partition="cpu", gpus_per_node=1)


@pytest.mark.parametrize(("policy", "needle"), [
    ({"require_acount": True}, "unknown ['require_acount']"),
    ({"require_time": ["nope"]}, "name partitions of the profile"),
    ({"require_time": "yes"}, "a list of names"),
    ({"qos": {"normal": {"max_gpus_per_job": 0}}}, "whole number >= 1"),
    ({"gpu_types": {"a100": {"max_cpus_per_gpu": 2}}}, "[gpu_types.X]"),
    ({"require_account": "true"}, "true or false"),
])
def test_bad_policy_tables_are_refused_in_one_line(policy: dict[str, Any], needle: str) -> None:
    doc = site_doc()
    doc["policy"] = policy
    with pytest.raises(SiteProfileError) as info:
        parse_site(doc, source="x.toml")
    message = str(info.value)
    assert needle in message and message.startswith("Expected") and "\n" not in message and "x.toml" in message


def test_catalogue_is_in_sync_with_the_rules() -> None:
    assert (REPO / "slurm/policy/README.md").read_text() == catalogue_markdown()
    assert [r.code for r in RULES] == [f"HPCAI-P00{i}" for i in range(1, 9)]


def test_lua_strings_survive_any_text() -> None:
    assert lua_string('a"b\\c\nd é') == '"a\\"b\\\\c\\10d \\195\\169"'


# -- the same rules in Lua ---------------------------------------------------------------------------------

LUA = shutil.which("lua5.1")
HARNESS = r"""
local NO_VAL, NO_VAL16 = 4294967294, 65534
slurm = { SUCCESS = 0, ERROR = -1, log_user = function(...) end, log_info = function(...) end,
          log_error = function(...) end }
local policy = arg[1]
dofile(policy)
local defaults = { time_limit = NO_VAL, min_nodes = NO_VAL, num_tasks = NO_VAL, ntasks_per_node = NO_VAL16,
                   cpus_per_task = NO_VAL16, min_cpus = 1 }
for line in io.lines(arg[2]) do
  local case = loadstring("return " .. line)()
  local desc = {}
  for k, v in pairs(defaults) do desc[k] = v end
  for k, v in pairs(case) do desc[k] = v end
  local verdict = hpcai_policy_verdict(desc, case.uid or 1000)
  print(verdict or "ACCEPT")
end
"""


def _lua(value: Any) -> str:
    """A Lua literal for test data (dicts become tables; None keys are left out)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_lua(v)}" for k, v in value.items() if v is not None) + "}"
    return json.dumps(value)


def _lua_table(d: dict[str, Any]) -> str:
    return _lua(d)


def _run_lua(tmp_path: Path, site: SiteProfile, harness: str, cases: list[str]) -> list[str]:
    script = tmp_path / "job_submit.lua"
    script.write_text(render_job_submit_lua(site, {"root": 0}))
    assert subprocess.run(["luac5.1", "-p", str(script)], check=False).returncode == 0
    (tmp_path / "harness.lua").write_text(harness)
    (tmp_path / "cases").write_text("\n".join(cases) + "\n")
    out = subprocess.run([str(LUA), str(tmp_path / "harness.lua"), str(script), str(tmp_path / "cases")],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(out) == len(cases), out
    return out


def _python_reads(site: SiteProfile, desc: dict[str, Any]) -> str:
    """The Python verdict for a job_desc as the harness hands it to the Lua (its unset fields included)."""
    user = "root" if desc.get("uid") == 0 else "alice"
    verdict = first_broken_rule(site, request_from_job_desc({**DESC_DEFAULTS, **desc}, user))
    return str(verdict) if verdict else "ACCEPT"


@pytest.mark.parametrize(("name", "py", "lua", "code"), CASES, ids=[c[0] for c in CASES])
def test_python_reads_a_job_desc_as_the_client_request(name: str, py: dict[str, Any], lua: dict[str, Any],
                                                       code: str | None) -> None:
    """request_from_job_desc (job_submit.lua's reading of Slurm's fields) and the request hpcai builds for
    the same job agree, word for word."""
    client = first_broken_rule(policy_site(), req(**py))
    assert _python_reads(policy_site(), lua) == (str(client) if client else "ACCEPT")


@pytest.mark.skipif(LUA is None, reason="lua5.1 not installed (scripts/bootstrap.sh installs it)")
def test_job_submit_lua_gives_the_same_verdicts_and_words(tmp_path: Path) -> None:
    site = policy_site()
    out = _run_lua(tmp_path, site, HARNESS, [_lua_table(c[2]) for c in CASES])
    for (name, py, lua, code), line in zip(CASES, out, strict=True):
        assert line == _python_reads(site, lua), (name, line)
        if code is None:
            assert line == "ACCEPT", (name, line)
            continue
        assert line.startswith(f"{code}: "), (name, line)
        verdict = first_broken_rule(site, req(**py))
        assert verdict is not None and str(verdict) == line, (name, line, verdict)


# --exclusive and --mem=0 against caps stricter than a whole node: (gpu_types caps, job_desc, code)
STRICT: list[tuple[dict[str, Any], dict[str, Any], str | None]] = [
    ({"max_cpus_per_gpu": 1, "max_mem_per_gpu_mb": 1000},
     {"account": "physics", "tres_per_node": "gres:gpu:4", "shared": 0, "time_limit": 30}, "HPCAI-P007"),
    ({"max_cpus_per_gpu": 1, "max_mem_per_gpu_mb": 1000},
     {"account": "physics", "tres_per_node": "gres:gpu:4", "time_limit": 30}, None),
    ({"max_cpus_per_gpu": 2, "max_mem_per_gpu_mb": 500},
     {"account": "physics", "tres_per_node": "gres:gpu:4", "shared": 0, "time_limit": 30}, "HPCAI-P008"),
    ({"max_cpus_per_gpu": 2, "max_mem_per_gpu_mb": 500},
     {"account": "physics", "tres_per_node": "gres:gpu:4", "min_mem_per_node": 1000, "shared": 0,
      "time_limit": 30}, "HPCAI-P008"),
    ({"max_cpus_per_gpu": 2, "max_mem_per_gpu_mb": 500},
     {"account": "physics", "tres_per_node": "gres:gpu:4", "min_mem_per_node": 2000, "time_limit": 30}, None),
    ({"max_cpus_per_gpu": 2, "max_mem_per_gpu_mb": 500},
     {"account": "physics", "tres_per_node": "gres:gpu:4", "min_mem_per_node": 0, "time_limit": 30}, "HPCAI-P008"),
]


@pytest.mark.parametrize(("caps", "desc", "code"), STRICT)
def test_exclusive_and_mem_0_hold_the_whole_node(tmp_path: Path, caps: dict[str, Any], desc: dict[str, Any],
                                                 code: str | None) -> None:
    site = policy_site(gpu_types={"h100": caps})
    python = _python_reads(site, desc)
    assert python.startswith(f"{code}: ") if code else python == "ACCEPT", python
    if LUA is not None:
        assert _run_lua(tmp_path, site, HARNESS, [_lua(desc)]) == [python]


@pytest.mark.parametrize(("gpus", "code"), [(1, "HPCAI-P008"), (4, None)])
def test_hpcai_counts_its_own_mem_0_as_the_whole_node(gpus: int, code: str | None) -> None:
    """hpcai train asks --mem=0 when a job takes whole nodes: the client-side check reads it as the node's
    memory, as slurmctld does."""
    site = policy_site()
    resources = dataclasses.replace(parse_resources(site, gpus_per_node=gpus, cpus_per_task=1, account="physics"),
                                    mem="0")
    verdict = first_broken_rule(site, request_from_resources(resources, "alice", time_given=True))
    assert (verdict.code if verdict else None) == code, verdict


def test_mem_0_is_not_checked_where_the_profile_gives_no_memory() -> None:
    doc = site_doc()
    doc["policy"] = dict(POLICY)
    doc["partitions"]["gpu"]["mem_per_node_mb"] = 0
    site = parse_site(doc, source="test.toml")
    assert first_broken_rule(site, req(mem_per_node_mb=0)) is None
    assert first_broken_rule(site, req(mem_per_node_mb=0, exclusive=True)) is None


# -- changes to a job (slurm_job_modify) ----------------------------------------------------------------

# A held, compliant job as slurmctld records it (Slurm 22.05's job_rec in Lua: no task, socket or
# exclusivity fields; 0 MB per node when the job gave no --mem; its requested TRES as slurmctld counted them).
RECORD: dict[str, Any] = {
    "job_id": 42, "account": "physics", "partition": "gpu", "qos": "normal", "time_limit": 30, "min_nodes": 1,
    "max_nodes": 1, "min_cpus": 1, "pn_min_cpus": 1, "tres_per_node": "gres:gpu:h100:1", "min_mem_per_node": 0,
    "tres_fmt_req_str": "cpu=1,mem=4000M,node=1,billing=1,gres/gpu=1",
}
# What scontrol leaves unset in an update request.
CHANGE_DEFAULTS: dict[str, Any] = {
    "time_limit": NO_VAL, "min_nodes": NO_VAL, "max_nodes": NO_VAL, "num_tasks": NO_VAL, "min_cpus": NO_VAL,
    "ntasks_per_node": NO_VAL16, "cpus_per_task": NO_VAL16, "pn_min_cpus": NO_VAL16, "sockets_per_node": NO_VAL16,
    "shared": NO_VAL16,
}
DEBUG_2 = {**RECORD, "qos": "debug", "tres_per_node": "gres:gpu:h100:2",
           "tres_fmt_req_str": "cpu=1,mem=4000M,node=1,billing=1,gres/gpu=2"}
# (name, the change, the job record, uid of who changes it, code)
CHANGES: list[tuple[str, dict[str, Any], dict[str, Any], int, str | None]] = [
    ("onto the cpu partition with gpus", {"partition": "cpu"}, RECORD, 1000, "HPCAI-P002"),
    ("into a qos with a lower cap", {"qos": "debug"},
     {**RECORD, "tres_per_node": "gres:gpu:h100:4", "tres_fmt_req_str": "cpu=1,node=1,gres/gpu=4"}, 1000,
     "HPCAI-P006"),
    ("more nodes past the qos cap", {"min_nodes": 2}, DEBUG_2, 1000, "HPCAI-P006"),
    ("a node range past the qos cap", {"min_nodes": 1, "max_nodes": 2}, DEBUG_2, 1000, "HPCAI-P006"),
    ("more nodes than the partition has", {"min_nodes": 8}, RECORD, 1000, "HPCAI-P004"),
    ("more gpus per node past the qos cap", {"tres_per_node": "gres:gpu:h100:4"}, DEBUG_2, 1000, "HPCAI-P006"),
    ("gpus per socket added", {"tres_per_socket": "gres:gpu:1", "sockets_per_node": 1}, DEBUG_2, 1000,
     "HPCAI-P006"),
    ("gpus per task added", {"tres_per_task": "gres:gpu:1", "num_tasks": 1}, DEBUG_2, 1000, "HPCAI-P006"),
    ("all of the node's memory", {"min_mem_per_node": 0}, RECORD, 1000, "HPCAI-P008"),
    ("oversubscribe=no is whole nodes", {"shared": 0}, DEBUG_2, 1000, "HPCAI-P006"),
    ("more cpus per gpu", {"cpus_per_task": 4}, RECORD, 1000, "HPCAI-P007"),
    ("gpus the record cannot rebuild still count", {"qos": "debug"},
     {**RECORD, "tres_per_node": None, "tres_per_task": "gres:gpu:1", "min_cpus": 4,
      "tres_fmt_req_str": "cpu=4,node=1,gres/gpu=4"}, 1000, "HPCAI-P006"),
    ("a shorter time limit", {"time_limit": 20}, RECORD, 1000, None),
    ("a recorded 0 MB is not --mem=0", {"min_nodes": 2}, RECORD, 1000, None),
    ("a compliant memory change", {"min_mem_per_node": 1000}, RECORD, 1000, None),
    ("the gpus cleared on the way to the cpu partition", {"partition": "cpu", "tres_per_node": ""}, RECORD, 1000,
     None),
    ("a change the rules do not read", {"name": "renamed"}, {**RECORD, "partition": "cpu"}, 1000, None),
    ("root changes anything", {"partition": "cpu"}, RECORD, 0, None),
]
CHANGE_HARNESS = r"""
local said
slurm = { SUCCESS = 0, ERROR = -1, ESLURM_ACCOUNTING_POLICY = 2050, log_info = function(...) end,
          log_user = function(fmt, msg) said = msg end,
          log_error = function(fmt, ...) print("LUA ERROR " .. string.format(fmt, ...)) end }
dofile(arg[1])
for line in io.lines(arg[2]) do
  local case = loadstring("return " .. line)()
  said = nil
  local rc = slurm_job_modify(case.change, case.record, {}, case.uid)
  if rc == slurm.SUCCESS then print("ACCEPT") else print(rc .. " " .. tostring(said)) end
end
"""


def _python_change(site: SiteProfile, change: dict[str, Any], record: dict[str, Any], uid: int) -> str:
    verdict = first_broken_change(site, {**CHANGE_DEFAULTS, **change}, record, "root" if uid == 0 else "alice")
    return f"2050 {verdict}" if verdict else "ACCEPT"


@pytest.mark.parametrize(("name", "change", "record", "uid", "code"), CHANGES, ids=[c[0] for c in CHANGES])
def test_changes_are_checked_as_the_job_after_them(name: str, change: dict[str, Any], record: dict[str, Any],
                                                   uid: int, code: str | None) -> None:
    verdict = _python_change(policy_site(), change, record, uid)
    assert verdict.startswith(f"2050 {code}: Expected ") if code else verdict == "ACCEPT", verdict


@pytest.mark.skipif(LUA is None, reason="lua5.1 not installed")
def test_slurm_job_modify_gives_the_same_verdicts_and_words(tmp_path: Path) -> None:
    site = policy_site()
    cases = [_lua({"change": {**CHANGE_DEFAULTS, **change}, "record": record, "uid": uid})
             for _, change, record, uid, _ in CHANGES]
    out = _run_lua(tmp_path, site, CHANGE_HARNESS, cases)
    for (name, change, record, uid, _), line in zip(CHANGES, out, strict=True):
        assert line == _python_change(site, change, record, uid), (name, line)


@pytest.mark.skipif(LUA is None, reason="lua5.1 not installed")
def test_a_refused_change_is_logged_on_one_line_with_its_job(tmp_path: Path) -> None:
    script = tmp_path / "job_submit.lua"
    script.write_text(render_job_submit_lua(policy_site(), {"root": 0}))
    probe = tmp_path / "probe.lua"
    probe.write_text("slurm = {SUCCESS = 0, ERROR = -1, log_error = function() end,\n"
                     "  log_user = function(fmt, ...) io.write('user:', string.format(fmt, ...), '|') end,\n"
                     "  log_info = function(fmt, ...) io.write(string.format(fmt, ...), '|') end}\n"
                     f"dofile({json.dumps(str(script))})\n"
                     "print(slurm_job_modify({partition = 'cpu'}, " + _lua(RECORD) + ", {}, 1000))\n")
    out = subprocess.run([str(LUA), str(probe)], capture_output=True, text=True, check=True).stdout
    logged, user, rc = out.rstrip("\n").split("|")
    assert logged.startswith("hpc-aidc policy: refused a change to job 42 of uid 1000: HPCAI-P002: Expected ")
    assert user == "user:" + logged.split(": ", 2)[2] and rc == "-1", out


@pytest.mark.skipif(LUA is None, reason="lua5.1 not installed")
def test_a_bug_in_the_policy_never_blocks_submissions(tmp_path: Path) -> None:
    script = tmp_path / "job_submit.lua"
    script.write_text(render_job_submit_lua(policy_site(), {"root": 0}))
    probe = tmp_path / "probe.lua"
    probe.write_text("slurm = {SUCCESS = 0, ERROR = -1, log_user = function() end, log_info = function() end,\n"
                     "  log_error = function(fmt, msg) print('logged: ' .. msg) end}\n"
                     f"dofile({json.dumps(str(script))})\n"
                     "print(slurm_job_submit(setmetatable({}, {__index = function() error('boom') end}), {}, 1000))\n")
    out = subprocess.run([str(LUA), str(probe)], capture_output=True, text=True, check=True).stdout
    assert "logged:" in out and out.strip().endswith("0")


@pytest.mark.skipif(LUA is None, reason="lua5.1 not installed")
def test_a_bug_in_the_policy_never_blocks_changes(tmp_path: Path) -> None:
    script = tmp_path / "job_submit.lua"
    script.write_text(render_job_submit_lua(policy_site(), {"root": 0}))
    probe = tmp_path / "probe.lua"
    probe.write_text("slurm = {SUCCESS = 0, ERROR = -1, log_user = function() end, log_info = function() end,\n"
                     "  log_error = function(fmt, ...) print('logged: ' .. string.format(fmt, ...)) end}\n"
                     f"dofile({json.dumps(str(script))})\n"
                     "local broken = setmetatable({}, {__index = function() error('boom') end})\n"
                     "print(slurm_job_modify({partition = 'cpu'}, broken, {}, 1000))\n")
    out = subprocess.run([str(LUA), str(probe)], capture_output=True, text=True, check=True).stdout
    assert "logged: hpc-aidc policy: change check failed, accepted:" in out and out.strip().endswith("0"), out


def test_admin_policy_without_a_policy_table(hpcai: RunHpcai, tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text('[cluster]\njob_root = "/j"\nenergy_store = "/e"\nscratch = "/s"\n'
                    "[partitions.gpu]\nnodes = 1\ngpus_per_node = 1\ncpus_per_node = 2\n")
    assert_clean_error(hpcai("--site", str(site), "admin", "policy"), "Expected a [policy] table")


def test_admin_policy_renders_the_dev_profile(hpcai: RunHpcai, tmp_path: Path) -> None:
    text = (REPO / "slurm/devcluster/site.toml.in").read_text()
    site = tmp_path / "site.toml"
    site.write_text(text.replace("@JOBS@", "/j").replace("@STATE@", "/s").replace("@CLUSTER@", "c"))
    out = tmp_path / "job_submit.lua"
    proc = hpcai("--site", str(site), "admin", "policy", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "[0] = true" in out.read_text() and "HPCAI-P005" in out.read_text()
    again = hpcai("--site", str(site), "admin", "policy", "--out", str(out))
    assert "unchanged" in again.stderr


@pytest.mark.skipif(LUA is None, reason="lua5.1 not installed")
def test_nothing_the_policy_logs_starts_a_line_of_its_own(tmp_path: Path) -> None:
    """slurmctld's log is read for `started` and `Invalid ...` lines (scheduler/daemon_log.py): text that
    reaches a policy log line must not put a line break there."""
    script = tmp_path / "job_submit.lua"
    script.write_text(render_job_submit_lua(policy_site(), {"root": 0}))
    probe = tmp_path / "probe.lua"
    forged = "x\\n[2026-01-01T00:00:00.000] slurmctld version 9 started on cluster c"
    probe.write_text("slurm = {SUCCESS = 0, ERROR = -1, log_user = function() end,\n"
                     "  log_info = function(fmt, ...) io.write(string.format(fmt, ...), '|') end,\n"
                     "  log_error = function(fmt, ...) io.write(string.format(fmt, ...), '|') end}\n"
                     f"dofile({json.dumps(str(script))})\n"
                     "slurm_job_submit(setmetatable({}, {__index = function() error('" + forged + "') end}),"
                     " {}, 1000)\n")
    out = subprocess.run([str(LUA), str(probe)], capture_output=True, text=True, check=True).stdout
    assert "check failed" in out and "\n" not in out and "?[2026-01-01" in out
