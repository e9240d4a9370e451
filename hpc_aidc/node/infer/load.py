"""Which engine runs a resolved model, loaded onto this process's device: a user's entry function, an HF
causal model or encoder (hpc_aidc.node.infer.encoder), or the built-in GPT from its DeepSpeed checkpoint
(consolidated once, cached beside it)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from hpc_aidc.errors import ConfigError, expected
from hpc_aidc.formats.model_source import ModelSource
from hpc_aidc.formats.sentence_model import EncoderRecipe
from hpc_aidc.node.infer.encoder import EncoderEngine
from hpc_aidc.node.infer.model import Engine, EntryEngine, GptEngine, HfEngine, pick_device, pick_dtype


def load_engine(source: ModelSource, precision: str, scratch: Path | None = None, task: str = "generate") -> Engine:
    """The engine for a resolved model and task, on this process's device."""
    if source.kind == "entry":
        from hpc_aidc.formats.entry import load_entry

        return EntryEngine(load_entry(source.path))

    device = pick_device()
    dtype = pick_dtype(precision, device)
    if source.kind == "hf":
        # an encoder (a plan from before recipes were recorded: the plain encoder's defaults), or a model
        # with a sentence-transformers layout asked for embeddings
        recipe = source.encoder or (None if source.causal else EncoderRecipe("hf"))
        if task == "embed" and recipe is not None:
            return EncoderEngine(source.path, recipe, dtype, device)
        return HfEngine(source.path, dtype, device)
    from hpc_aidc.node.model import GPT
    from hpc_aidc.spec.train import parse_train_config

    job = Path(source.path)
    config = parse_train_config(json.loads((job / "config.json").read_text()), str(job / "config.json"))
    model = GPT(config.model)
    model.load_state_dict(consolidated_weights(job / "checkpoints", source.tag, scratch))
    model = model.to(device=device, dtype=dtype).eval()
    return GptEngine(model, config.model.seq_len, config.model.vocab_size, _train_tokenizer(config), device)


def _train_tokenizer(config: Any) -> Any:
    from hpc_aidc.data.tokenize import load_tokenizer

    if config.data.kind == "zarr" and config.data.path:
        from hpc_aidc.data.spec import read_manifest

        info = read_manifest(config.data.path).tokenizer or {}
        if info.get("kind") == "hf" and info.get("path"):
            return load_tokenizer(str(info["path"]), int(info.get("eos_id", 0)))
    return load_tokenizer("bytes")


def consolidated_weights(ckpt: Path, tag: str, scratch: Path | None) -> dict[str, Any]:
    """fp32 weights of a DeepSpeed checkpoint, consolidated once with DeepSpeed's own API and cached beside
    it (or in `scratch` when the checkpoint is not ours to write); every task reuses the file."""
    import torch

    from hpc_aidc.fsutil import atomic_write_bytes, file_lock

    places = [ckpt / tag / "consolidated.pt"] + ([scratch / f"consolidated-{tag}.pt"] if scratch else [])
    for cached in places:
        if cached.is_file():
            return dict(torch.load(cached, map_location="cpu", weights_only=True))
    for cached in places:
        try:
            with file_lock(cached.with_name(f".{cached.name}.lock")):
                if cached.is_file():
                    return dict(torch.load(cached, map_location="cpu", weights_only=True))
                from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

                with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
                    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=tag)
                import io

                buf = io.BytesIO()
                torch.save(dict(state), buf)
                atomic_write_bytes(cached, buf.getvalue())
                return dict(state)
        except PermissionError:
            continue
    raise ConfigError(expected(f"to write the consolidated weights beside {ckpt / tag}", "permission denied",
                               "Run inference as the user who trained, or copy the job directory."))
