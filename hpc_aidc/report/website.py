"""The static report site: an overview of every project and one page per project, rendered from the
Jinja2 templates shipped as package data (site/ of the checkout) (StrictUndefined, autoescaped) with inline SVG
charts. Fully offline: one CSS file, no JavaScript, no CDN. `site_pages` is pure (it returns the
pages as text); `build_site` writes them."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import jinja2
import markupsafe

from hpc_aidc.errors import ConfigError
from hpc_aidc.report.aggregate import Filters, Report, Usage, build_report
from hpc_aidc.report.charts import bar_chart, hbar_chart, sparkline
from hpc_aidc.report.jobs import AccountJobs, account_jobs
from hpc_aidc.report.numbers import num, pct
from hpc_aidc.report.period import Period, iso
from hpc_aidc.report.rows import parse_rows
from hpc_aidc.site_profile import Prices

TEMPLATES_ENV = "HPCAI_REPORT_TEMPLATES"


def templates_dir() -> Path:
    """The report website's templates and assets that ship with hpc-aidc (or $HPCAI_REPORT_TEMPLATES)."""
    from hpc_aidc.assets import asset_path

    env = os.environ.get(TEMPLATES_ENV)
    path = Path(env) if env else asset_path("report_site")
    if not (path / "templates").is_dir():
        raise ConfigError(f"Expected the report site templates in {path}/templates. Got no such directory. "
                          f"Set {TEMPLATES_ENV} to a folder with templates/ and assets/ (site/ of hpc-aidc).")
    return path


def slug(account: str) -> str:
    return re.sub(r"[^a-z0-9_.-]", "_", account.lower()) or "_"


@dataclass(frozen=True)
class SiteData:
    """What the pages show: three reports over the period and each project's jobs."""

    by_account: Report
    over_time: Report  # by account and day (or week, for periods over 45 days)
    by_user: Report
    jobs: Mapping[str, AccountJobs]


@dataclass(frozen=True)
class ProjectLine:
    account: str
    slug: str
    usage: Usage
    trend: str  # inline SVG


def bucket_dim(period: Period) -> str:
    return "day" if period.end - period.start <= 45 * 86400 else "week"


def _series(report: Report, account: str, attr: str) -> tuple[list[str], list[float]]:
    labels: list[str] = []
    values: list[float] = []
    for u in report.lines:
        if u.key[0] == account:
            labels.append(u.key[1])
            values.append(float(getattr(u, attr) or 0.0))
    return labels, values


def _env(root: Path) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(root / "templates")),
                             undefined=jinja2.StrictUndefined, autoescape=True, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["num"] = num
    env.filters["pct"] = pct
    env.filters["svg"] = markupsafe.Markup
    return env


def _all_buckets(report: Report) -> list[str]:
    return sorted({u.key[1] for u in report.lines})


def site_data(lines: Sequence[str], period: Period, filters: Filters, prices: Prices) -> SiteData:
    """The pages' data from sacct lines (the store's: store.query.site_data_from_store)."""
    dim = bucket_dim(period)
    return SiteData(build_report(lines, period, ("account",), prices, filters),
                    build_report(lines, period, ("account", dim), prices, filters),
                    build_report(lines, period, ("account", "user"), prices, filters),
                    account_jobs(parse_rows(lines), period, filters))


def site_pages(data: SiteData, period: Period, prices: Prices, *, cluster: str, root: Path) -> dict[str, str]:
    """{relative path: html} for the overview and every project page."""
    dim = bucket_dim(period)
    by_account, over_time, by_user = data.by_account, data.over_time, data.by_user
    env = _env(root)
    common = {"cluster": cluster, "since": iso(period.start), "until": iso(period.end),
              "currency": prices.currency, "prices": prices, "bucket": dim}
    buckets = _all_buckets(over_time)
    projects: list[ProjectLine] = []
    pages: dict[str, str] = {}
    for u in by_account.lines:
        account = u.key[0]
        labels, gpu = _series(over_time, account, "gpu_hours")
        gpu_by = dict(zip(labels, gpu, strict=True))
        trend = [gpu_by.get(b, 0.0) for b in buckets]
        spark = sparkline(trend, title=f"{account} GPU-hours per {dim}")
        projects.append(ProjectLine(account, slug(account), u, spark))
        pages[f"projects/{slug(account)}.html"] = _project_page(
            env, common, account, u, over_time, by_user, data.jobs.get(account, AccountJobs(0, 0, ())), dim)
    overview_chart = bar_chart([p.account for p in projects], [p.usage.gpu_hours for p in projects],
                               title="GPU-hours per project", unit="GPU-h")
    template = env.get_template("index.html.j2")
    pages["index.html"] = template.render(**common, projects=projects, total=by_account.total,
                                          chart=overview_chart, root="")
    return pages


def _project_page(env: jinja2.Environment, common: dict[str, object], account: str, usage: Usage, over_time: Report,
                  by_user: Report, jobs: AccountJobs, dim: str) -> str:
    labels, gpu = _series(over_time, account, "gpu_hours")
    _, kwh = _series(over_time, account, "energy_kwh")
    _, idle = _series(over_time, account, "idle_gpu_hours")
    users = sorted((u for u in by_user.lines if u.key[0] == account), key=lambda u: -u.gpu_hours)
    top = jobs.top
    charts = {
        "gpu": bar_chart(labels, gpu, title=f"GPU-hours per {dim}", unit="GPU-h"),
        "kwh": bar_chart(labels, kwh, title=f"Measured energy per {dim}", unit="kWh"),
        "idle": bar_chart(labels, idle, title=f"Idle GPU-hours per {dim}", unit="GPU-h"),
        "users": hbar_chart([u.key[1] for u in users[:10]], [u.gpu_hours for u in users[:10]],
                            title="Top users by GPU-hours", unit="GPU-h"),
        "jobs": hbar_chart([f"{j.job_id} {j.user}" for j in top], [j.kwh for j in top],
                           title="Most energy-hungry jobs", unit="kWh"),
    }
    template = env.get_template("project.html.j2")
    return str(template.render(**common, account=account, usage=usage, users=users, jobs=top,
                               job_count=jobs.count, jobs_with_energy=jobs.with_energy, charts=charts, root="../"))


def build_site(data: SiteData, period: Period, prices: Prices, out: Path, *, cluster: str) -> Path:
    """Write the site into `out` (pages and assets); returns the index page's path."""
    root = templates_dir()
    pages = site_pages(data, period, prices, cluster=cluster, root=root)
    try:
        (out / "projects").mkdir(parents=True, exist_ok=True)
        for rel, text in pages.items():
            (out / rel).write_text(text, encoding="utf-8")
        shutil.copytree(root / "assets", out / "assets", dirs_exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"Expected a writable --out directory {out}. Got {exc.strerror}. "
                          "Pick a directory you can write.") from None
    return out / "index.html"
