"""Renderers, the access policy, and every user-facing error of `hpcai report` (one line, exit 2)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from conftest import RunHpcai, assert_clean_error
from report.helpers import at, job, summary

from hpc_aidc.errors import AccessError, ConfigError
from hpc_aidc.report.access import Viewer, decide, descendants, parse_parents, parse_user_line
from hpc_aidc.report.aggregate import Filters, build_report
from hpc_aidc.report.charts import bar_chart, hbar_chart, sparkline
from hpc_aidc.report.period import Period
from hpc_aidc.report.render import render, to_json, write_parquet
from hpc_aidc.site_profile import Prices

PRICES = Prices(currency="EUR", gpu_hour=2.5, kwh=0.25, pue=1.3, carbon_g_per_kwh=300.0)
PERIOD = Period(at("2026-10-05T00:00"), at("2026-10-06T00:00"), at("2026-10-07T00:00"))
LINES = [job("1", start="2026-10-05T00:00", end="2026-10-05T01:00", gpus=4, comment=summary(3.6e6)),
         job("2", start="2026-10-05T00:00", end="2026-10-05T01:00", gpus=4, account="climate", user="bob")]


def _report():  # type: ignore[no-untyped-def]
    return build_report(LINES, PERIOD, ("account",), PRICES)


def test_table_marks_unknown_energy_and_coverage() -> None:
    text = render(_report(), "table")
    climate = next(line for line in text.splitlines() if line.startswith("climate"))
    assert "unknown" in climate and "0%" in climate
    assert "Energy data covers 50% of the usage" in text


def test_csv_and_json_carry_the_same_numbers() -> None:
    rows = list(csv.DictReader(io.StringIO(render(_report(), "csv"))))
    assert [r["account"] for r in rows] == ["climate", "physics", "total"]
    assert rows[0]["energy_kwh"] == "" and float(rows[1]["energy_kwh"]) == pytest.approx(1.0)
    data = json.loads(render(_report(), "json"))
    assert data["total"]["gpu_hours"] == 8.0 and data["lines"][0]["energy_kwh"] is None
    assert data == to_json(_report())


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("pytest")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="pip install pyarrow"):
            write_parquet(_report(), tmp_path / "x.parquet")
    else:
        write_parquet(_report(), tmp_path / "x.parquet")
        assert (tmp_path / "x.parquet").stat().st_size > 0


def test_charts_escape_text_and_scale() -> None:
    svg = bar_chart(["<a>", "b"], [1.0, 3.0], title="t&t", unit="GPU-h")
    assert "<a>" not in svg and "&lt;a&gt;" in svg and "t&amp;t" in svg and "viewBox" in svg
    assert hbar_chart([], [], title="x", unit="u").startswith("<svg")
    assert sparkline([], title="x") == "" and "polyline" in sparkline([1, 2], title="x")


ALICE = Viewer("alice", False, frozenset({"physics"}))


def test_user_sees_their_accounts_only() -> None:
    assert decide(ALICE, Filters()).accounts == {"physics"}
    assert decide(ALICE, Filters(frozenset({"physics"}))).accounts == {"physics"}
    with pytest.raises(AccessError, match="Got climate instead"):
        decide(ALICE, Filters(frozenset({"climate", "physics"})))


def test_coordinator_admin_and_nobody() -> None:
    coord = Viewer("carol", False, frozenset(), descendants({"science"}, {"physics": "science", "climate": "root",
                                                                        "hep": "physics"}))
    assert decide(coord, Filters()).accounts == {"science", "physics", "hep"}
    admin = Viewer("root", True, frozenset())
    assert decide(admin, Filters()) == Filters()
    with pytest.raises(AccessError, match="association"):
        decide(Viewer("eve", False, frozenset()), Filters())


def test_sacctmgr_parsers() -> None:
    assert parse_user_line("root|Administrator|\n") == (True, frozenset())
    assert parse_user_line("carol|None|physics,climate\n") == (False, frozenset({"physics", "climate"}))
    assert parse_user_line("") == (False, frozenset())
    assert parse_parents("root|\nclimate|root\nphysics|root\n") == {"climate": "root", "physics": "root"}


@pytest.fixture()
def acct_file(tmp_path: Path) -> Path:
    path = tmp_path / "acct.txt"
    path.write_text("\n".join(LINES) + "\n")
    return path


def test_from_file_report_cli(hpcai: RunHpcai, acct_file: Path) -> None:
    proc = hpcai("report", "usage", "--from-file", str(acct_file), "--since", "2026-10-05", "--until", "2026-10-06",
                 "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["total"]["gpu_hours"] == 8.0


@pytest.mark.parametrize(("args", "needle"), [
    (["--since", "last tuesday"], "Expected a time"),
    (["--since", "2026-10-06", "--until", "2026-10-05"], "after --since"),
    (["--by", "colour"], "Expected --by"),
    (["--by", "day", "--by", "month"], "at most one time bucket"),
    (["--format", "parquet"], "--output FILE"),
    (["--format", "xml"], "is not one of"),
])
def test_usage_errors(hpcai: RunHpcai, acct_file: Path, args: list[str], needle: str) -> None:
    proc = hpcai("report", "usage", "--from-file", str(acct_file), *args)
    assert_clean_error(proc, needle)
    assert proc.stdout == ""


def test_missing_file_and_unwritable_output(hpcai: RunHpcai, acct_file: Path, tmp_path: Path) -> None:
    assert_clean_error(hpcai("report", "usage", "--from-file", str(tmp_path / "nope.txt")), "readable sacct-format")
    out = tmp_path / "no" / "dir" / "r.csv"
    assert_clean_error(hpcai("report", "usage", "--from-file", str(acct_file), "--since", "2026-10-05",
                             "--until", "2026-10-06", "--format", "csv", "--output", str(out)), "writable --output")


def test_parquet_error_cli(hpcai: RunHpcai, acct_file: Path, tmp_path: Path) -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        proc = hpcai("report", "usage", "--from-file", str(acct_file), "--format", "parquet", "--output",
                     str(tmp_path / "r.parquet"))
        assert_clean_error(proc, "pip install pyarrow")
    else:
        pytest.skip("pyarrow is installed")


def test_site_from_file_and_bad_templates(hpcai: RunHpcai, acct_file: Path, tmp_path: Path) -> None:
    proc = hpcai("report", "site", "--out", str(tmp_path / "s"), "--from-file", str(acct_file),
                 "--since", "2026-10-01", "--until", "2026-10-10")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "s" / "projects").iterdir()) == ["climate.html", "physics.html"]
    bad = hpcai("report", "site", "--out", str(tmp_path / "t"), "--from-file", str(acct_file),
                env={"HPCAI_REPORT_TEMPLATES": str(tmp_path)})
    assert_clean_error(bad, "HPCAI_REPORT_TEMPLATES")
