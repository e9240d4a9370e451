"""Which Slurm accounts (projects) and QoS a user may use, from sacctmgr in one call."""

from __future__ import annotations

from hpc_aidc.errors import AccessError
from hpc_aidc.slurm_client import run_slurm


def parse_associations(text: str) -> dict[str, set[str]]:
    """`sacctmgr -n -P show assoc where user=U format=account,qos` -> {account: {qos, ...}}."""
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        account, _, qos = line.partition("|")
        out.setdefault(account.strip(), set()).update(q for q in qos.strip().split(",") if q)
    return out


def user_associations(user: str) -> dict[str, set[str]]:
    return parse_associations(run_slurm(["sacctmgr", "--noheader", "--parsable2", "show", "associations",
                                         "where", f"user={user}", "format=account,qos"]).stdout)


def check_association(user: str, account: str | None, qos: str | None) -> None:
    """Refuse an account or QoS the user may not use before sbatch refuses it less clearly."""
    if account is None and qos is None:
        return
    assocs = user_associations(user)
    if account is not None and account not in assocs:
        known = ", ".join(sorted(assocs)) or "none"
        raise AccessError(
            f"Expected an account that user {user} is associated with ({known}). Got {account!r} instead. "
            "Pick one of those with --account, or ask the project's coordinator to add you."
        )
    if qos is None:
        return
    allowed = assocs[account] if account is not None else set().union(*assocs.values()) if assocs else set()
    if allowed and qos not in allowed:
        where = f"account {account}" if account else f"user {user}"
        raise AccessError(
            f"Expected a QoS allowed for {where} ({', '.join(sorted(allowed))}). Got {qos!r} instead. "
            "Pick one of those with --qos."
        )
