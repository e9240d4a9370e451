"""The pure parts: GPU lists, record rows, integration, summaries, combining, the accounting text."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from hpc_aidc.errors import ConfigError, EnergyError
from hpc_aidc.monitor import acct, plot, rapl, series, summary, work
from hpc_aidc.monitor.gpus import GpuToken, job_gpus, parse_gpu_list
from hpc_aidc.monitor.launch import batch_script_line, sampler_command
from hpc_aidc.monitor.nvml import GpuDevice, GpuSample, nvml_env


def test_gpu_tokens_by_index_uuid_mig_pci() -> None:
    toks = parse_gpu_list("0, 3,GPU-ab12,MIG-cd34/1/0,00000000:3A:00.0,18:00.0")
    assert [t.kind for t in toks] == ["index", "index", "uuid", "mig", "pci", "pci"]
    assert parse_gpu_list("") == () and parse_gpu_list("NoDevFiles") == ()
    with pytest.raises(ConfigError, match="Expected a GPU"):
        parse_gpu_list("gpu0")


def test_job_gpus_prefers_the_job_wide_variable() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "0", "SLURM_STEP_GPUS": "2", "SLURM_JOB_GPUS": "2,3"}
    assert job_gpus(env) == ((GpuToken("index", "2"), GpuToken("index", "3")), "SLURM_JOB_GPUS")
    assert job_gpus({"CUDA_VISIBLE_DEVICES": "GPU-x"}) == ((GpuToken("uuid", "GPU-x"),),
                                                           "CUDA_VISIBLE_DEVICES")
    assert job_gpus({}) is None


def _sample(p: float, util: float = 50.0) -> GpuSample:
    return GpuSample(p, util, 10.0, 1000.0, 50.0, 1980.0, 0x4)


def test_rows_round_trip_and_a_torn_row_is_dropped() -> None:
    data = series.encode_row(10.0, [_sample(100), _sample(math.nan)])
    data += series.encode_row(11.0, [_sample(200), _sample(300)])
    decoded = series.decode_rows(data + data[:13], 2)
    assert decoded.times == (10.0, 11.0)
    assert decoded.gpus[0].power_w == (100.0, 200.0) and decoded.gpus[0].throttle == (4, 4)
    assert math.isnan(decoded.gpus[1].power_w[0])
    assert len(data) == 2 * (8 + 2 * 28)  # compact: 28 bytes per GPU per sample


def test_trapezoid_counter_idle() -> None:
    assert summary.trapezoid_j([0, 1, 3], [100, 300, 300]) == pytest.approx(800.0)
    assert summary.trapezoid_j([0, 1, 2], [100, math.nan, 100]) == 0.0
    assert summary.counter_j(1000, 5500) == 4.5
    assert summary.counter_j(5000, 10) is None  # counter reset: fall back to integration
    assert summary.counter_j(None, 10) is None
    assert summary.idle_seconds([0, 1, 2, 4], [0, 90, 1, 50]) == 3.0


def _meta(gpus: int, counters: tuple[int | None, ...]) -> series.NodeMeta:
    devs = tuple(GpuDevice(f"GPU-{i}", i, "g", "p", counters[i] is not None, False, (str(i),))
                 for i in range(gpus))
    return series.NodeMeta("7", "n1", "alice", "physics", "prolog", 1, 1.0, 100.0, "ok", "fake", True,
                           devs, counters, None)


def test_node_summary_counter_or_integration() -> None:
    meta = _meta(2, (1_000, None))
    rows = b"".join(series.encode_row(100.0 + t, [_sample(200, 0), _sample(100 + 100 * t, 90)])
                    for t in range(5))
    end = series.NodeEnd(104.0, (801_000, None), None, "sampler")
    s = summary.summarize_node(meta, series.decode_rows(rows, 2), end, work.Work(tokens=1000.0))
    assert [g.source for g in s.gpus] == ["counter", "integrated"]
    assert s.gpus[0].energy_j == 800.0 and s.gpus[1].energy_j == pytest.approx(1200.0)
    t = s.totals
    assert t.gpu_j == pytest.approx(2000.0) and t.source == "mixed" and t.cpu_j is None
    assert t.idle_gpu_s == 4.0 and t.j_per_token == pytest.approx(2.0)
    assert t.power_max_w == 500.0 and t.duration_s == 4.0


def _totals(node: str, j: float | None, gpus: int = 2, src: str = "counter") -> summary.Totals:
    return summary.Totals((node,), gpus, j, None, 10.0, 300.0, 400.0, 50.0, 1.0, 10.0, None, src, True,
                          False)


def test_combine_adds_nodes_in_any_order() -> None:
    a, b, c = _totals("n1", 100.0), _totals("n2", 50.0), summary.unavailable_node("n3")
    ab_c = summary.combine([summary.combine([a, b]), c])
    c_ba = summary.combine([c, summary.combine([b, a])])
    assert ab_c == c_ba
    assert ab_c.gpu_j == 150.0 and ab_c.gpus == 4 and ab_c.nodes == ("n1", "n2")
    assert ab_c.missing == ("n3",) and ab_c.tokens == 20.0
    assert summary.combine([summary.unavailable_node("n1")]).gpu_j is None


def test_accounting_text_survives_sacctmgr() -> None:
    t = summary.combine([_totals("n1", 1234.5678), _totals("n2", None, src="unavailable")])
    text = acct.encode(t)
    assert text == text.lower() and '"' not in text and "|" not in text
    # What sacctmgr stores: everything lowercased, quotes as backticks; other tools' text around it.
    stored = "jobstats:abc " + text.lower().replace('"', "`")
    back = acct.decode(stored)
    assert back == t
    assert "gpu_j=1234.5678" in text and "cpu_j=na" in text  # unavailable is "na", never 0
    with pytest.raises(EnergyError, match="Expected an energy summary"):
        acct.decode("something else")


def test_work_lines() -> None:
    w = work.parse_work("tokens=10\nsamples=2\ngarbage\ntokens=5.5\ntokens=x\n")
    assert w == work.Work(15.5, 2.0)
    assert work.work_line("tokens", 3) == "tokens=3\n"
    with pytest.raises(ConfigError):
        work.work_line("tokens", -1)


def _zone(root: Path, name: str, label: str, uj: int, maxuj: int) -> None:
    z = root / name
    z.mkdir()
    (z / "name").write_text(label + "\n")
    (z / "energy_uj").write_text(f"{uj}\n")
    (z / "max_energy_range_uj").write_text(f"{maxuj}\n")


def test_rapl_reads_wraps_and_is_unavailable_not_zero(tmp_path: Path) -> None:
    _zone(tmp_path, "intel-rapl:0", "package-0", 900, 1000)
    _zone(tmp_path, "intel-rapl:0:0", "core", 100, 1000)
    _zone(tmp_path, "intel-rapl:0:1", "dram", 500, 1000)
    start = rapl.read_rapl(tmp_path)
    assert start is not None and set(start.energy_uj) == {"package-0", "package-0/core", "package-0/dram"}
    end = rapl.RaplReading({"package-0": 100, "package-0/core": 200, "package-0/dram": 700},
                           start.max_uj)
    delta = rapl.rapl_delta_j(start, end)
    assert delta == {"package-0": 200e-6, "package-0/core": 100e-6, "package-0/dram": 200e-6}
    assert rapl.package_j(delta) == pytest.approx(400e-6)  # core is inside the package
    assert rapl.read_rapl(tmp_path / "none") is None
    assert rapl.package_j(rapl.rapl_delta_j(None, end)) is None
    (tmp_path / "intel-rapl:0:1" / "energy_uj").unlink()  # one domain unreadable: all unavailable
    assert rapl.read_rapl(tmp_path) is None


def test_launch_helpers_and_site_env() -> None:
    argv = sampler_command(job_id="12", interval_s=0.5, python="/py")
    assert argv == ["/py", "-m", "hpc_aidc.cli.main", "energy", "sample", "--job-id", "12",
                    "--interval", "0.5"]
    line = batch_script_line(python="/py")
    assert line.startswith("srun --overlap --ntasks-per-node=1") and line.endswith(" &")
    assert nvml_env({"HPCAI_NVML_LIBRARY": "/l", "X": "y"}, {}) == {"HPCAI_NVML_LIBRARY": "/l"}
    assert nvml_env({"HPCAI_NVML_LIBRARY": "/l"}, {"HPCAI_NVML_LIBRARY": "/mine"}) == {}


def test_power_chart_sums_nodes() -> None:
    cols = plot.bin_power([[(0, 100), (10, 100)], [(0, 50), (10, 50)]], 2)
    assert cols == [150.0, 150.0]
    rows = plot.power_chart([[(0, 100), (5, 200), (10, 300)]], width=10, height=3)
    assert len(rows) == 3 and "300 W" in rows[0]
    assert plot.power_chart([]) == ["(no power samples)"]
