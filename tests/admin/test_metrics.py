"""The node metrics writer and the Grafana dashboard: the exposition passes `promtool check metrics`,
cardinality is bounded (a finished job's series go), the writer refuses a directory others could write,
and on the dev cluster every dashboard panel's query returns data from the real Prometheus for a running
GPU job, whose series disappear once it ends. The metrics name every job's user and account, which
PrivateData hides: an ordinary user (alice) reads neither the writer's files nor Prometheus's data, and
node_exporter and Prometheus answer her 401 without the monitoring login."""

from __future__ import annotations

import base64
import grp
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, RunHpcai, assert_clean_error, wait_until

from hpc_aidc.monitor.exporter import WriterConfig, job_energy_j, run_writer, running_jobs
from hpc_aidc.render.metrics import MAPPING, GpuMetrics, JobMetrics, NodeMetrics, mapping_markdown, render_node_metrics

DASHBOARD = REPO / "monitoring/grafana/hpcai-gpu-energy.json"
PROMETHEUS = "http://127.0.0.1:19090"
NODE_EXPORTER = "http://127.0.0.1:19100"
MONITORING = Path("/var/lib/hpcai-devcluster/monitoring")
TEXTFILES = MONITORING / "textfile"
# The dev cluster's monitoring login (slurm/devcluster/up.sh): its password file is root:prometheus 0640.
LOGIN = "hpcai"
PASSWORD_FILE = MONITORING / "web" / "password"


def gpu(i: int, **kw: Any) -> GpuMetrics:
    base: dict[str, Any] = {"index": i, "uuid": f"GPU-{i}", "name": 'H100 "80GB"\\x', "pci": f"0000:{i:02x}:00.0",
                            "power_w": 300.5, "energy_mj": 10**12 + i, "util_gpu": 90.0, "util_mem": 40.0,
                            "mem_used_mib": 1000.0, "temp_c": 60.0, "sm_mhz": 1980.0, "throttle": 0x20}
    return GpuMetrics(**{**base, **kw})


def node(jobs: list[JobMetrics]) -> NodeMetrics:
    return NodeMetrics(node="n1", time_s=1.7e9, nvml_up=True, simulated=True, gpus=[gpu(0), gpu(1), gpu(2)],
                       jobs=jobs)


JOB = JobMetrics(job_id="42", user="alice", account="physics", gpu_uuids=("GPU-0", "GPU-1"), energy_j=1234.5,
                 power_w=601.0)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian's prometheus)")
def test_exposition_passes_promtool(tmp_path: Path) -> None:
    text = render_node_metrics(node([JOB]))
    proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_series_and_labels() -> None:
    lines = render_node_metrics(node([JOB])).splitlines()
    series = [x for x in lines if not x.startswith("#")]
    # per GPU: 8 DCGM series + info; per job: 2 GPU links + energy + power + gpus; per node: 3
    assert len(series) == 3 * 9 + 5 + 3
    assert 'hpcai_job_energy_joules_total{hpc_job="42",user="alice",account="physics",Hostname="n1"} 1234.5' in lines
    assert any(x.startswith('hpcai_gpu_job_info{gpu="1",UUID="GPU-1",hpc_job="42"') for x in lines)
    assert not any('job="' in x.replace("hpc_job=", "") for x in series)  # never Prometheus's own `job` label
    assert 'model_name="H100 \\"80GB\\"\\\\x"' in "\n".join(lines)  # label values escaped
    assert all(not x.startswith("DCGM") or "hpc_job" not in x for x in series)  # GPU series carry no job


def test_a_finished_job_leaves_nothing_behind() -> None:
    with_job = render_node_metrics(node([JOB]))
    without = render_node_metrics(node([]))
    assert 'hpc_job="42"' in with_job and "hpc_job" not in without
    assert len(without.splitlines()) < len(with_job.splitlines())


def test_job_energy_from_counters() -> None:
    now = {"a": 5_000, "b": 9_000, "c": None}
    assert job_energy_j(("a", "b"), (1_000, 4_000), now) == 9.0
    assert job_energy_j(("a",), (9_000,), now) == 0.0  # a reset counter never gives negative energy
    assert job_energy_j(("a", "c"), (1_000, 1), now) is None  # no counter: unavailable, not 0


