"""`hpcai admin install | uninstall | user-folders`: the Slurm-side kit under a root-owned prefix, and users' job
directories (hpc_aidc.install)."""

from __future__ import annotations

import os
import pwd
import sys
from pathlib import Path, PurePosixPath

import click

from hpc_aidc.cli.common import echo_json, json_option, site_from
from hpc_aidc.errors import ConfigError


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise ConfigError(f"Expected to run as root ({what} lays down files root runs). Got uid {os.geteuid()}. "
                          "Run it with sudo, or add --dry-run to see what it would do.")


def _absolute(value: Path, option: str) -> PurePosixPath:
    if not value.is_absolute():
        raise ConfigError(f"Expected an absolute path for {option}. Got {value} instead. Write it from /.")
    return PurePosixPath(os.path.normpath(value))


def _refuse_untrusted(paths: list[str]) -> None:
    from hpc_aidc.install.trust import untrusted_links

    found = []
    for path in paths:
        found += [str(u) for u in untrusted_links(path) if str(u) not in found]
    if found:
        raise ConfigError("Expected every folder and file root would run from to be root's and writable by root "
                          f"alone. Got: {'; '.join(found)}. Fix their owner and mode (chown root, chmod go-w), or "
                          "pick another --prefix or --python.")


@click.command()
@click.option("--prefix", type=click.Path(path_type=Path), default=Path("/opt/hpcai"), show_default=True,
              help="Root-owned folder for the Slurm-side scripts (PREFIX/slurm) and reference monitoring files.")
@click.option("--etc", "etc", type=click.Path(path_type=Path), default=Path("/etc/hpcai"), show_default=True,
              help="Folder of energy.env, the settings the scripts source.")
@click.option("--python", "python", default=None,
              help="Interpreter the scripts run, with hpc-aidc installed [the one running hpcai].")
@click.option("--venv", "venv_from", default=None, metavar="SPEC",
              help="Create PREFIX/venv and pip-install SPEC into it (a wheel path or requirement, extras "
                   "allowed, e.g. 'dist/hpc_aidc-0.1.0-py3-none-any.whl[energy]'); the scripts run its Python.")
@click.option("--site-profile", type=click.Path(path_type=Path), default=None,
              help="Site profile the scripts read [the profile hpcai loaded, normally /etc/hpcai/site.toml].")
@click.option("--energy-log", type=click.Path(path_type=Path), default=Path("/var/log/hpcai/energy.log"),
              show_default=True, help="Log of the energy and audit scripts (readable by root and SlurmUser).")
