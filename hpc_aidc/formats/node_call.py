"""The job entry points submitit pickles, named rather than imported: the login side hands submitit a
`NodeCall` (module and function names), and only the job, inside its allocation, imports the node code
and calls it. So `hpcai submit` never imports torch-side code, and the pickle holds no reference to it."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NodeCall:
    module: str
    function: str

    def __call__(self, *args: Any) -> Any:
        return getattr(importlib.import_module(self.module), self.function)(*args)


TRAIN = NodeCall("hpc_aidc.node.train", "train_task")           # one TrainTask
RUN_COMMAND = NodeCall("hpc_aidc.node.run_command", "run_command")  # the user's argv
