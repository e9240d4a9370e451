"""Kept for batch scripts written before the task runner moved to hpc_aidc.node.infer.run: an inference
array task that is pending or requeued across an upgrade still runs `python -m hpc_aidc.node.infer_run`."""

from __future__ import annotations

import sys

from hpc_aidc.node.infer.run import main

if __name__ == "__main__":
    sys.exit(main())
