"""The site policy: [policy] parsing, the rules in Python, the same rules in the rendered job_submit.lua
(run in Lua 5.1, the version Debian's job_submit_lua.so links, with a stub `slurm` table), and the
catalogue users read. The real slurmctld is in test_policy_cluster.py."""

from __future__ import annotations

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
from hpc_aidc.site import SiteProfile, parse_site
from hpc_aidc.spec.policy import RULES, JobRequest, catalogue_markdown, check_request, enforce
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


def req(**kw: Any) -> JobRequest:
    base: dict[str, Any] = {"user": "alice", "account": "physics", "partition": "gpu", "qos": None,
                            "time_given": True, "nodes": 1, "gpus": 1, "gpus_per_node": 1, "gpu_type": None,
                            "cpus": 1, "cpus_per_node": 1, "mem_per_node_mb": None}
    return JobRequest(**{**base, **kw})


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
]


@pytest.mark.parametrize(("name", "py", "lua", "code"), CASES, ids=[c[0] for c in CASES])
def test_rules_in_python(name: str, py: dict[str, Any], lua: dict[str, Any], code: str | None) -> None:
    verdict = check_request(policy_site(), req(**py))
    assert (verdict.code if verdict else None) == code, verdict
    if verdict:
        text = str(verdict)
        assert text.startswith(f"{code}: Expected ") and "Got" in text and "\n" not in text


def test_no_policy_table_means_no_client_rules() -> None:
    assert check_request(parse_site(site_doc()), req(account=None, partition="cpu", gpus=4)) is None


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


def _lua_table(d: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in d.items()) + "}"


@pytest.mark.skipif(LUA is None, reason="lua5.1 not installed (scripts/bootstrap.sh installs it)")
def test_job_submit_lua_gives_the_same_verdicts_and_words(tmp_path: Path) -> None:
    site = policy_site()
    script = tmp_path / "job_submit.lua"
    script.write_text(render_job_submit_lua(site, {"root": 0}))
    assert subprocess.run(["luac5.1", "-p", str(script)], check=False).returncode == 0
    (tmp_path / "harness.lua").write_text(HARNESS)
    (tmp_path / "cases").write_text("\n".join(_lua_table(c[2]) for c in CASES) + "\n")
    out = subprocess.run([str(LUA), str(tmp_path / "harness.lua"), str(script), str(tmp_path / "cases")],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(out) == len(CASES)
    for (name, py, _, code), line in zip(CASES, out, strict=True):
        if code is None:
            assert line == "ACCEPT", (name, line)
            continue
        assert line.startswith(f"{code}: "), (name, line)
        verdict = check_request(site, req(**py))
        assert verdict is not None and str(verdict) == line, (name, line, verdict)


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