@click.option("--energy-interval", type=float, default=1.0, show_default=True, help="Seconds between samples.")
@click.option("--slurm-user", default="slurm", show_default=True, help="slurm.conf's SlurmUser.")
@click.option("--slurm-conf", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Check that this slurm.conf runs the installed scripts (exit 1 when it does not).")
@click.option("--dry-run", is_flag=True, help="Show every folder and file with its mode; change nothing.")
@json_option
@click.pass_context
def install(ctx: click.Context, prefix: Path, etc: Path, python: str | None, venv_from: str | None,
            site_profile: Path | None, energy_log: Path, energy_interval: float, slurm_user: str,
            slurm_conf: Path | None, dry_run: bool, as_json: bool) -> None:
    """Install the Slurm-side kit: prolog.d (GPU health, energy), epilog, EpilogSlurmctld (audit, energy),
    /etc/hpcai/energy.env, the energy store and log with their modes; print the slurm.conf lines.

    Idempotent (a second run changes nothing); refuses when the prefix, a folder above it or the Python
    root would run is writable by anyone but root. `hpcai admin uninstall` rolls it back."""
    from hpc_aidc.assets import asset_path
    from hpc_aidc.install.apply import apply_plan, record_tree
    from hpc_aidc.install.interpreter import bare_paths, import_paths, make_venv, requirement_from
    from hpc_aidc.install.plan import MONITORING_FILES, SLURM_SCRIPTS, InstallSpec, install_plan, slurm_conf_lines

    if not dry_run:
        _require_root("admin install")
    site = site_from(ctx)
    root = _absolute(prefix, "--prefix")
    etc_dir = _absolute(etc, "--etc")
    log = _absolute(energy_log, "--energy-log")
    if not energy_interval >= 0.1:
        raise ConfigError(f"Expected --energy-interval >= 0.1 seconds. Got {energy_interval} instead. Use 1.")
    profile = site_profile or (Path(site.source) if site.source.startswith("/") else None)
    if profile is None:
        raise ConfigError(f"Expected a site profile file. Got {site.source}. Pass --site-profile "
                          "/etc/hpcai/site.toml (root-owned).")
    store = _absolute(Path(site.energy_store), "the site profile's energy_store")
    audit = _absolute(Path(site.audit_log), "the site profile's audit_log") if site.audit_log else None
    try:
        slurm = pwd.getpwnam(slurm_user)
    except KeyError:
        raise ConfigError(f"Expected the SlurmUser {slurm_user!r} to exist. Got no such user. Pass --slurm-user "
                          "(slurm.conf's SlurmUser).") from None
    if python is not None and venv_from is not None:
        raise ConfigError("Expected --python or --venv. Got both. Pick one.")
    # The folders above what the install makes or re-owns: the store itself may be world-writable (1733) and
    # the audit folder is SlurmUser's by design, so their parents are what must be root's alone.
    _refuse_untrusted([str(root), str(etc_dir), str(log.parent), str(profile), str(store.parent),
                       *([str(audit.parent.parent)] if audit else [])])
    venv = Path(root) / "venv"
    if venv_from is not None:
        interpreter = str(venv / "bin" / "python")
    else:
        interpreter = str(_absolute(Path(python), "--python")) if python else sys.executable
        # Checked before it runs as root at all, then its own folders (asked without site code), then its path.
        _refuse_untrusted([interpreter, str(Path(interpreter).parent.parent)])
        _refuse_untrusted(bare_paths(interpreter))
        _refuse_untrusted(import_paths(interpreter))
    spec = InstallSpec(prefix=root, etc=etc_dir, python=interpreter, site_profile=_absolute(profile, "--site-profile"),
                       energy_store=store, energy_prolog=site.energy_prolog, energy_log=log,
                       energy_interval=energy_interval, audit_log=audit, slurm_uid=slurm.pw_uid,
                       slurm_gid=slurm.pw_gid)
    scripts = {rel: asset_path("slurm", rel).read_bytes() for rel in SLURM_SCRIPTS}
    monitoring = {rel: asset_path("monitoring", rel).read_bytes() for rel in MONITORING_FILES}
    plan = install_plan(spec, scripts, monitoring)
    try:
        changes = apply_plan(root, plan, dry_run)
    except PermissionError as exc:
        raise ConfigError(f"Expected to read {exc.filename or 'the installed files'}. Got permission denied. Run as "
                          "root (a dry run over an existing install needs root too).") from None
    if venv_from is not None and not dry_run:
        made = not venv.exists()
        make_venv(venv, requirement_from(venv_from, Path.cwd()))
        if made:
            record_tree(root, PurePosixPath(venv))
        _refuse_untrusted(import_paths(interpreter))
    conf_lines = slurm_conf_lines(root)
    problems = _check_slurm_conf(slurm_conf, root) if slurm_conf is not None else []
    if as_json:
        echo_json({"prefix": str(root), "python": interpreter, "dry_run": dry_run,
                   "entries": [{"path": str(e.path), "kind": "dir" if e.is_dir else "file", "mode": f"{e.mode:04o}",
                                "uid": e.uid, "gid": e.gid} for e in plan],
                   "changes": [{"action": c.action, "path": c.path} for c in changes],
                   "slurm_conf": conf_lines, "slurm_conf_problems": problems})
    else:
        entries = {str(e.path): e for e in plan}
        for change in changes:
            entry = entries.get(change.path)
            click.echo(f"{change.action:<9} {entry.describe()}" if entry else change.line())
        click.echo("slurm.conf (then restart slurmctld and the slurmd):")
        for key, value in conf_lines.items():
            click.echo(f"  {key}={value}")
        if slurm_conf is not None:
            click.echo(f"{slurm_conf}: " + ("runs the installed scripts" if not problems else f"{len(problems)} "
                                            "problem(s)"))
            for line in problems:
                click.echo(f"  - {line}")
    if problems:
        sys.exit(1)


def _check_slurm_conf(path: Path, root: PurePosixPath) -> list[str]:
    from hpc_aidc.install.plan import slurm_conf_mismatches
    from hpc_aidc.scheduler.admin_check import parse_slurm_conf

    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"Expected a readable slurm.conf at {path}. Got {exc.strerror}. "
                          "Check --slurm-conf.") from None
    return slurm_conf_mismatches(parse_slurm_conf(text), root)


