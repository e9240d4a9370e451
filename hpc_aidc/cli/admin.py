"""`hpcai admin ...`: the admin kit, all of it rendered from or checked against the site profile.

    templates   sbatch templates for users (templates/sbatch/*.sbatch.j2 -> DIR/*.sbatch)
    policy      job_submit.lua for slurmctld (and the rejection catalogue)
    check       slurm.conf against the profile: one line per problem with its fix
    gpu-health  the prolog's GPU check (drains the node on a bad GPU)
    metrics     the node metrics writer for node_exporter's textfile collector
    ood         an Open OnDemand form for the training template
    install     the Slurm-side scripts, settings and energy store under a root-owned prefix (uninstall)
    audit       the submission audit log (admins only)"""

from __future__ import annotations

import os
import pwd
import sys
from pathlib import Path

import click

from hpc_aidc.cli.common import echo_json, json_option, site_from
from hpc_aidc.cli.install import install, uninstall, user_folders
from hpc_aidc.errors import ConfigError
from hpc_aidc.site_profile import SiteProfile


@click.group()
def admin() -> None:
    """Admin kit: sbatch templates, job_submit.lua policy, slurm.conf check, GPU health, metrics."""


def write_if_changed(path: Path, text: str, mode: int = 0o644) -> bool:
    """Write `path` atomically (temp file + rename in its directory) when its content differs."""
    from hpc_aidc.fsutil import DIR_FLAGS, atomic_write_at

    try:
        if path.read_text() == text:
            return False
    except (FileNotFoundError, UnicodeDecodeError, IsADirectoryError):
        pass
    except OSError as exc:
        raise ConfigError(f"Expected to read {path}. Got {exc.strerror}. Check the path.") from None
    try:
        dir_fd = os.open(path.parent if str(path.parent) else ".", DIR_FLAGS)
    except OSError as exc:
        raise ConfigError(f"Expected a directory {path.parent} to write {path.name} in. Got {exc.strerror}. "
                          "Create it first.") from None
    try:
        atomic_write_at(dir_fd, path.name, text.encode(), mode=mode)
    except OSError as exc:
        raise ConfigError(f"Expected to write {path}. Got {exc.strerror}. Check the permissions.") from None
    finally:
        os.close(dir_fd)
    return True


def exempt_uids(site: SiteProfile) -> dict[str, int]:
    """uids of the policy's exempt users on this machine (slurmctld's Lua sees only the submitter's uid)."""
    uids: dict[str, int] = {}
    for user in site.policy.exempt_users:
        try:
            uids[user] = pwd.getpwnam(user).pw_uid
        except KeyError:
            continue
    return uids


# -- templates ------------------------------------------------------------------------------------------

def default_templates_dir() -> Path:
    """The sbatch templates that ship with hpc-aidc (package data)."""
    from hpc_aidc.assets import asset_path

    return asset_path("templates", "sbatch")


@admin.command()
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the rendered *.sbatch files (created if missing).")
@click.option("--templates", "templates_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Template directory [the sbatch templates hpc-aidc ships].")
@click.option("--account", "-A", default=None, help="Account the scripts charge [profile's default_account].")
@click.option("--qos", default=None, help="QoS [profile's default_qos].")
@click.option("--python", "python", default=None,
              help="Interpreter on the nodes with hpc-aidc and the user stack [the one running hpcai].")
@click.option("--nodes", "-N", type=int, default=None, help="Nodes of the multi-node templates [2].")
@click.option("--gpus-per-node", "-G", type=int, default=None,
              help="GPUs (ranks) per node of the training templates [the partition's].")
@click.pass_context
def templates(ctx: click.Context, out: Path, templates_dir: Path | None, account: str | None, qos: str | None,
              python: str | None, nodes: int | None, gpus_per_node: int | None) -> None:
    """Render the sbatch templates for users from the site profile.

    Partitions, GPU types, default account/QoS/time, setup lines and [env] (NCCL) come from the profile;
    each script stands alone (`sbatch train.sbatch`, nothing else needed on the login node)."""
    from hpc_aidc.monitor.launch import batch_script_line
    from hpc_aidc.render.admin_templates import TemplateOptions, render_templates, template_context

    site = site_from(ctx)
    source_dir = templates_dir or default_templates_dir()
    try:
        sources = {p.name: p.read_text() for p in sorted(source_dir.iterdir()) if p.is_file()}
    except OSError as exc:
        raise ConfigError(f"Expected a template directory at {source_dir}. Got {exc.strerror}. "
                          "Pass --templates DIR (a folder of *.sbatch.j2 templates).") from None
    interpreter = python or sys.executable
    options = TemplateOptions(python=interpreter, account=account, qos=qos, nodes=nodes, gpus_per_node=gpus_per_node,
                              energy_line=batch_script_line(python=interpreter))
    rendered = render_templates(sources, template_context(site, options))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"Expected to create {out}. Got {exc.strerror}. Pick a writable --out.") from None
    for name, text in rendered.items():
        write_if_changed(out / name, text)
        click.echo(str(out / name))


