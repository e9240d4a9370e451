"""The energy store's layout: where a job's records live, the names and modes of its directories and
files, and whom they belong to.

Layout under the site's energy_store (see SECURITY.md for who trusts what):
  <jobid>/                       the job; root:<project group> 0750 when the prolog made it (trusted),
                                 owned by the job's user on sites where jobs sample themselves
  <jobid>/r<N>/                  run N of the job (Slurm's restart count: a requeued job runs again)
  <jobid>/r<N>/<node>.lock       flock held by the one sampler of this run on this node; holds its pid
  <jobid>/r<N>/<node>.{meta.json,series.bin,end.json,summary.json}
  <jobid>/r<N>/work/             the job's user reports work here (tokens, samples): work.<node>.<pid>; the
                                 node epilog takes it back (root's, 0700) when the run ends there and counts
                                 that node's reports once, bounded, into <jobid>/r<N>/<node>.work.json
  accounting/                    drop box for EpilogSlurmctld (root:<SlurmUser group> 2770, made by the
                                 admin): <jobid>.r<N>.<node> node lines, <jobid>.r<N> run lines, spool/

Everything is opened relative to a directory fd with O_NOFOLLOW and checked with fstat (record_dir), so
root never follows a link a user planted and never reads a file a user swapped in. A store root that is
not root-owned, or that others may write without the sticky bit, is refused (root)."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
from dataclasses import dataclass

from hpc_aidc.errors import EnergyError

DIR_MODE = 0o2750
FILE_MODE = 0o640
WORK_DIR = "work"
ACCOUNTING = "accounting"
SPOOL = "spool"
RUN_DIR = re.compile(r"^r([0-9]{1,6})$")  # a run's directory, as run_name names it
_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int


def owner_for(user: str | None, account: str | None) -> Owner:
    """The job user's uid and the project's gid (a Unix group named like the account, when the user is
    in it), falling back to the user's primary group; the current process's ids when the user is
    unknown."""
    try:
        pw = pwd.getpwnam(user) if user else pwd.getpwuid(os.getuid())
    except KeyError:
        return Owner(os.getuid(), os.getgid())
    gid = pw.pw_gid
    if account:
        with contextlib.suppress(KeyError):
            group = grp.getgrnam(account)
            if pw.pw_name in group.gr_mem or group.gr_gid == pw.pw_gid:
                gid = group.gr_gid
    return Owner(pw.pw_uid, gid)


def check_node(node: str) -> str:
    if not _NODE.match(node):
        raise EnergyError(f"Expected a node name of letters, digits, '_', '.', '-'. Got {node!r} instead. "
                          "Pass --node or run inside a job.")
    return node


def run_name(run: int) -> str:
    return f"r{run}"
