"""A job's environment record (environment.json): which variables it keeps, redaction of secrets, and the
diff of two records (pure).

The record is collected by hpc_aidc.node.environment on the job's first node; everything here works on
plain mappings, so it is tested without a job, a GPU or a git checkout.

Variables are kept by allow-list, not by guessing secret names (a deny-list always misses one: MYSQL_PWD,
DB_PASS, a connection string under any name): the ones that change how a job runs keep their value
(CAPTURED_PREFIXES, CAPTURED_NAMES); every other variable is recorded by name only, its value
`<redacted>`, so `hpcai status --env` still shows that it was set. Kept values are still scrubbed of what
looks like a secret (credentials in URLs, `key=`/`password=` pairs, Authorization headers, token-shaped
words, `-pPASSWORD`), and so are the recorded command lines."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SCHEMA = "hpcai-environment-v1"
REDACTED = "<redacted>"
# Kept with their values: Slurm's view of the job; GPU, communication (NCCL, MPI, UCX, libfabric) and
# threading/BLAS libraries; PyTorch, DeepSpeed, Triton and submitit; the Python environment; hpcai's own.
CAPTURED_PREFIXES = (
    "SLURM_", "CUDA_", "CUDNN_", "CUBLAS_", "NVIDIA_", "NCCL_", "GLOO_", "UCX_", "FI_", "I_MPI_", "OMPI_",
    "PMIX_", "PMI_", "MPICH_", "OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_", "BLIS_", "TORCH_", "PYTORCH_",
    "TORCHINDUCTOR_", "TORCHELASTIC_", "DS_", "TRITON_", "XLA_", "SUBMITIT_", "CONDA_", "HPCAI_",
)
CAPTURED_NAMES = frozenset({
    "PATH", "LD_LIBRARY_PATH", "LD_PRELOAD", "LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME", "PYTHONHASHSEED",
    "PYTHONNOUSERSITE", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONWARNINGS", "VIRTUAL_ENV",
    "MODULEPATH", "LOADEDMODULES", "LANG", "LC_ALL", "TZ", "MALLOC_ARENA_MAX",
    "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
    "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL",
    "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_CACHE", "TRANSFORMERS_OFFLINE",
})
# Variable (and command-line flag) names whose values are secrets, whatever the value looks like: even an
# allow-listed variable (HPCAI_GRACE_KEY) or a flag (--db-pass X, --sentry-dsn X) keeps its name only.
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|KEY|CREDENTIAL|AUTH|COOKIE|PRIVATE|"
                         r"SIGNATURE|SESSION|CERT|DSN|BEARER|(?:^|[_-])(?:PASS|PWD)(?:$|[_-])", re.IGNORECASE)
# Secrets inside a value, each replaced by its own rule, in redact_value's order. No pattern matches a value
# that starts at "<redacted>", so a later rule never eats what an earlier one left, and redacting twice
# changes nothing (the login side redacts the command line, the node side again).
_NOT_DONE = rf"(?!{re.escape(REDACTED)})"
# userinfo of a URL: user:password@ keeps the user; a bare user@ is a key (Sentry DSN https://KEY@host/1).
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s?#]+)@")
# An Authorization header's credentials (curl -H 'Authorization: Bearer X', Basic, token), and a bare
# "Bearer X" anywhere.
_AUTH_SCHEME = r"(?:bearer|basic|token|digest|negotiate|apikey)\s"
_AUTH_HEADER = re.compile(r"(?i)(?P<head>\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?(?:" + _AUTH_SCHEME +
                          r"\s*)?)" + _NOT_DONE + rf"(?!{_AUTH_SCHEME})" + r"[^\s'\",;]+")
_BEARER = re.compile(r"(?i)(?P<head>\bbearer\s+)" + _NOT_DONE + r"[A-Za-z0-9._~+/=-]{6,}")
# key=value (or key: value) whose key ends like a secret: AccountKey= and SharedAccessSignature= in Azure
# connection strings, sig= in SAS URLs, password=/pwd= in DSNs, api_key=, X-Api-Key: ...
_SECRET_PAIR = re.compile(r"(?i)(?P<head>\b[\w.-]*(?:key|pass|passwd|password|pwd|secret|token|signature|sig|"
                          r"credentials?|auth|dsn)[\"']?\s*(?:=|:(?=[\s\"']))\s*[\"']?)" + _NOT_DONE +
                          r"[^\s;&,'\"]+")
# Token-shaped words: GitHub, GitLab, Hugging Face, Slack, OpenAI, Stripe (sk_live_, rk_live_, whsec_),
# PyPI, npm, AWS access key ids, Google API keys, JWTs.
_TOKEN_VALUE = re.compile(r"\b(?:ghp_|gho_|ghu_|ghs_|ghr_|github_pat_|glpat-|hf_|xox[abposr]-|xapp-|sk-|"
                          r"sk_live_|sk_test_|rk_live_|rk_test_|pk_live_|whsec_|pypi-|npm_|AKIA|ASIA|AIza)"
                          r"[A-Za-z0-9_\-]{8,}|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
# A password glued to -p, as mysql, mariadb and mysqldump take it (-pPASSWORD), as a word of its own: an
# argument or a word of a shell command (`bash -c "mysql -pX db"`). Also hides -pgpu (a partition): write
# `-p gpu` to keep it in the record.
_GLUED_P = re.compile(r"(?<!\S)(?P<head>-p)" + _NOT_DONE + r"(?=[^\s-])\S+")
# Programs whose `-p X` is a password as a separate argument.
_PASSWORD_P_PROGRAMS = frozenset({"sshpass"})
# What `hpcai env diff` compares: everything but the variables (job ids, paths) and the capture's own
# time and host, which differ between any two jobs.
NOT_COMPARED = frozenset({"schema", "job_id", "captured_at", "host", "environment"})


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def is_captured(name: str) -> bool:
    """Whether the variable's value goes into environment.json (else its name only)."""
    return name in CAPTURED_NAMES or name.startswith(CAPTURED_PREFIXES)