# -- metrics (node_exporter textfile collector) ------------------------------------------------------------

@admin.command()
@click.option("--textfile-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="node_exporter's --collector.textfile.directory (root:prometheus, mode 0750).")
@click.option("--node", default=None, help="This node's Slurm name [$SLURMD_NODENAME, else the short hostname].")
@click.option("--spool", "spool_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="This node's SlurmdSpoolDir [/var/spool/slurmd].")
@click.option("--interval", type=float, default=15.0, show_default=True, help="Seconds between updates.")
@click.option("--once", is_flag=True, help="Write the file once and exit (cron, tests).")
@click.pass_context
def metrics(ctx: click.Context, textfile_dir: Path, node: str | None, spool_dir: Path | None, interval: float,
            once: bool) -> None:
    """Write this node's GPU and per-job metrics for Prometheus (node_exporter textfile collector).

    Per GPU: power, energy counter, utilisation, memory, temperature, SM clock, throttle reasons
    (dcgm-exporter names); per running job: energy so far, power, GPUs, with labels hpc_job, user,
    account. A job's series disappear when it ends. Runs as root (monitoring/systemd/). The file is 0640
    in the directory's group: serve it with node_exporter behind a web config (monitoring/README.md)."""
    import signal
    import socket
    import threading

    from hpc_aidc.monitor.energy_store.layout import check_node
    from hpc_aidc.monitor.exporter import WriterConfig, run_writer

    if not interval >= 0.5:
        raise ConfigError(f"Expected --interval >= 0.5 seconds. Got {interval} instead. Use 15 (or 1-2 for tests).")
    site = _root_safe_site(ctx)
    name = check_node(node or os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0])
    cfg = WriterConfig(node=name, textfile_dir=textfile_dir, spool_dir=spool_dir or Path("/var/spool/slurmd"),
                       energy_store=site.energy_store, interval_s=interval)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    run_writer(cfg, stop, once=once, log=lambda message: click.echo(f"hpcai metrics {name}: {message}", err=True))


# -- Open OnDemand ---------------------------------------------------------------------------------------

@admin.command()
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The app directory (e.g. /var/www/ood/apps/sys/hpcai-train).")
@click.option("--templates", "templates_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Template directory [the sbatch templates hpc-aidc ships].")
@click.option("--account", "-A", default=None, help="Default account in the form [profile's default_account].")
@click.option("--python", "python", default=None, help="Interpreter on the nodes [the one running hpcai].")
@click.pass_context
def ood(ctx: click.Context, out: Path, templates_dir: Path | None, account: str | None, python: str | None) -> None:
    """Render an Open OnDemand app (form.yml, submit.yml.erb) for the DeepSpeed training template."""
    from hpc_aidc.monitor.launch import batch_script_line
    from hpc_aidc.render.admin_templates import TemplateOptions, render_templates, template_context
    from hpc_aidc.render.ood import render_ood_app

    site = site_from(ctx)
    source_dir = templates_dir or default_templates_dir()
    try:
        sources = {p.name: p.read_text() for p in source_dir.iterdir() if p.name.startswith("_")
                   or p.name == "train.sbatch.j2"}
    except OSError as exc:
        raise ConfigError(f"Expected a template directory at {source_dir}. Got {exc.strerror}. "
                          "Pass --templates DIR.") from None
    interpreter = python or sys.executable
    options = TemplateOptions(python=interpreter, account=account, energy_line=batch_script_line(python=interpreter))
    train = render_templates(sources, template_context(site, options))["train.sbatch"]
    for name, text in render_ood_app(site, train, account).items():
        path = out / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"Expected to create {path.parent}. Got {exc.strerror}. Pick a writable --out.") from None
        write_if_changed(path, text)
        click.echo(str(path))


