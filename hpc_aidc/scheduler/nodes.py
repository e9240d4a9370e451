"""Node state changes for admin tools (the prolog's GPU check): one scontrol call each."""

from __future__ import annotations

from hpc_aidc.slurm_client import run_slurm


def drain_node(node: str, reason: str) -> None:
    """Drain `node` with `reason` (running jobs finish, no new ones start). Raises SlurmError."""
    run_slurm(["scontrol", "update", f"nodename={node}", "state=drain", f"reason={reason}"], timeout=20)


def node_reason(node: str) -> tuple[str, str]:
    """(state, reason) of a node, from `scontrol show node -o`."""
    from hpc_aidc.scheduler.parse import parse_key_values

    record = parse_key_values(run_slurm(["scontrol", "show", "node", "-o", node]).stdout.strip())
    return record.get("State", ""), record.get("Reason", "")
