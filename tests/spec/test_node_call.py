"""Jobs' entry points are named, not imported, on the login side (formats/node_call.py): submitit pickles a
NodeCall, and only the job imports the node code it names."""

from __future__ import annotations

import pickle
import subprocess
import sys

from hpc_aidc.formats.node_call import RUN_COMMAND, TRAIN, NodeCall


def test_a_node_call_pickles_by_name_and_imports_only_when_called() -> None:
    call = NodeCall("os.path", "join")
    assert pickle.loads(pickle.dumps(call)) == call
    assert call("a", "b") == "a/b"
    assert (TRAIN.module, TRAIN.function) == ("hpc_aidc.node.train", "train_task")
    assert (RUN_COMMAND.module, RUN_COMMAND.function) == ("hpc_aidc.node.run_command", "run_command")


def test_submitting_imports_no_node_code() -> None:
    code = ("import sys; import hpc_aidc.cli.submit_group, hpc_aidc.formats.train_task; "
            "print(sorted(m for m in sys.modules if m.startswith('hpc_aidc.node')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert proc.stdout.strip() == "[]"
