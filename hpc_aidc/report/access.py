"""Who may see which project's report (Slurm's PrivateData idea, per account): a user sees the
accounts they have an association with, a coordinator the accounts they coordinate (and their
sub-accounts), Slurm admins/operators and the site profile's admins see all. `decide` is pure; `viewer`
asks sacctmgr (two calls, three when the user coordinates accounts)."""

from __future__ import annotations

import getpass
import os
import pwd
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from hpc_aidc.errors import AccessError
from hpc_aidc.report.aggregate import Filters
from hpc_aidc.scheduler.associations import user_associations
from hpc_aidc.scheduler.slurm_cli import run_slurm

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


def current_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return getpass.getuser()


def viewer(user: str, site_admins: Iterable[str]) -> Viewer:
    admin, coordinated = parse_user_line(run_slurm(
        ["sacctmgr", "--noheader", "--parsable2", "show", "user", user, "withcoord",
         "format=user,adminlevel,coordinators"]).stdout)
    if admin or user in set(site_admins):
        return Viewer(user, True, frozenset())
    if coordinated:
        parents = parse_parents(run_slurm(["sacctmgr", "--noheader", "--parsable2", "show", "associations",
                                           "where", "user=", "format=account,parentname"]).stdout)
        coordinated = descendants(coordinated, parents)
    return Viewer(user, False, frozenset(user_associations(user)), coordinated)
