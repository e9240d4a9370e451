"""Aggregation rules on synthetic rows: pro-rating, running jobs, unknown energy, cost/CO2, grouping."""

from __future__ import annotations

import pytest
from report.helpers import at, job, summary

from hpc_aidc.errors import ConfigError
from hpc_aidc.monitor.acct import encode
from hpc_aidc.monitor.summary import Totals
from hpc_aidc.report.aggregate import Filters, build_report, quantile
from hpc_aidc.report.energy import job_energy
from hpc_aidc.report.period import Period, make_period
from hpc_aidc.report.rows import parse_rows
from hpc_aidc.site_profile import Prices

PRICES = Prices(currency="EUR", gpu_hour=2.5, kwh=0.25, pue=1.3, carbon_g_per_kwh=300.0)
DAY = Period(at("2026-10-05T00:00"), at("2026-10-06T00:00"), at("2026-10-07T00:00"))


def one(lines: list[str], period: Period = DAY, by: tuple[str, ...] = ("account",), **kw: object):  # type: ignore[no-untyped-def]
    report = build_report(lines, period, by, PRICES, Filters(**kw))  # type: ignore[arg-type]
    return report


def test_gpu_cpu_node_hours_inside_the_period() -> None:
    r = one([job("1", start="2026-10-05T10:00", end="2026-10-05T12:00", gpus=4, cpus=8, nodes=2)])
    (u,) = r.lines
    assert (u.gpu_hours, u.cpu_hours, u.node_hours, u.jobs) == (8.0, 16.0, 4.0, 1)


def test_jobs_crossing_both_edges_are_pro_rated() -> None:
    lines = [job("1", start="2026-10-04T22:00", end="2026-10-05T02:00", gpus=1),   # 2 of 4 h inside
             job("2", start="2026-10-05T23:00", end="2026-10-06T03:00", gpus=2),   # 1 of 4 h inside
             job("3", start="2026-10-04T00:00", end="2026-10-07T00:00", gpus=1)]   # the whole day
    assert one(lines).total.gpu_hours == pytest.approx(2 + 2 + 24)


def test_running_job_counts_elapsed_so_far() -> None:
    period = Period(at("2026-10-05T00:00"), at("2026-10-06T00:00"), now=at("2026-10-05T06:00"))
    (u,) = one([job("1", start="2026-10-05T03:00", end=None, state="RUNNING", gpus=2)], period).lines
    assert u.gpu_hours == pytest.approx(6.0)
    assert u.running == 1
    assert u.energy_kwh is None and u.energy_coverage == 0.0


def test_jobs_outside_the_period_are_left_out() -> None:
    lines = [job("1", start="2026-10-03T00:00", end="2026-10-04T00:00"),
             job("2", start="2026-10-07T00:00", end="2026-10-07T01:00")]
    assert one(lines).lines == ()


def test_unknown_energy_is_not_zero_and_coverage_says_how_much_is_known() -> None:
    lines = [job("1", start="2026-10-05T00:00", end="2026-10-05T01:00", gpus=4, comment=summary(3.6e6)),
             job("2", start="2026-10-05T00:00", end="2026-10-05T01:00", gpus=4, comment=""),
             job("3", start="2026-10-05T00:00", end="2026-10-05T02:00", gpus=4, comment=summary(None))]
    (u,) = one(lines).lines
    assert u.energy_kwh == pytest.approx(1.0)
    assert u.energy_coverage == pytest.approx(4 / 16)
    none = one([job("2", start="2026-10-05T00:00", end="2026-10-05T01:00")]).lines[0]
    assert none.energy_kwh is None and none.co2_kg is None and none.cost_energy is None


def test_cost_and_co2_arithmetic() -> None:
    comment = summary(7.2e6, cpu_j=3.6e6)  # 2 kWh GPU + 1 kWh CPU
    (u,) = one([job("1", start="2026-10-05T00:00", end="2026-10-05T02:00", gpus=4, comment=comment)]).lines
    assert u.gpu_hours == 8.0
    assert u.energy_kwh == pytest.approx(3.0) and u.gpu_kwh == pytest.approx(2.0)
    assert u.cost_gpu == pytest.approx(8 * 2.5)
    assert u.cost_energy == pytest.approx(3.0 * 1.3 * 0.25)
    assert u.cost_total == pytest.approx(20 + 0.975)
    assert u.co2_kg == pytest.approx(3.0 * 1.3 * 300 / 1000)