def _userinfo(match: re.Match[str]) -> str:
    user, colon, _ = match["userinfo"].partition(":")
    return f"{match['scheme']}{user}:{REDACTED}@" if colon else f"{match['scheme']}{REDACTED}@"


def redact_value(value: str) -> str:
    """`value` with credentials in URLs, Authorization headers, secret key=value pairs, token-shaped words
    and -pPASSWORD replaced."""
    value = _URL_USERINFO.sub(_userinfo, value)
    value = _AUTH_HEADER.sub(lambda m: f"{m['head']}{REDACTED}", value)
    value = _BEARER.sub(lambda m: f"{m['head']}{REDACTED}", value)
    value = _SECRET_PAIR.sub(lambda m: f"{m['head']}{REDACTED}", value)
    value = _TOKEN_VALUE.sub(REDACTED, value)
    return _GLUED_P.sub(lambda m: f"{m['head']}{REDACTED}", value)


def redact_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables, sorted, with secret-named ones and credential-looking values redacted."""
    return {name: REDACTED if is_secret_name(name) else redact_value(value)
            for name, value in sorted(environ.items())}


def capture_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables for environment.json, sorted: allow-listed ones with their values (redact_env still
    applied), every other one by name only (value REDACTED); a name that is itself token-shaped is left out."""
    kept = redact_env({name: value for name, value in environ.items() if is_captured(name)})
    named = {name: REDACTED for name in environ if not is_captured(name) and not _TOKEN_VALUE.search(name)}
    return dict(sorted({**named, **kept}.items()))


def redact_argv(argv: Sequence[str]) -> list[str]:
    """A command line with the values of secret-named flags (`--token X`, `--api-key=X`, `--password X`) and
    of sshpass's `-p X` redacted, and every argument scrubbed by redact_value (-pPASSWORD, DSNs, headers)."""
    out: list[str] = []
    hide_next = False
    password_p = False  # after a program whose -p takes the password as the next argument
    for arg in argv:
        flag, eq, _ = arg.partition("=")
        secret_flag = flag.startswith("-") and is_secret_name(flag.lstrip("-"))
        if hide_next and not secret_flag:  # a secret flag right after another is a flag, not its value
            out.append(REDACTED)
            hide_next = False
            continue
        hide_next = False
        if secret_flag:
            # redact_value on the flag too: -pSECRET is a flag and a password at once
            out.append(f"{redact_value(flag)}={REDACTED}" if eq else redact_value(arg))
            hide_next = not eq
            continue
        if os.path.basename(arg) in _PASSWORD_P_PROGRAMS:
            password_p = True
        elif password_p and arg == "-p":
            hide_next = True
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
