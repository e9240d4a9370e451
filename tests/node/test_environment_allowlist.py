"""environment.json keeps variables by allow-list: the secrets a deny-list of names misses (MYSQL_PWD, DB_PASS,
Azure AccountKey=, Sentry DSNs, sk_live_ keys, Bearer headers, -pPASSWORD) never reach the record, whether in
a variable's name, in an allow-listed variable's value or in the recorded command lines (pure, no job)."""

from __future__ import annotations

import json

import pytest

from hpc_aidc.formats.job_env import SUBMIT_CONTEXT_ENV
from hpc_aidc.node.environment import collect
from hpc_aidc.render.environment import (
    REDACTED,
    capture_env,
    is_captured,
    redact_argv,
    redact_value,
    summary_lines,
)

# name -> (value, the secret in it); each secret differs, so a leak says which rule failed.
SECRETS: dict[str, tuple[str, str]] = {
    "MYSQL_PWD": ("Mq7sqlPwdLeak", "Mq7sqlPwdLeak"),
    "DB_PASS": ("Db7PassLeak", "Db7PassLeak"),
    "AZURE_STORAGE_CONNECTION_STRING": (
        "DefaultEndpointsProtocol=https;AccountName=devacct;AccountKey=Az7KeyLeak+/abc==;"
        "EndpointSuffix=core.windows.net", "Az7KeyLeak"),
    "SENTRY_DSN": ("https://5e7dsnLeak0123456789abcdef@o1.ingest.sentry.io/42", "5e7dsnLeak"),
    "PAYMENTS": ("sk_live_51St7ripeLeakABCDEF", "St7ripeLeak"),
    "CURL_HEADER": ("Authorization: Bearer Be7arerLeakToken", "Be7arerLeak"),
    "DB_CMD": ("mysql -uroot -pMy7CmdLeak prod", "My7CmdLeak"),
}

# A bare password has no shape: off the allow-list (where these names are) it is never recorded, but under an
# allow-listed name nothing could tell it from a value. The others are found by their shape wherever they are.
SHAPELESS = frozenset({"MYSQL_PWD", "DB_PASS"})
SHAPED = sorted(set(SECRETS) - SHAPELESS)


def _leaks(text: str) -> list[str]:
    return [secret for _, secret in SECRETS.values() if secret in text]


def test_variables_off_the_allow_list_keep_their_name_only() -> None:
    env = {name: value for name, (value, _) in SECRETS.items()}
    captured = capture_env({**env, "SLURM_JOB_ID": "7", "PATH": "/usr/bin:/bin", "HOME": "/home/alice"})
    assert captured == {**dict.fromkeys(env, REDACTED), "HOME": REDACTED, "PATH": "/usr/bin:/bin",
                        "SLURM_JOB_ID": "7"}
    assert list(captured) == sorted(captured)


@pytest.mark.parametrize("name", ["SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES", "NCCL_DEBUG", "OMP_NUM_THREADS",
                                  "HPCAI_SITE", "TORCH_EXTENSIONS_DIR", "PYTORCH_CUDA_ALLOC_CONF", "MKL_NUM_THREADS",
                                  "OPENBLAS_NUM_THREADS", "UCX_TLS", "FI_PROVIDER", "I_MPI_DEBUG", "OMPI_MCA_btl",
                                  "PMIX_RANK", "LD_LIBRARY_PATH", "PATH", "VIRTUAL_ENV", "CONDA_PREFIX",
                                  "PYTHONPATH", "MASTER_ADDR"])
def test_the_allow_list(name: str) -> None:
    assert is_captured(name)


@pytest.mark.parametrize("name", ["MYSQL_PWD", "DB_PASS", "SENTRY_DSN", "HOME", "USER", "SSH_AUTH_SOCK", "MY_VAR",
                                  "AWS_SECRET_ACCESS_KEY", "PGPASSFILE", "SLURMX", "CUDA"])
def test_off_the_allow_list(name: str) -> None:
    assert not is_captured(name)


@pytest.mark.parametrize("name", SHAPED)
def test_each_secret_in_an_allowed_variable_is_redacted_by_its_value(name: str) -> None:
    value, secret = SECRETS[name]
    captured = capture_env({"NCCL_TEST_VALUE": value})
    assert secret not in json.dumps(captured)
    assert REDACTED in captured["NCCL_TEST_VALUE"]