def test_energy_is_pro_rated_with_time() -> None:
    comment = summary(3.6e6)  # 1 kWh over 4 h, 1 h inside the period
    (u,) = one([job("1", start="2026-10-05T23:00", end="2026-10-06T03:00", gpus=1, comment=comment)]).lines
    assert u.energy_kwh == pytest.approx(0.25)


def test_efficiency_util_idle_and_j_per_token() -> None:
    lines = [job("1", start="2026-10-05T00:00", end="2026-10-05T01:00", gpus=1,
                 comment=summary(1000.0, util=90.0, idle_gpu_s=0.0, tokens=500.0)),
             job("2", start="2026-10-05T00:00", end="2026-10-05T01:00", gpus=3,
                 comment=summary(3000.0, util=10.0, idle_gpu_s=7200.0))]
    (u,) = one(lines).lines
    assert u.gpu_util_mean == pytest.approx((90 * 1 + 10 * 3) / 4)
    assert u.idle_gpu_hours == pytest.approx(2.0)
    assert u.j_per_token == pytest.approx(2.0)


def test_requeued_runs_count_usage_and_the_shared_summary_once() -> None:
    comment = summary(3.6e6)
    lines = [job("7", start="2026-10-05T00:00", end="2026-10-05T01:00", state="REQUEUED", gpus=1, comment=comment),
             job("7", start="2026-10-05T02:00", end="2026-10-05T04:00", gpus=1, comment=comment)]
    (u,) = one(lines).lines
    assert u.gpu_hours == pytest.approx(3.0)
    assert (u.jobs, u.requeues) == (1, 1)
    assert u.energy_kwh == pytest.approx(1.0)
    assert u.energy_coverage == pytest.approx(2 / 3)


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_a_failed_run_requeued_by_hand_counts_only_the_final_summary(order: tuple[int, int]) -> None:
    """What sacct shows (22.05 and 26.05) for a job that FAILED and was then requeued (`scontrol requeue`, as
    a failed checkpoint write advises): run 1 keeps its own summary, run 2 the totals over both runs
    (sacctmgr writes the newest run only). Run 1's energy is inside run 2's: counted once, in any order."""
    runs = [job("8", start="2026-10-05T00:00", end="2026-10-05T01:00", state="FAILED", gpus=1,
                comment=summary(3.6e6)),
            job("8", start="2026-10-05T02:00", end="2026-10-05T04:00", submit="2026-10-05T01:30", gpus=1,
                comment=summary(4 * 3.6e6, runs=2))]
    (u,) = one([runs[i] for i in order]).lines
    assert (u.jobs, u.requeues, u.gpu_hours) == (2, 0, 3.0)
    assert u.energy_kwh == pytest.approx(4.0)
    assert u.energy_coverage == pytest.approx(2 / 3)


def test_newest_runs_reads_only_well_formed_rows() -> None:
    from hpc_aidc.report.rows import newest_runs
    from hpc_aidc.scheduler.parse import SACCT_DELIMITER

    first = job("8", start="2026-10-05T00:00", end="2026-10-05T01:00", state="FAILED")
    second = job("8", start="2026-10-05T02:00", end="2026-10-05T04:00", submit="2026-10-05T01:30")
    # a name holding the separator would shift the columns: such a row is not read (split_lines drops it too)
    sep = SACCT_DELIMITER
    forged = first.replace(f"{sep}j{sep}", f"{sep}j{sep}x{sep}", 1)
    assert newest_runs([first, second]) == {"8": "2026-10-05T01:30:00"}
    assert newest_runs([forged, second]) == {}
    assert newest_runs([first]) == {}


def test_array_tasks_are_jobs_of_their_own() -> None:
    lines = [job(f"9_{i}", raw=str(9 + i), start="2026-10-05T00:00", end="2026-10-05T01:00", gpus=1) for i in range(3)]
    (u,) = one(lines).lines
    assert (u.jobs, u.gpu_hours) == (3, 3.0)


def test_group_by_user_and_filters() -> None:
    lines = [job("1", start="2026-10-05T00:00", end="2026-10-05T01:00", user="alice"),
             job("2", start="2026-10-05T00:00", end="2026-10-05T02:00", user="bob", account="climate")]
    r = one(lines, by=("account", "user"))
    assert [u.key for u in r.lines] == [("climate", "bob"), ("physics", "alice")]
    assert [u.key for u in one(lines, accounts=frozenset({"climate"})).lines] == [("climate",)]
    assert [u.key for u in one(lines, users=frozenset({"alice"})).lines] == [("physics",)]