def test_running_jobs_from_the_spool(tmp_path: Path) -> None:
    for name in ("n1_12.0", "n1_12.4294967291", "n1_7.4294967292", "n2_99.0", "n1_x.0", "cred_state", "job00012"):
        (tmp_path / name).touch()
    assert running_jobs(tmp_path, "n1") == ["7", "12"]
    assert running_jobs(tmp_path / "missing", "n1") == []


def test_mapping_is_documented() -> None:
    readme = (REPO / "monitoring/README.md").read_text()
    assert mapping_markdown() in readme
    assert {m.name for m in MAPPING if m.dcgm} <= {
        "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_MEM_COPY_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_SM_CLOCK",
        "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS"}


def test_writer_refuses_a_directory_others_can_write(hpcai: RunHpcai, tmp_path: Path) -> None:
    shared = tmp_path / "textfile"
    shared.mkdir()
    shared.chmod(0o777)
    proc = hpcai("admin", "metrics", "--once", "--node", "n1", "--textfile-dir", str(shared))
    assert_clean_error(proc, "writable by root alone")
    assert list(shared.iterdir()) == []
    assert_clean_error(hpcai("admin", "metrics", "--textfile-dir", str(shared), "--interval", "0"), "--interval")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the file the directory's group needs root")
def test_the_writers_file_is_readable_by_the_directorys_group_only(tmp_path: Path) -> None:
    textfile = tmp_path / "textfile"
    textfile.mkdir(mode=0o750)
    group = _collector_group()
    os.chown(textfile, 0, group)
    run_writer(WriterConfig(node="n1", textfile_dir=textfile, spool_dir=tmp_path / "spool", energy_store=None),
               threading.Event(), once=True)
    st = (textfile / "hpcai-n1.prom").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, group, 0o640)


def _collector_group() -> int:
    """prometheus's group where the package made it, else nogroup: any group but root's."""
    for name in ("prometheus", "nogroup"):
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            continue
    return 65534


def test_dashboard_is_complete() -> None:
    dash = json.loads(DASHBOARD.read_text())
    titles = [p["title"] for p in dash["panels"]]
    for needed in ("Cluster GPU power", "GPU power by account", "GPU energy by account", "Running jobs: GPU energy",
                   "Idle GPUs"):
        assert any(t.startswith(needed) for t in titles), needed
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"][0]["expr"]


def _login() -> dict[str, str]:
    """The Authorization header of the monitoring login (the test runs as root, who reads its password)."""
    token = base64.b64encode(f"{LOGIN}:{PASSWORD_FILE.read_text().strip()}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _query(expr: str) -> list[dict[str, Any]]:
    url = f"{PROMETHEUS}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(urllib.request.Request(url, headers=_login()), timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def _grafana_vars(expr: str) -> str:
    return expr.replace("$account", ".*").replace("$__range", "5m").replace("$__rate_interval", "1m")


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.usefixtures("cluster")
def test_dashboard_queries_return_data_for_a_running_job_and_its_series_go() -> None:
    job = subprocess.run(["runuser", "-u", "alice", "--", "sbatch", "--parsable", "-A", "physics", "-t", "5",
                          "--gres=gpu:h100:2", "-o", "/dev/null", "--wrap", "sleep 300"],
                         capture_output=True, text=True, cwd="/tmp", check=True).stdout.strip()
    selector = f'hpcai_job_power_watts{{hpc_job="{job}"}}'
    try:
        wait_until("the job's series in Prometheus", lambda: _query(selector), 60)
        (series,) = _query(selector)
        assert series["metric"]["user"] == "alice" and series["metric"]["account"] == "physics"
        assert float(series["value"][1]) > 0
        # two scrapes of its energy, so increase() over the dashboard range has something to say
        grown = f'increase(hpcai_job_energy_joules_total{{hpc_job="{job}"}}[20s]) > 0'
        wait_until("its energy grows between scrapes", lambda: _query(grown), 60)
        dash = json.loads(DASHBOARD.read_text())
        for panel in dash["panels"]:
            for target in panel["targets"]:
                assert _query(_grafana_vars(target["expr"])), panel["title"]
        for path in TEXTFILES.glob("hpcai-n*.prom"):
            proc = subprocess.run(["promtool", "check", "metrics"], input=path.read_text(), capture_output=True,
                                  text=True, check=False)
            assert proc.returncode == 0, (path, proc.stdout)
    finally:
        subprocess.run(["scancel", job], check=False)
    wait_until("the finished job's series disappear", lambda: not _query(selector), 30)
    assert not _query(f'hpcai_gpu_job_info{{hpc_job="{job}"}}')
    assert not _query(f'hpcai_job_energy_joules_total{{hpc_job="{job}"}}')


@pytest.mark.cluster
@pytest.mark.usefixtures("cluster")
def test_monitoring_daemons_listen_on_loopback_only() -> None:
    out = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True, check=False).stdout
    for port in ("19090", "19100"):
        listening = [line for line in out.splitlines() if f":{port} " in line]
        assert listening and all("127.0.0.1:" in line for line in listening), listening
    assert os.stat(TEXTFILES).st_uid == 0 and not os.stat(TEXTFILES).st_mode & 0o022


