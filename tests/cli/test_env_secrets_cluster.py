"""On the real dev cluster, as alice: a job whose submit environment (sbatch exports it) and command line hold
the secrets a deny-list of names misses (MYSQL_PWD, DB_PASS, Azure AccountKey=, a Sentry DSN, an sk_live_ key,
an Authorization: Bearer header, -pPASSWORD) records none of them in environment.json, nor shows them in
`hpcai status --env`; variables off the allow-list keep their name only, and `hpcai env diff` still works."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cluster_kit import json_output
from conftest import HPCAI, RunHpcai

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("cluster")]

# Each secret differs, so a leak says which rule failed.
SECRET_ENV = {
    "MYSQL_PWD": "Mq7sqlPwdLeak",
    "DB_PASS": "Db7PassLeak",
    "AZURE_STORAGE_CONNECTION_STRING": "DefaultEndpointsProtocol=https;AccountName=devacct;AccountKey=Az7KeyLeak==;"
                                       "EndpointSuffix=core.windows.net",
    "SENTRY_DSN": "https://5e7dsnLeak0123456789abcdef@o1.ingest.sentry.io/42",
    "PAYMENTS": "sk_live_51St7ripeLeakABCDEF",
    "CURL_HEADER": "Authorization: Bearer Be7arerLeakToken",
    "DB_CMD": "mysql -uroot -pMy7CmdLeak prod",
}
# The shaped ones again under allow-listed names: there only their shape can hide them.
ALLOWED_ENV = {f"TORCH_HPCAI_CHECK_{i}": SECRET_ENV[name] for i, name in enumerate(
    ["AZURE_STORAGE_CONNECTION_STRING", "SENTRY_DSN", "PAYMENTS", "CURL_HEADER", "DB_CMD"])}
COMMAND = ["true", "-pMy7ArgLeak", "--password=Pw7EqLeak", "--password", "Pw7SpLeak",
           "Authorization: Bearer Be7ArgLeak", "https://Dsn7ArgLeak@o1.ingest.sentry.io/1",
           "DefaultEndpointsProtocol=https;AccountKey=Az7ArgLeak==", "sk_live_St7ArgLeakABCDEF"]
MARKERS = ["Mq7sqlPwdLeak", "Db7PassLeak", "Az7KeyLeak", "5e7dsnLeak", "St7ripeLeak", "Be7arerLeak", "My7CmdLeak",
           "My7ArgLeak", "Pw7EqLeak", "Pw7SpLeak", "Be7ArgLeak", "Dsn7ArgLeak", "Az7ArgLeak", "St7ArgLeak"]


def _leaks(text: str) -> list[str]:
    return [marker for marker in MARKERS if marker in text]


def _submit_as_alice(job_root: Path) -> dict[str, Any]:
    """`hpcai submit run --wait` as alice with the secrets in her environment (the `hpcai` fixture passes only
    HPCAI_*, PATH and LANG to another user, so the variables are set here the same way, with env)."""
    keep = {k: v for k, v in os.environ.items() if k.startswith("HPCAI_") or k in {"PATH", "LANG"}}
    env = {**keep, "HPCAI_JOB_ROOT": str(job_root), **SECRET_ENV, **ALLOWED_ENV}
    argv = ["runuser", "-u", "alice", "--", "env", *(f"{k}={v}" for k, v in env.items()), *HPCAI,
            "submit", "run", "-A", "physics", "--wait", "--json", "--", *COMMAND]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd="/tmp", timeout=300, check=False)
    result: dict[str, Any] = json_output(proc)
    return result


def test_a_job_records_none_of_the_secrets_in_its_environment(hpcai: RunHpcai, user_folders: Path) -> None:
    job = _submit_as_alice(user_folders)
    assert job["state"] == "COMPLETED", job
    text = (Path(job["folder"]) / "environment.json").read_text()
    assert _leaks(text) == []
    record = json.loads(text)
    variables = record["environment"]
    # off the allow-list: the name only; on it: the value, scrubbed of what looks like a secret
    assert {name: variables[name] for name in SECRET_ENV} == dict.fromkeys(SECRET_ENV, "<redacted>")
    assert variables["SLURM_JOB_ID"] == job["job_id"]
    assert variables["TORCH_HPCAI_CHECK_4"] == "mysql -uroot -p<redacted> prod"
    assert record["submit"]["command"][-len(COMMAND):][:5] == ["true", "-p<redacted>", "--password=<redacted>",
                                                               "--password", "<redacted>"]

    env = {"HPCAI_JOB_ROOT": str(user_folders)}
    for args in (["status", job["job_id"], "--env", "--json"], ["status", job["job_id"], "--env"]):
        shown = hpcai(*args, user="alice", env=env)
        assert shown.returncode == 0, shown.stderr
        assert _leaks(shown.stdout) == []
    diff = hpcai("env", "diff", job["job_id"], job["job_id"], "--json", user="alice", env=env)
    assert diff.returncode == 0, diff.stderr
    assert json.loads(diff.stdout)["changes"] == []