def test_group_by_day_splits_a_job_across_days() -> None:
    period = Period(at("2026-10-05T00:00"), at("2026-10-08T00:00"), at("2026-10-09T00:00"))
    r = one([job("1", start="2026-10-05T18:00", end="2026-10-06T06:00", gpus=1)], period, by=("day",))
    assert [(u.key, u.gpu_hours, u.jobs) for u in r.lines] == [(("2026-10-05",), 6.0, 1), (("2026-10-06",), 6.0, 0)]
    assert r.total.jobs == 1 and r.total.gpu_hours == 12.0


def test_group_by_week_and_month_labels() -> None:
    period = Period(at("2026-09-28T00:00"), at("2026-10-06T00:00"), at("2026-10-09T00:00"))
    lines = [job("1", start="2026-09-30T00:00", end="2026-10-02T00:00", gpus=1)]
    assert [u.key[0] for u in one(lines, period, by=("month",)).lines] == ["2026-09", "2026-10"]
    assert [u.key[0] for u in one(lines, period, by=("week",)).lines] == ["2026-W40"]


def test_queue_wait_quantiles() -> None:
    lines = [job(str(i), submit="2026-10-05T00:00", start=f"2026-10-05T00:{i:02d}", end="2026-10-05T03:00")
             for i in range(11)]
    (u,) = one(lines).lines
    assert u.wait_median_s == 300.0 and u.wait_p90_s == 540.0
    assert quantile([], 0.5) is None


def test_pending_job_submitted_in_period_is_a_job_without_usage() -> None:
    (u,) = one([job("1", start=None, end=None, submit="2026-10-05T01:00", state="PENDING")]).lines
    assert (u.jobs, u.gpu_hours, u.states) == (1, 0.0, {"PENDING": 1})


@pytest.mark.parametrize("by", [("nope",), ("day", "week"), ("account", "account"), ()])
def test_bad_dimensions(by: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError, match="Expected"):
        one([], by=by)


def test_period_errors() -> None:
    with pytest.raises(ConfigError, match="Expected a time"):
        make_period("yesterday-ish", None, at("2026-10-05T00:00"))
    with pytest.raises(ConfigError, match="after --since"):
        make_period("2026-10-05", "2026-10-01", at("2026-10-09T00:00"))
    p = make_period(None, None, at("2026-10-09T12:00"))
    assert (p.start, p.end) == (at("2026-10-01T00:00"), at("2026-10-09T12:00"))


@pytest.mark.parametrize("totals", [
    Totals(("n1", "n2"), 8, 5012.5, None, 12.5, 100.0, 200.0, 55.0, 3.0, None, None, "counter", True, False),
    Totals(("n1",), 1, None, 20.0, 1.0, None, None, None, None, 1e6, 5.0, "unavailable", False, True, ("n2",)),
    Totals((), 0, 1e-9, 3.25e12, 0.0, None, None, 0.0, 0.0, 0.0, None, "mixed", False, False),
])
def test_fast_energy_path_agrees_with_decode(totals: Totals) -> None:
    e = job_energy(encode(totals))
    assert e is not None
    assert (e.gpu_j, e.cpu_j, e.util, e.idle_gpu_s, e.tokens, e.simulated) == pytest.approx(
        (totals.gpu_j, totals.cpu_j, totals.util_mean, totals.idle_gpu_s, totals.tokens, totals.simulated))


def test_energy_decode_fallback_and_garbage() -> None:
    text = "note from admin; " + summary(100.0)
    e = job_energy(text)
    assert e is not None and e.gpu_j == 100.0
    assert job_energy("just a comment") is None
    assert job_energy(summary(100.0).replace("gpu_j=100", "gpu_j=abc")) is None


def test_recorded_sacct_output_parses() -> None:
    from conftest import RECORDED

    text = (RECORDED / "sacct_report.txt").read_text()
    rows = parse_rows(text.splitlines())
    assert len(rows) == len(text.splitlines())
    assert {r.state for r in rows} >= {"COMPLETED", "REQUEUED", "CANCELLED"}
    assert any(r.gpus > 0 for r in rows) and any(r.admin_comment for r in rows)
    period = Period(min(r.start for r in rows if r.start), max(r.end for r in rows if r.end) + 1, 0)
    report = build_report(text.splitlines(), period, ("account",), PRICES)
    assert report.total.gpu_hours == pytest.approx(sum(r.gpus * r.elapsed_s for r in rows) / 3600)
    assert report.total.jobs + report.total.requeues == len(rows)
