"""A data pack job's work in its allocation. Each array task writes its own shards:

    python -m hpc_aidc.node.pack_job OUT --tasks N --engine E      (task index: $SLURM_ARRAY_TASK_ID)

and the finalize job, once every task has ended, writes the manifest:

    python -m hpc_aidc.node.pack_job OUT --finalize

The plan was written before submission (`hpcai data pack` prepares it), so the tasks only read it."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from hpc_aidc.data.pack import ENGINES, finalize_pack, pack_task

    parser = argparse.ArgumentParser(prog="python -m hpc_aidc.node.pack_job")
    parser.add_argument("out")
    parser.add_argument("--tasks", type=int, default=1)
    parser.add_argument("--engine", choices=ENGINES, default="direct")
    parser.add_argument("--finalize", action="store_true")
    args = parser.parse_args(argv)
    if args.finalize:
        manifest = finalize_pack(args.out)
        print(f"finalized {args.out}: {manifest.num_samples} samples in {manifest.num_shards} shards", flush=True)
        return 0
    task = int(os.environ.get("SLURM_ARRAY_TASK_ID", "0"))
    written = pack_task(args.out, task, args.tasks, args.engine)
    print(f"task {task} of {args.tasks}: wrote shards {written}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
