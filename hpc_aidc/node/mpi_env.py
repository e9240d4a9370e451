"""Rank discovery for `--launcher mpirun`: the site's MPI starts the ranks inside the allocation, and
mpi4py tells each one where it sits. Used where sites launch through their MPI stack instead of srun."""

from __future__ import annotations

import os
import socket

from hpc_aidc.node.slurm_env import RankInfo, port_range, rendezvous_port


def mpi_rank_info() -> RankInfo:
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    # Ranks sharing a node share memory; their order within the node is the local rank (GPU binding).
    node = world.Split_type(MPI.COMM_TYPE_SHARED, key=world.rank)
    # Rank 0's node name is the rendezvous host; Slurm's name for it resolves on every node.
    master = world.bcast(os.environ.get("SLURMD_NODENAME") or socket.gethostname(), root=0)
    leaders = world.allgather(world.rank if node.rank == 0 else -1)
    node_rank = sorted(r for r in leaders if r >= 0).index(node.bcast(world.rank, root=0))
    job_id = os.environ.get("SLURM_JOB_ID", "0")
    port = rendezvous_port(job_id, port_range(os.environ))
    return RankInfo(rank=world.rank, world_size=world.size, local_rank=node.rank, local_world_size=node.size,
                    node_rank=node_rank, master_addr=master, master_port=port, job_id=job_id)