# -- policy ---------------------------------------------------------------------------------------------

@admin.command()
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write job_submit.lua here (next to slurm.conf); default: print it.")
@click.option("--catalogue", is_flag=True, help="Print the rejection catalogue (Markdown) instead.")
@click.pass_context
def policy(ctx: click.Context, out: Path | None, catalogue: bool) -> None:
    """Render job_submit.lua from the profile's [policy] table (slurm.conf: JobSubmitPlugins=lua).

    hpcai checks the same rules before sbatch, with the same codes (see --catalogue)."""
    from hpc_aidc.render.job_submit_lua import render_job_submit_lua
    from hpc_aidc.spec.policy import catalogue_markdown

    if catalogue:
        click.echo(catalogue_markdown(), nl=False)
        return
    site = site_from(ctx)
    text = render_job_submit_lua(site, exempt_uids(site))
    if out is None:
        click.echo(text, nl=False)
        return
    changed = write_if_changed(out, text)
    click.echo(f"{out}: {'written' if changed else 'unchanged'}", err=True)


# -- check ----------------------------------------------------------------------------------------------

@admin.command()
@click.option("--slurm-conf", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Check this slurm.conf file instead of the live controller (`scontrol show config`).")
@json_option
@click.pass_context
def check(ctx: click.Context, slurm_conf: Path | None, as_json: bool) -> None:
    """Check slurm.conf against the site profile: prolog/epilog, JobSubmitPlugins and job_submit.lua,
    gres/gpu in AccountingStorageTRES, PrivateData, energy store permissions, and that nobody but root can
    change what the Prolog/Epilog/EpilogSlurmctld run (the scripts, every folder above them, their settings,
    the Python). One line per problem with its fix; exit 1 when there is any. Live, it also says which Slurm
    runs: tested, expected to work (between tested releases) or untested (a warning, not a problem)."""
    import dataclasses

    from hpc_aidc.install.kit_chain import chain_links
    from hpc_aidc.render.job_submit_lua import render_job_submit_lua
    from hpc_aidc.scheduler.admin_check import admin_problems, gather_facts, version_support

    site = site_from(ctx)
    facts = gather_facts(site, slurm_conf)
    # What slurm.conf runs as root, link by link: scripts, folders above them, settings, the Python.
    facts = dataclasses.replace(facts, chain=tuple(chain_links(facts.config, facts.prolog_scripts)))
    expected = render_job_submit_lua(site, exempt_uids(site)) if site.policy.enabled else None
    problems = admin_problems(site, facts, expected)
    version = version_support(facts)  # None for a slurm.conf file: it names no version
    warnings = [version.warning] if version is not None and version.warning else []
    if as_json:
        echo_json({"source": facts.source, "site": site.source, "ok": not problems, "problems": problems,
                   "slurm_version": None if version is None else
                   {"version": str(version.version), "status": version.status},
                   "warnings": warnings})
    else:
        _say_check(facts.source, site.source, version.line() if version else None, warnings, problems)
    if problems:
        sys.exit(1)


def _say_check(source: str, site_source: str, version: str | None, warnings: list[str], problems: list[str]) -> None:
    if version is not None:
        click.echo(version)
    for line in warnings:
        click.echo(f"hpcai: warning: {line}", err=True)
    if problems:
        click.echo(f"{source} vs {site_source}: {len(problems)} problem(s)")
        for line in problems:
            click.echo(f"  - {line}")
    else:
        click.echo(f"{source} vs {site_source}: OK")


# -- GPU health (the prolog) -------------------------------------------------------------------------------

UNHEALTHY_EXIT = 3  # slurm/health/gpu_prolog.sh fails the prolog on this status (and the UNHEALTHY line) only


def _root_safe_site(ctx: click.Context) -> SiteProfile:
    """As root (prolog, metrics service) only the root-owned profile counts, with no HPCAI_* overrides;
    its NVML variables (the dev cluster's simulated NVML) go into our environment for the C library."""
    from hpc_aidc.cli.common import root_safe_site
    from hpc_aidc.monitor.nvml import nvml_env

    site = root_safe_site(ctx)
    os.environ.update(nvml_env(site.env, os.environ))
    return site


@admin.command("gpu-health")
@click.option("--gpus", default=None, metavar="LIST",
              help="The job's GPUs on this node (default: $SLURM_JOB_GPUS; all GPUs when unset).")
@click.option("--node", default=None, help="This node's Slurm name (default: $SLURMD_NODENAME).")
@click.option("--job-id", default=None, help="The job being started (for the log line).")
@click.option("--drain", is_flag=True, help="Drain this node in Slurm when a GPU is bad, naming GPU and fault.")
@click.option("--prolog", is_flag=True, help="Prolog mode: print only the verdict line (and notes).")
@click.option("--sustain", "sustain_s", type=click.FloatRange(min=0.0), default=None,
              help="Seconds a hardware slowdown must last to count [5].")
@click.option("--catalogue", is_flag=True, help="Print which faults drain a node and how each is seen (Markdown).")
@json_option
@click.pass_context
def gpu_health(ctx: click.Context, gpus: str | None, node: str | None, job_id: str | None, drain: bool,
               prolog: bool, sustain_s: float | None, catalogue: bool, as_json: bool) -> None:
    """Check the job's GPUs as the node prolog does (slurm/health/gpu_prolog.sh).

    Exit 0: the GPUs are fine (or the job has none). Exit 3 and a line `UNHEALTHY: <reason>`: a fault that
    lasts (--catalogue: a missing GPU, uncorrectable ECC errors, retired pages, pending/failed row remapping,
    a hardware slowdown sustained over --sustain seconds, a critical Xid the driver reports meanwhile); with
    --drain the node is drained with that reason first. A slowdown that clears is a `note:` line, never a
    drain. Any other status means the check itself failed (no NVML, Slurm unreachable): the prolog logs it
    and lets the job run."""
    from hpc_aidc.errors import SlurmError
    from hpc_aidc.monitor.gpu_health import SUSTAIN_S, catalogue_markdown, check_gpus, drain_reason
    from hpc_aidc.monitor.gpus import GpuToken, parse_gpu_list

    if catalogue:
        click.echo(catalogue_markdown(), nl=False)
        return
    text = os.environ.get("SLURM_JOB_GPUS") if gpus is None else gpus
    tokens: tuple[GpuToken, ...] | None = None if text is None else parse_gpu_list(text)
    if tokens == ():
        if not prolog:
            click.echo("no GPUs to check")
        return
    _root_safe_site(ctx)
    if tokens is None:
        from hpc_aidc.monitor.nvml import open_nvml

        nvml = open_nvml()
        try:
            tokens = tuple(GpuToken("index", str(i)) for i in range(nvml.count()))
        finally:
            nvml.close()
    notes: list[str] = []
    faults = check_gpus(tokens, sustain_s=SUSTAIN_S if sustain_s is None else sustain_s, notes=notes)
    node_name = node or os.environ.get("SLURMD_NODENAME") or ""
    reason = drain_reason(faults) if faults else ""
    drained = None
    if faults and drain:
        if not node_name:
            raise ConfigError("Expected --node (or $SLURMD_NODENAME) with --drain. Got neither. Pass --node.")
        try:
            from hpc_aidc.scheduler.nodes import drain_node

            drain_node(node_name, reason)
            drained = True
        except SlurmError as exc:
            drained = False
            reason += f" (drain failed: {exc})"
    if as_json:
        echo_json({"node": node_name, "job_id": job_id, "gpus": [t.value for t in tokens], "healthy": not faults,
                   "faults": [{"gpu": f.gpu, "fault": f.fault} for f in faults], "reason": reason,
                   "drained": drained, "notes": notes})
    elif faults:
        click.echo(f"UNHEALTHY: {reason}")
    else:
        for line in notes:  # the prolog logs them: a passing slowdown is worth a look, not a drain
            click.echo(f"note: {' '.join(line.split())}")
        if not prolog:
            click.echo(f"GPUs {','.join(t.value for t in tokens)}: healthy")
    if faults:
        sys.exit(UNHEALTHY_EXIT)


# -- audit (slurm/audit) ------------------------------------------------------------------------------------

def _audit_log(ctx: click.Context) -> Path:
    """The audit log named by the admin's own site profile: root-owned, never a user's --site or HPCAI_*."""
    from hpc_aidc.site_profile import find_site_path, load_trusted_site

    site = load_trusted_site(find_site_path((ctx.find_root().obj or {}).get("site_path")))
    if site.audit_log is None:
        raise ConfigError(f"Expected [cluster].audit_log in the site profile {site.source}. Got none. Add it "
                          "and install slurm/audit (slurm/audit/README.md).")
    return site.audit_log


@admin.command("audit")
@click.option("--since", metavar="WHEN", help="Submitted at or after: YYYY-MM-DD[THH:MM[:SS]] or now-COUNTUNIT "
              "(e.g. now-7days).")
@click.option("--until", metavar="WHEN", help="Submitted before: YYYY-MM-DD[THH:MM[:SS]], now or now-COUNTUNIT.")
@click.option("--user", "-u", "users", multiple=True, help="Only these users (repeatable).")
@click.option("--account", "-A", "accounts", multiple=True, help="Only these accounts (repeatable).")
@json_option
@click.pass_context
def audit(ctx: click.Context, since: str | None, until: str | None, users: tuple[str, ...],
          accounts: tuple[str, ...], as_json: bool) -> None:
    """List submissions from the audit log (admins only): who, when, account, partition, job id, the batch
    script's sha256, and whether hpcai wrote it. A job is listed once it has ended.

    \b
    Example:
      hpcai admin audit --since now-7days --account physics"""
    import time

    from hpc_aidc.errors import AccessError
    from hpc_aidc.ids import current_user
    from hpc_aidc.render.table import format_table
    from hpc_aidc.report.access import trusted_admins, viewer
    from hpc_aidc.report.period import parse_when
    from hpc_aidc.scheduler.audit import read_log, select

    user = current_user()
    if os.getuid() != 0 and not viewer(user, trusted_admins()).admin:
        raise AccessError(f"Expected an admin (Slurm AdminLevel, or the site profile's admins). Got user {user} "
                          "instead. The submission audit is for admins; `hpcai jobs` lists your own jobs.")
    now = int(time.time())
    log = read_log(_audit_log(ctx))
    rows = select(log.records, since=parse_when(since, now) if since else None,
                  until=parse_when(until, now) if until else None, users=users, accounts=accounts)
    if log.unreadable_lines:
        click.echo(f"hpcai: warning: {log.unreadable_lines} line(s) of the audit log are not audit records",
                   err=True)
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("No submissions in the audit log for these filters.")
        return
    click.echo(format_table(
        ["JOBID", "SUBMITTED", "USER", "ACCOUNT", "PARTITION", "NAME", "VIA", "RUNS", "SCRIPT SHA256"],
        [(r["job_id"], r.get("submitted") or "-", r.get("user") or "-", r.get("account") or "-",
          r.get("partition") or "-", r.get("job_name") or "-", r.get("hpcai_command") or "sbatch",
          "never ran" if r.get("never_ran") else r["runs"], (r.get("script_sha256") or "-")[:16]) for r in rows],
        right=(7,)))


@admin.command("audit-record", hidden=True)
@click.option("--sweep-jobs", type=click.IntRange(min=1), default=None,
              help="Jobs that never ran to record at most in this run [200].")
@click.option("--sweep-seconds", type=click.FloatRange(min=0.1), default=None,
              help="Seconds to spend on them at most [10].")
@click.pass_context
def audit_record(ctx: click.Context, sweep_jobs: int | None, sweep_seconds: float | None) -> None:
    """Append the ending job's record to the audit log, then, within a budget, those of jobs that ended without
    running since the last time (slurm/audit/epilog_slurmctld.sh, as SlurmUser)."""
    from datetime import UTC, datetime

    from hpc_aidc.scheduler.audit import SWEEP_JOBS, SWEEP_SECONDS, record_job, sweep_never_ran

    log = _audit_log(ctx)
    record = record_job(log, os.environ)
    sweep = sweep_never_ran(log, datetime.now(UTC), sweep_jobs or SWEEP_JOBS, sweep_seconds or SWEEP_SECONDS)
    click.echo(f"audited job {record['job_id']} of {record['user']}: sha256 {record['script_sha256']}"
               + (f"; never ran: {', '.join(r['job_id'] for r in sweep.records)}" if sweep.records else "")
               + (f"; {sweep.left} jobs that never ran left for later epilogs" if sweep.left else ""))

admin.add_command(install)
admin.add_command(uninstall)
admin.add_command(user_folders)
