"""A job's environment record (environment.json): redaction of secrets and the diff of two records (pure).

The record is collected by hpc_aidc.node.environment on the job's first node; everything here works on
plain mappings, so it is tested without a job, a GPU or a git checkout."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SCHEMA = "hpcai-environment-v1"
REDACTED = "<redacted>"
# Variable (and command-line flag) names whose values are secrets, whatever the value looks like.
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|KEY|CREDENTIAL|AUTH|COOKIE|PRIVATE|"
                         r"SIGNATURE|SESSION|CERT", re.IGNORECASE)
# Credentials inside a value: user:password@ in a URL, and the prefixes of common API tokens.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@")
_TOKEN_VALUE = re.compile(r"\b(?:ghp_|gho_|ghs_|github_pat_|glpat-|hf_|xox[abprs]-|sk-|AKIA|ASIA)"
                          r"[A-Za-z0-9_\-]{8,}")
# What `hpcai env diff` compares: everything but the variables (job ids, paths) and the capture's own
# time and host, which differ between any two jobs.
NOT_COMPARED = frozenset({"schema", "job_id", "captured_at", "host", "environment"})


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def redact_value(value: str) -> str:
    """`value` with credentials in URLs and token-shaped words replaced."""
    value = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", value)
    return _TOKEN_VALUE.sub(REDACTED, value)


def redact_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables, sorted, with secret-named ones and credential-looking values redacted."""
    return {name: REDACTED if is_secret_name(name) else redact_value(value)
            for name, value in sorted(environ.items())}


def redact_argv(argv: Sequence[str]) -> list[str]:
    """A command line with the values of secret-named flags (`--token X`, `--api-key=X`) redacted."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        flag, eq, _ = arg.partition("=")
        if flag.startswith("-") and is_secret_name(flag.lstrip("-")):
            if eq:
                out.append(f"{flag}={REDACTED}")
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(redact_value(arg))
    return out


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings and lists of mappings -> {"a.b.0.c": value}; a list of plain values (a command line,
    the nodes) stays one value, so it compares as a whole."""
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key in sorted(value, key=str):
            out.update(flatten(value[key], f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list | tuple) and any(isinstance(item, Mapping | list | tuple) for item in value):
        out = {}
        for i, item in enumerate(value):
            out.update(flatten(item, f"{prefix}.{i}" if prefix else str(i)))
        return out
    return {prefix: value}


def diff_records(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What differs between two environment records, as [{"key", "a", "b"}] sorted by key ("a"/"b"
    None when the key is absent on that side). Variables are left out (see NOT_COMPARED)."""
    fa = flatten({k: v for k, v in a.items() if k not in NOT_COMPARED})
    fb = flatten({k: v for k, v in b.items() if k not in NOT_COMPARED})
    return [{"key": key, "a": fa.get(key), "b": fb.get(key)}
            for key in sorted(set(fa) | set(fb)) if fa.get(key) != fb.get(key)]


def diff_lines(diff: Iterable[Mapping[str, Any]], job_a: str, job_b: str) -> list[str]:
    rows = list(diff)
    if not rows:
        return [f"No differences between jobs {job_a} and {job_b} (variables not compared)."]
    width = max(len(r["key"]) for r in rows)
    lines = [f"{'':{width}}  {job_a} -> {job_b}"]
    lines += [f"{r['key']:{width}}  {_shown(r['a'])} -> {_shown(r['b'])}" for r in rows]
    return lines


def summary_lines(record: Mapping[str, Any]) -> list[str]:
    """The record for `hpcai status JOB --env`: the facts first, then the variables."""
    runtime = record.get("runtime", {})
    git = record.get("git") or {}
    lines = [
        f"{'captured:':15s}{record.get('captured_at')} on {record.get('host')}",
        f"{'python:':15s}{record.get('python', {}).get('version')} ({record.get('python', {}).get('executable')})",
        f"{'driver:':15s}{_with_reason(runtime, 'driver')}",
        f"{'cuda:':15s}{_with_reason(runtime, 'cuda')}",
        f"{'nccl:':15s}{_with_reason(runtime, 'nccl')}",
        f"{'git:':15s}{_git_text(git)}",
        f"{'nodes:':15s}{','.join(record.get('nodes', [])) or '-'}",
        f"{'command:':15s}{_shown(record.get('submit', {}).get('command'))}",
    ]
    for gpu in record.get("gpus", []):
        lines.append(f"{'gpu:':15s}{gpu.get('index')}: {gpu.get('name')} {gpu.get('uuid')}")
    for name, version in sorted(record.get("packages", {}).items()):
        lines.append(f"{'package:':15s}{name} {_shown(version)}")
    for name, value in sorted(record.get("environment", {}).items()):
        lines.append(f"{'env:':15s}{name}={value}")
    return lines


def _with_reason(section: Mapping[str, Any], key: str) -> str:
    value = section.get(key)
    return str(value) if value is not None else f"- ({section.get(key + '_reason') or 'unknown'})"


def _git_text(git: Mapping[str, Any]) -> str:
    if not git.get("commit"):
        return f"- ({git.get('reason') or 'not recorded'})"
    return f"{git['commit']}{' (dirty)' if git.get('dirty') else ''} in {git.get('root')}"


def _shown(value: Any) -> str:
    if value is None:
        return "(absent)"
    if isinstance(value, list | tuple):
        return shlex.join(str(v) for v in value)
    return str(value)
