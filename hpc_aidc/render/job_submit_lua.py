"""The site profile's [policy] -> job_submit.lua for slurmctld (pure).

The Lua code is fixed (job_submit.lua next to this module); only its SITE table is rendered: partitions,
caps, exempt uids, and the rules' codes and message templates from hpc_aidc.spec.policy, so slurmctld
and hpcai refuse the same requests with the same words."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from typing import cast

from hpc_aidc.errors import SiteProfileError
from hpc_aidc.site_profile import SiteProfile
from hpc_aidc.slurmtime import format_time_limit
from hpc_aidc.spec.policy import (
    RULES,
    cpu_partitions_text,
    gpu_partitions_text,
    max_time_text,
    qos_others_text,
)

MARKER = "--@SITE@"
LuaValue = str | int | bool | None | Mapping[str, "LuaValue"] | Mapping[int, "LuaValue"]


def lua_string(text: str) -> str:
    """A Lua 5.1 string literal for any text (decimal escapes for everything not plainly printable)."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in {'"', "\\"}:
            out.append("\\" + ch)
        elif 32 <= code < 127:
            out.append(ch)
        else:
            out.extend(f"\\{b}" for b in ch.encode())
    return '"' + "".join(out) + '"'


def lua_value(value: LuaValue, indent: str = "") -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return lua_string(value)
    inner = indent + "  "
    entries = cast("Mapping[str | int, LuaValue]", value)
    pairs = sorted(entries.items(), key=lambda kv: str(kv[0]))
    items = [f"{inner}[{lua_value(k)}] = {lua_value(v, inner)}," for k, v in pairs]
    return "{\n" + "\n".join(items) + f"\n{indent}}}" if items else "{}"


def site_table(site: SiteProfile, exempt_uids: Mapping[str, int]) -> dict[str, LuaValue]:
    """The data job_submit.lua decides with. `exempt_uids`: uid of each of policy.exempt_users (looked up
    by the caller on the controller: Lua in slurmctld sees only the submitter's uid)."""
    policy = site.policy
    if not policy.enabled:
        raise SiteProfileError(
            f"Expected a [policy] table in the site profile {site.source}. Got none. Add one (see "
            "templates/site.example.toml) to say what job_submit.lua should enforce.")
    missing = [u for u in policy.exempt_users if u not in exempt_uids]
    if missing:
        raise SiteProfileError(
            f"Expected every policy.exempt_users entry to be a user on this machine. Got unknown {missing} "
            f"instead. Render job_submit.lua on the controller, or fix {site.source}.")
    partitions: dict[str, LuaValue] = {
        p.name: {"nodes": p.nodes, "gpus_per_node": p.gpus_per_node, "gpu_type": p.gpu_type,
                 "cpus_per_node": p.cpus_per_node, "mem_per_node_mb": p.mem_per_node_mb,
                 "max_time": max_time_text(site, p.name),
                 "max_time_limit": format_time_limit(p.max_time_min) if p.max_time_min else None}
        for p in site.partitions.values()
    }
    gpu_caps: dict[str, LuaValue] = {
        name: {"max_cpus_per_gpu": c.max_cpus_per_gpu, "max_mem_per_gpu_mb": c.max_mem_per_gpu_mb}
        for name, c in policy.gpu_caps.items()
    }
    rules: dict[str, LuaValue] = {r.name: {"code": r.code, "template": r.template} for r in RULES}
    uids: dict[int, LuaValue] = {exempt_uids[u]: True for u in policy.exempt_users}
    return {
        "source": site.source,
        "default_partition": site.default_partition,
        "default_qos": site.default_qos,
        "exempt_uids": uids,
        "require_account": policy.require_account,
        "require_time_all": "*" in policy.require_time,
        "require_time": {p: True for p in policy.require_time if p != "*"},
        "gpu_only": {p: True for p in policy.gpu_only_partitions},
        "gpu_partitions": gpu_partitions_text(site),
        "cpu_partitions": cpu_partitions_text(site),
        "partitions": partitions,
        "qos_max_gpus": dict(policy.qos_max_gpus),
        "qos_others": {q: qos_others_text(site, q) for q in policy.qos_max_gpus},
        "gpu_caps": gpu_caps,
        "rules": rules,
    }


def lua_code() -> str:
    return resources.files("hpc_aidc.render").joinpath("job_submit.lua").read_text()


def render_job_submit_lua(site: SiteProfile, exempt_uids: Mapping[str, int]) -> str:
    code = lua_code()
    assert MARKER in code
    block = (f"-- Site profile: {site.source.replace(chr(10), ' ')}\n"
             f"local SITE = {lua_value(site_table(site, exempt_uids))}")
    return code.replace(MARKER, block, 1)
