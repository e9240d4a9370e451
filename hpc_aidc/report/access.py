"""Who may see which project's report (Slurm's PrivateData idea, per account): a user sees the
accounts they have an association with, a coordinator the accounts they coordinate (and their
sub-accounts), Slurm admins/operators and the admins of the admin's own site profile see all.

Access decisions come from root-owned configuration and Slurm only: the site admins are read from
/etc/hpcai/site.toml through `load_trusted_site` (never `--site`, $HPCAI_SITE or HPCAI_* of the user),
and the user is the process's real uid (`hpc_aidc.ids.current_user`, never $USER). Slurm enforces the
same under PrivateData: slurmdbd gives a user their own jobs only, a coordinator their accounts' jobs.
`decide` is pure; `viewer` asks sacctmgr (two calls, three when the user coordinates accounts), which
under PrivateData=users,accounts still answers a user about themselves and their own associations."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from hpc_aidc.errors import AccessError, SiteProfileError, SlurmError
from hpc_aidc.report.aggregate import Filters
from hpc_aidc.scheduler.associations import user_associations
from hpc_aidc.scheduler.parse import slurmdbd_down_message, slurmdbd_unreachable
from hpc_aidc.site_profile import DEFAULT_SITE_PATH, load_trusted_site
from hpc_aidc.slurm_client import first_error_line, run_slurm

ADMIN_LEVELS = {"administrator", "operator"}


@dataclass(frozen=True)
class Viewer:
    user: str
    admin: bool
    accounts: frozenset[str]  # associations
    coordinated: frozenset[str] = frozenset()  # coordinated accounts and their sub-accounts

    @property
    def visible(self) -> frozenset[str]:
        return self.accounts | self.coordinated


def decide(viewer: Viewer, requested: Filters) -> Filters:
    """The filters a report may run with for `viewer`; AccessError for an account they may not see."""
    if viewer.admin:
        return requested
    visible = viewer.visible
    if not visible:
        raise AccessError(
            f"Expected user {viewer.user} to have an association with a Slurm account. Got none. "
            "Ask your project's coordinator to add you to the account."
        )
    denied = sorted(requested.accounts - visible)
    if denied:
        raise AccessError(
            f"Expected accounts that user {viewer.user} may see ({', '.join(sorted(visible))}). "
            f"Got {', '.join(denied)} instead. Ask that project's coordinator or your admins for its report."
        )
    return Filters(requested.accounts or visible, requested.users, requested.partitions)


def descendants(roots: Iterable[str], parents: Mapping[str, str]) -> frozenset[str]:
    """The accounts in `roots` and every account below them in the account tree."""
    out = set(roots)
    changed = True
    while changed:
        changed = False
        for child, parent in parents.items():
            if parent in out and child not in out:
                out.add(child)
                changed = True
    return frozenset(out)


def parse_user_line(text: str) -> tuple[bool, frozenset[str]]:
    """`sacctmgr -n -P show user U withcoord format=user,adminlevel,coordinators` -> (admin, coordinated)."""
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) >= 3:
            return parts[1].strip().lower() in ADMIN_LEVELS, frozenset(a for a in parts[2].split(",") if a)
    return False, frozenset()


def parse_parents(text: str) -> dict[str, str]:
    """`sacctmgr -n -P show assoc where user= format=account,parentname` -> {account: parent}."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        account, _, parent = line.partition("|")
        if account and parent:
            out[account] = parent
    return out


def trusted_admins(path: Path = DEFAULT_SITE_PATH) -> frozenset[str]:
    """The `admins` of the admin's own site profile; nobody when it is missing or anyone but root could
    have written it (Slurm's AdminLevel still counts: see `viewer`)."""
    try:
        return frozenset(load_trusted_site(path).admins)
    except SiteProfileError:
        return frozenset()


def private_jobs_note(viewer: Viewer, filters: Filters, private_data: Iterable[str]) -> str | None:
    """One line for stderr when Slurm's PrivateData=jobs limits a report to the viewer's own jobs in
    some of its accounts (those they neither administer nor coordinate); None when it does not."""
    if viewer.admin or "jobs" not in set(private_data):
        return None
    own_only = sorted((filters.accounts or viewer.visible) - viewer.coordinated)
    if not own_only:
        return None
    return (f"note: the cluster's PrivateData=jobs shows you only your own jobs in {', '.join(own_only)}; "
            "the project's coordinator or an admin sees all of its jobs.")


def parse_private_data(config: str) -> frozenset[str]:
    """`scontrol show config` -> its PrivateData items ({'jobs', 'usage', ...}; empty for none)."""
    from hpc_aidc.scheduler.site_check import parse_config_value

    value = parse_config_value(config, "PrivateData")
    return frozenset(v.strip().lower() for v in value.split(",") if v.strip() and v.strip().lower() != "none")


def private_data() -> frozenset[str]:
    """slurmctld's PrivateData setting (slurmdbd's is not readable by users; sites set both alike).
    Only for the note above: when scontrol does not answer, no note."""
    proc = run_slurm(["scontrol", "show", "config"], check=False)
    return parse_private_data(proc.stdout) if proc.returncode == 0 else frozenset()


def viewer(user: str, site_admins: Iterable[str]) -> Viewer:
    if user == "root":  # Slurm's super user sees everything (no need to ask slurmdbd)
        return Viewer(user, True, frozenset())
    proc = run_slurm(["sacctmgr", "--noheader", "--parsable2", "show", "user", user, "withcoord",
                      "format=user,adminlevel,coordinators"], check=False)
    if proc.returncode != 0 and slurmdbd_unreachable(proc.stderr):
        raise SlurmError(slurmdbd_down_message(proc.stderr, "A usage report"))
    if proc.returncode != 0:
        raise SlurmError(f"sacctmgr failed: {first_error_line(proc.stderr or proc.stdout)}")
    admin, coordinated = parse_user_line(proc.stdout)
    if admin or user in set(site_admins):
        return Viewer(user, True, frozenset())
    if coordinated:
        parents = parse_parents(run_slurm(["sacctmgr", "--noheader", "--parsable2", "show", "associations",
                                           "where", "user=", "format=account,parentname"]).stdout)
        coordinated = descendants(coordinated, parents)
    return Viewer(user, False, frozenset(user_associations(user)), coordinated)