@pytest.mark.parametrize(("value", "expected"), [
    ("mysql -uroot -pS3cret db", f"mysql -uroot -p{REDACTED} db"),
    ("-pS3cret", f"-p{REDACTED}"),
    ("DefaultEndpointsProtocol=https;AccountName=a;AccountKey=abc+/d==;EndpointSuffix=core.windows.net",
     f"DefaultEndpointsProtocol=https;AccountName=a;AccountKey={REDACTED};EndpointSuffix=core.windows.net"),
    ("https://0123456789abcdef@o1.ingest.sentry.io/1", f"https://{REDACTED}@o1.ingest.sentry.io/1"),
    ("https://pub:priv@sentry.io/1", f"https://pub:{REDACTED}@sentry.io/1"),
    ("mysql://u:p@ss@db:3306/x", f"mysql://u:{REDACTED}@db:3306/x"),
    ("sk_live_51HxyzABCDEFGH", REDACTED),
    ("rk_test_51HxyzABCDEFGH", REDACTED),
    ("Authorization: Bearer abc.def-ghi", f"Authorization: Bearer {REDACTED}"),
    ("-H 'Authorization: Basic dXNlcjpwYXNz' -v", f"-H 'Authorization: Basic {REDACTED}' -v"),
    ("Bearer abcdefgh", f"Bearer {REDACTED}"),
    ("https://a.blob.core.windows.net/c?sv=2020&sig=abc%2B1&se=2024",
     f"https://a.blob.core.windows.net/c?sv=2020&sig={REDACTED}&se=2024"),
    ("host=db password=hunter2 user=x", f"host=db password={REDACTED} user=x"),
    ('{"api_key": "abc123"}', f'{{"api_key": "{REDACTED}"}}'),
    ("X-Api-Key: abc123", f"X-Api-Key: {REDACTED}"),
    ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl", REDACTED),
    # what must stay as it is
    ("expandable_segments:True,max_split_size_mb:128", "expandable_segments:True,max_split_size_mb:128"),
    ("mkdir -p /tmp/x", "mkdir -p /tmp/x"),
    ("n[1-2]", "n[1-2]"),
    ("3e-4", "3e-4"),
    ("https://example.org/simple", "https://example.org/simple"),
])
def test_redact_value(value: str, expected: str) -> None:
    assert redact_value(value) == expected
    assert redact_value(expected) == expected  # idempotent: a record redacted twice stays the same


def test_command_lines_lose_every_password() -> None:
    argv = ["hpcai", "submit", "run", "--", "mysql", "-uroot", "-pMy7Leak", "--password=P1Leak", "--password",
            "P2Leak", "--db-pass", "P3Leak", "-H", "Authorization: Bearer B1Leak", "https://D1Leak@sentry.io/1",
            "DefaultEndpointsProtocol=https;AccountKey=A1Leak==", "sk_live_S1LeakABCDEFGH", "sshpass", "-p", "P4Leak",
            "--lr", "3e-4"]
    out = redact_argv(argv)
    assert not [arg for arg in out if "Leak" in arg], out
    assert out[:6] == ["hpcai", "submit", "run", "--", "mysql", "-uroot"]
    assert out[-2:] == ["--lr", "3e-4"]
    assert redact_argv(out) == out


def test_a_secret_flag_right_after_a_glued_password_still_hides_its_value() -> None:
    assert redact_argv(["mysql", "-pSECRETx", "--password", "P2"]) == ["mysql", f"-p{REDACTED}", "--password", REDACTED]


def test_collect_records_no_secret_anywhere() -> None:
    env = {name: value for name, (value, _) in SECRETS.items()}
    allowed = {f"TORCH_HPCAI_CHECK_{i}": SECRETS[name][0] for i, name in enumerate(SHAPED)}
    context = {"cwd": "/home/alice/p", "git": {"commit": None},
               "command": ["hpcai", "submit", "run", "--", "mysql", "-pMy7CmdLeak", "--password", "Db7PassLeak"]}
    record = collect({**env, **allowed, SUBMIT_CONTEXT_ENV: json.dumps(context), "SLURM_JOB_ID": "9",
                      "HPCAI_NVML_LIBRARY": "/nonexistent/libnvidia-ml.so.1"}, {"command": ["true"]}, "9")
    assert _leaks(json.dumps(record)) == []
    assert _leaks("\n".join(summary_lines(record))) == []
    assert record["environment"]["MYSQL_PWD"] == REDACTED and record["environment"]["SLURM_JOB_ID"] == "9"
    assert record["submit"]["command"][-4:] == ["mysql", f"-p{REDACTED}", "--password", REDACTED]


def test_a_token_shaped_name_is_left_out() -> None:
    assert capture_env({"ghp_abcdefghijklmnop": "1", "PATH": "/bin"}) == {"PATH": "/bin"}
