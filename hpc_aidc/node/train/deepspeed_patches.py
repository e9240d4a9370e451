"""Workarounds applied once at a rank's start, before DeepSpeed starts its process group: they cut
start-up time and log noise and change nothing a training step computes."""

from __future__ import annotations

import os


def quiet_renamed_collectives() -> None:
    """torch warns on every ZeRO collective that DeepSpeed still calls by its old name: two lines per
    step in every rank's log, and their cost shows in the step time of small models."""
    import warnings

    renamed = r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated"
    warnings.filterwarnings("ignore", category=FutureWarning, message=renamed)


def skip_inference_shm_kernel() -> None:
    """DeepSpeed's CPU backend JIT-builds a shared-memory all-reduce kernel when the process group starts
    (minutes on a fresh install, a ninja up-to-date check on every start after), and probes every op's
    compiler support to decide. Only its inference all-reduce uses that kernel; training never does, so
    it is skipped. GPU backends never build it."""
    import importlib

    # imported by name: `deepspeed.comm.torch` as an attribute is the torch package itself
    ds_comm_torch = importlib.import_module("deepspeed.comm.torch")
    if hasattr(ds_comm_torch, "build_shm_op"):
        setattr(ds_comm_torch, "build_shm_op", lambda: None)  # noqa: B010 (a module attribute mypy can't see)


def import_muon_without_compiling() -> None:
    """DeepSpeed's ZeRO code imports its Muon optimizer on every run (to list it as supported), and that
    module wraps its kernels in torch.compile at import, which loads Inductor: about a second on every
    rank's start. hpc-aidc trains with AdamW, so the module is imported here with dynamo off (its kernels
    stay eager); torch.compile calls after this, a user model's included, are unaffected."""
    import importlib

    previous = os.environ.get("TORCHDYNAMO_DISABLE")
    os.environ["TORCHDYNAMO_DISABLE"] = "1"
    try:
        importlib.import_module("deepspeed.runtime.zero.muon.muon_optimizer")
    except ImportError:
        pass  # a DeepSpeed without Muon: nothing to avoid
    finally:
        if previous is None:
            del os.environ["TORCHDYNAMO_DISABLE"]
        else:
            os.environ["TORCHDYNAMO_DISABLE"] = previous