@click.command()
@click.option("--prefix", type=click.Path(path_type=Path), default=Path("/opt/hpcai"), show_default=True,
              help="The prefix `hpcai admin install` used.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed or restored; change nothing.")
@json_option
def uninstall(prefix: Path, dry_run: bool, as_json: bool) -> None:
    """Roll back `hpcai admin install`: remove what it made (files changed since are kept), restore what it
    replaced, give folders it changed their owner and mode back. Data (energy store, logs) stays unless empty."""
    from hpc_aidc.install.apply import uninstall as undo

    if not dry_run:
        _require_root("admin uninstall")
    changes = undo(_absolute(prefix, "--prefix"), dry_run)
    if as_json:
        echo_json({"prefix": str(prefix), "dry_run": dry_run,
                   "changes": [{"action": c.action, "path": c.path, "detail": c.detail} for c in changes]})
        return
    for change in changes:
        click.echo(change.line())


@click.command("user-folders")
@click.argument("users", nargs=-1)
@click.option("--all-associated", is_flag=True, help="Every user with a Slurm association (sacctmgr).")
@click.option("--repair", is_flag=True, help="Move a folder that is not its user's alone aside (for you to inspect) "
                                             "and make it anew.")
@click.option("--job-root", type=click.Path(path_type=Path), default=None,
              help="The job root [the site profile's job_root].")
@click.option("--dry-run", is_flag=True, help="Say what would be made or repaired; change nothing.")
@json_option
@click.pass_context
def user_folders(ctx: click.Context, users: tuple[str, ...], all_associated: bool, repair: bool,
                 job_root: Path | None, dry_run: bool, as_json: bool) -> None:
    """Make each user's job directory <job_root>/<user> (owned by the user, 0750), as root.

    \b
    Example:
      hpcai admin user-folders --all-associated      # before users' first submission
      hpcai admin user-folders bob --repair          # bob's was made by someone else

    In a shared job root users never make their own (one who could, could make another's and own that
    user's job tree): give the job root to root, not writable by users (0755), and run this when users
    are added."""
    from hpc_aidc.cli.common import root_safe_site
    from hpc_aidc.install.user_folders import associated_users, ensure_user_folders

    if not users and not all_associated:
        raise ConfigError("Expected user names or --all-associated. Got neither. Name the users, e.g. "
                          "`hpcai admin user-folders alice bob`.")
    names = [*users, *(associated_users() if all_associated else [])]
    root = job_root.absolute() if job_root else root_safe_site(ctx).job_root
    outcomes = ensure_user_folders(root, list(dict.fromkeys(names)), repair=repair, dry_run=dry_run)
    if as_json:
        echo_json([{"user": o.user, "path": o.path, "action": o.action, "detail": o.detail} for o in outcomes])
    else:
        for outcome in outcomes:
            click.echo(outcome.line())
    if any(o.action == "unsafe" for o in outcomes):
        ctx.exit(1)
