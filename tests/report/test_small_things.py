"""What users see at the edges: small values read with significant digits (never "0.0"), chart labels
stay inside their SVG, and --since/--until take sacct's relative forms (now-30days)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import REPO, RunHpcai, assert_clean_error
from report.helpers import at, job, summary

from hpc_aidc.errors import ConfigError
from hpc_aidc.report.aggregate import Filters, build_report
from hpc_aidc.report.charts import _CHAR_W, bar_chart, hbar_chart
from hpc_aidc.report.numbers import num, pct
from hpc_aidc.report.period import Period, make_period, parse_when
from hpc_aidc.report.render import render
from hpc_aidc.report.website import site_data, site_pages
from hpc_aidc.site_profile import Prices

PRICES = Prices(currency="EUR", gpu_hour=2.5, kwh=0.25, pue=1.3, carbon_g_per_kwh=300.0)
PERIOD = Period(at("2026-10-05T00:00"), at("2026-10-06T00:00"), at("2026-10-07T00:00"))
# 0.008 GPU-hours: one GPU for 28.8 s; 30 s -> 0.00833 GPU-h.
TINY = [job("1", start="2026-10-05T00:00", end="2026-10-05T00:00:30", gpus=1, account="tiny", comment=summary(29.0)),
        job("2", start="2026-10-05T00:00", end="2026-10-05T02:00", gpus=4, account="big", user="bob")]


# --- (a) significant digits -------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "digits", "text"), [
    (0.008, 1, "0.008"), (0.00833333, 1, "0.00833"), (0.5, 1, "0.5"), (0.1234567, 2, "0.123"),
    (0.1234567, 4, "0.1235"), (0.0, 1, "0.0"), (0.0, 2, "0.00"), (1234.5, 1, "1,234.5"), (2.0, 2, "2.00"),
    (12.0, 0, "12"), (0.4, 0, "0.4"), (0.99996, 1, "1.0"), (-0.0042, 2, "-0.0042"), (1e-9, 2, "0.000000001"),
    (None, 1, "unknown"), (None, 3, "unknown"),
])
def test_num_uses_significant_digits_below_one(value: float | None, digits: int, text: str) -> None:
    assert num(value, digits) == text


@pytest.mark.parametrize(("share", "text"), [(0.0, "0%"), (0.003, "0.3%"), (0.42, "42%"), (1.0, "100%"),
                                             (0.00012, "0.012%")])
def test_pct_keeps_small_shares_visible(share: float, text: str) -> None:
    assert pct(share) == text


def test_table_prints_a_tiny_project_with_significant_digits() -> None:
    text = render(build_report(TINY, PERIOD, ("account",), PRICES), "table")
    tiny = next(line for line in text.splitlines() if line.startswith("tiny"))
    cols = tiny.split()
    assert cols[2:5] == ["0.00833", "0.0667", "0.00833"]  # GPU-, CPU-, node-hours: 3 significant digits
    assert cols[7] == "0.00000806" and cols[8] == "100%"  # kWh of 29 J
    assert "Energy data covers 0.104% of the usage" in text  # not "0%"
    big = next(line for line in text.splitlines() if line.startswith("big"))
    assert "8.0" in big and "unknown" in big  # fixed decimals from 1 up; no energy data stays unknown


def test_site_prints_a_tiny_project_with_significant_digits() -> None:
    pages = site_pages(site_data(TINY, PERIOD, Filters(), PRICES), PERIOD, PRICES, cluster="dev", root=REPO / "site")
    index = pages["index.html"]
    row = re.search(r'href="projects/tiny\.html".*?</tr>', index, re.S)
    assert row is not None and ">0.00833<" in row.group(0), row  # num(2) -> 3 significant digits
    project = pages["projects/tiny.html"]
    assert "0.00833" in project and "unknown" in pages["projects/big.html"]


# --- (b) chart labels inside the viewBox ------------------------------------------------------------

def _texts(svg: str) -> tuple[float, list[tuple[float, str, str]]]:
    root = ET.fromstring(svg)
    width = float(root.attrib["viewBox"].split()[2])
    ns = "{http://www.w3.org/2000/svg}"
    return width, [(float(t.attrib["x"]), t.attrib.get("text-anchor", "start"), t.text or "")
                   for t in root.iter(f"{ns}text")]


LONG = ["a-very-long-project-name-indeed", "climate-modelling-2026", "x", "physics"]
CHARTS = {
    "hbar-long-values": hbar_chart(LONG, [123456.0, 98765.4, 0.004, 5.0], title="t", unit="GPU-h"),
    "hbar-kwh": hbar_chart(["123456 alice", "7 bob"], [1234567.891, 0.5], title="t", unit="kWh"),
    "bar-projects": bar_chart([f"project-number-{i}" for i in range(12)], [float(i) * 1e6 for i in range(12)],
                              title="t", unit="GPU-h"),
    "bar-days": bar_chart([f"2026-10-{d:02d}" for d in range(1, 32)], [0.004 * d for d in range(31)],
                          title="t", unit="kWh"),
    "bar-one": bar_chart(["a-very-long-project-name"], [0.008], title="t", unit="GPU-h"),
}


@pytest.mark.parametrize("name", sorted(CHARTS))
def test_chart_texts_fit_the_viewbox_by_estimate(name: str) -> None:
    width, texts = _texts(CHARTS[name])
    for x, anchor, text in texts:
        w = len(text) * _CHAR_W
        left = {"start": x, "middle": x - w / 2, "end": x - w}[anchor]
        assert left >= 0 and left + w <= width, (name, text, x, anchor)


def test_chart_small_values_are_not_zero() -> None:
    svg = hbar_chart(["tiny"], [0.008], title="t", unit="GPU-h")
    assert "0.008 GPU-h" in svg


_MEASURE = """<script>
const out = [];
for (const svg of document.querySelectorAll('svg.chart')) {
  const vb = svg.viewBox.baseVal;
  for (const t of svg.querySelectorAll('text')) {
    const b = t.getBBox();
    if (b.x < vb.x - 0.5 || b.x + b.width > vb.x + vb.width + 0.5)
      out.push(svg.id + ': ' + t.textContent + ' [' + b.x.toFixed(1) + ', ' + (b.x + b.width).toFixed(1) + ']');
  }
}
document.getElementById('result').textContent = 'CLIPPED:' + JSON.stringify(out);
</script>"""


def test_chart_labels_are_inside_the_viewbox_in_chromium() -> None:
    """Headless Chromium lays the charts out with the site's CSS; every text's box is inside the viewBox."""
    if shutil.which("chromium") is None:
        pytest.fail("Debian's chromium is not installed: apt-get install -y chromium")
    css = (REPO / "site" / "assets").glob("*.css")
    style = "".join(p.read_text() for p in css)
    body = "".join(f'<h2>{name}</h2>{svg.replace("<svg ", f"<svg id={name!r} ", 1)}' for name, svg in CHARTS.items())
    out = Path(tempfile.mkdtemp(prefix="charts-"))
    try:
        page = out / "charts.html"
        page.write_text(f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head>"
                        f"<body><main style='max-width:760px'>{body}<pre id='result'></pre></main>{_MEASURE}"
                        "</body></html>")
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={out / 'profile'}"]
        dom = subprocess.run(["chromium", *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                             timeout=90, check=False)
        assert dom.returncode == 0, dom.stderr[-2000:]
        found = re.search(r"CLIPPED:(\[.*?\])</pre>", dom.stdout, re.S)
        assert found is not None, dom.stdout[-2000:]
        clipped = json.loads(found.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
        assert clipped == [], clipped
        shot = out / "charts.png"
        run = subprocess.run(["chromium", *flags, f"--screenshot={shot}", "--window-size=800,1800", page.as_uri()],
                             capture_output=True, text=True, timeout=90, check=False)
        assert run.returncode == 0 and shot.stat().st_size > 10_000, run.stderr[-2000:]
    finally:
        shutil.rmtree(out, ignore_errors=True)


# --- (c) sacct's relative times ---------------------------------------------------------------------

NOW = at("2026-10-09T12:00")


@pytest.mark.parametrize(("text", "delta"), [
    ("now", 0), ("now-30days", -30 * 86400), ("now-2hours", -7200), ("now-1weeks", -7 * 86400),
    ("now-45minutes", -2700), ("now-90seconds", -90), ("now-90", -90), ("now+1hours", 3600), ("now-1day", -86400),
    ("now-1week", -7 * 86400), ("NOW-2HOURS", -7200), (" now - 3 hours ", -10800),
])
def test_relative_times_as_sacct_takes_them(text: str, delta: int) -> None:
    assert parse_when(text, NOW) == NOW + delta


def test_relative_period() -> None:
    p = make_period("now-30days", "now-1days", NOW)
    assert (p.start, p.end) == (NOW - 30 * 86400, NOW - 86400)
    assert make_period("2026-10-01", "now-2hours", NOW).end == NOW - 7200


@pytest.mark.parametrize(("text", "needle"), [
    ("now-3months", "Expected a unit from seconds, minutes, hours, days, weeks after -3. Got 'months' instead."),
    ("now-", "Got 'now-' instead."), ("now-1.5hours", "Got 'now-1.5hours' instead."),
    ("nowish", "Got 'nowish' instead."), ("now-2 hours ago", "Got 'now-2 hours ago' instead."),
    ("yesterday", "Got 'yesterday' instead."),
])
def test_relative_time_errors(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)) as err:
        parse_when(text, NOW)
    message = str(err.value)
    assert message.startswith("Expected ") and " instead. Example: --since " in message
    assert "\n" not in message


def test_relative_after_since_error() -> None:
    with pytest.raises(ConfigError, match="after --since"):
        make_period("now-1days", "now-2days", NOW)


@pytest.fixture()
def acct_file(tmp_path: Path) -> Path:
    path = tmp_path / "acct.txt"
    path.write_text("\n".join(TINY) + "\n")
    return path


def test_relative_times_in_the_cli(hpcai: RunHpcai, acct_file: Path) -> None:
    proc = hpcai("report", "usage", "--from-file", str(acct_file), "--since", "now-30days", "--until", "now", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "period" in json.loads(proc.stdout)


@pytest.mark.parametrize(("args", "needle"), [
    (["--since", "now-3months"], "Got 'months' instead"),
    (["--until", "now-x"], "Got 'now-x' instead"),
    (["--since", "now-1days", "--until", "now-2days"], "after --since"),
])
def test_relative_time_cli_errors(hpcai: RunHpcai, acct_file: Path, args: list[str], needle: str) -> None:
    proc = hpcai("report", "usage", "--from-file", str(acct_file), *args)
    assert_clean_error(proc, needle)
    assert needle in proc.stderr and proc.stdout == ""
