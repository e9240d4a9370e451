"""User models through `--entry package.module:function`: function(TrainConfig) returns an nn.Module
whose forward(tokens) returns the loss, or a DeepSpeed PipelineModule."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from hpc_aidc.errors import SpecError


def load_entry(entry: str) -> Callable[..., Any]:
    module_name, sep, attr = entry.partition(":")
    if not sep or not module_name or not attr:
        raise SpecError(f"Expected --entry as package.module:function. Got {entry!r} instead.")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import failure of user code is a bad --entry
        raise SpecError(f"Expected --entry module {module_name!r} to import. Got {type(exc).__name__}: {exc}. "
                        "Check PYTHONPATH and the module name.") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise SpecError(f"Expected a function {attr!r} in {module_name}. Got {type(fn).__name__}. "
                        "Check the name after ':'.")
    return fn  # type: ignore[no-any-return]