def _as_alice(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", "alice", "--", *argv], capture_output=True, text=True, cwd="/tmp",
                          timeout=60, check=False)


# Prints the HTTP status of each URL (argv) as alice sees it, with the Authorization header in $AUTH if any.
_STATUS = """import os, sys, urllib.error, urllib.request
for url in sys.argv[1:]:
    headers = {"Authorization": os.environ["AUTH"]} if os.environ.get("AUTH") else {}
    try:
        print(urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10).status)
    except urllib.error.HTTPError as exc:
        print(exc.code)
"""
_SCRAPES = [f"{NODE_EXPORTER}/metrics", f"{PROMETHEUS}/api/v1/query?query=hpcai_job_power_watts",
            f"{PROMETHEUS}/api/v1/series?match%5B%5D=hpcai_gpu_job_info", f"{PROMETHEUS}/federate?match%5B%5D=up",
            f"{PROMETHEUS}/graph", f"{PROMETHEUS}/-/ready"]


@pytest.mark.cluster
@pytest.mark.usefixtures("cluster")
def test_an_ordinary_user_reads_no_metrics_file() -> None:
    wait_until("a writer's file", lambda: list(TEXTFILES.glob("hpcai-n*.prom")), 30)
    for path in TEXTFILES.glob("hpcai-n*.prom"):
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_uid == 0, path
        assert st.st_gid == TEXTFILES.stat().st_gid, path  # the collector's group, not root's
        read = _as_alice("cat", str(path))
        assert read.returncode != 0 and "Permission denied" in read.stderr and read.stdout == ""
    assert stat.S_IMODE(TEXTFILES.stat().st_mode) & 0o007 == 0
    for folder in (TEXTFILES, MONITORING / "tsdb", MONITORING / "web"):
        listed = _as_alice("ls", str(folder))
        assert listed.returncode != 0 and "Permission denied" in listed.stderr, folder
    assert _as_alice("cat", str(PASSWORD_FILE)).returncode != 0


@pytest.mark.cluster
@pytest.mark.usefixtures("cluster")
def test_node_exporter_and_prometheus_answer_an_ordinary_user_401() -> None:
    no_login = _as_alice("env", "AUTH=", sys.executable, "-I", "-c", _STATUS, *_SCRAPES)
    assert no_login.stdout.split() == ["401"] * len(_SCRAPES), no_login.stderr
    wrong = "Basic " + base64.b64encode(f"{LOGIN}:not-the-password".encode()).decode()
    guessed = _as_alice("env", f"AUTH={wrong}", sys.executable, "-I", "-c", _STATUS, *_SCRAPES)
    assert guessed.stdout.split() == ["401"] * len(_SCRAPES), guessed.stderr
    # with the login (read by root) the same requests succeed, and the series still carry their labels
    with_login = subprocess.run([sys.executable, "-I", "-c", _STATUS, *_SCRAPES], capture_output=True, text=True,
                                env={**os.environ, "AUTH": _login()["Authorization"]}, timeout=60, check=False)
    assert with_login.stdout.split() == ["200"] * len(_SCRAPES), with_login.stderr
    assert _query("up") and all(s["value"][1] == "1" for s in _query('up{job="node"}'))
