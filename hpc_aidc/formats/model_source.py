"""Where an inference model comes from (a `submit train` job or checkpoint directory, a local Hugging Face
directory, or a user function) and its fingerprint: resolved on the login node from configs and file sizes
(no weights), recorded in the run's plan, and read again by the array tasks."""


from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpc_aidc.errors import ConfigError, expected
from hpc_aidc.formats.sentence_model import EncoderRecipe, encoder_recipe, module_files

_HEAD_TAIL = 1 << 20
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass(frozen=True)
class ModelSource:
    """What --model names, resolved on the login node (cheap: configs and file sizes, no weights)."""

    kind: str  # hpcai | hf | entry
    path: str  # directory, or module:function for entry
    fingerprint: str
    causal: bool  # can generate and score
    context: int | None  # longest sequence the model takes (positions), None: unbounded
    hidden: int | None  # embedding width
    vocab_size: int | None
    tag: str = ""  # hpcai: the checkpoint tag used
    encoder: EncoderRecipe | None = None  # hf: how --task embed turns text into a vector (None: a causal LM's mean)

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["encoder"] = self.encoder.to_json() if self.encoder is not None else None
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelSource:
        encoder = d.get("encoder")
        return cls(**{**d, "encoder": EncoderRecipe.from_json(encoder) if encoder else None})


def _file_print(path: Path) -> str:
    """Name, size and the first and last MiB of a (possibly huge) weight file."""
    size = path.stat().st_size
    digest = hashlib.sha256(f"{path.name}:{size}".encode())
    with path.open("rb") as fh:
        digest.update(fh.read(_HEAD_TAIL))
        if size > 2 * _HEAD_TAIL:
            fh.seek(size - _HEAD_TAIL)
            digest.update(fh.read(_HEAD_TAIL))
    return digest.hexdigest()


def _tree_print(root: Path, files: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for f in sorted(files):
        digest.update(str(f.relative_to(root)).encode())
        digest.update(_file_print(f).encode())
    return digest.hexdigest()


def resolve_model(src: str, task: str) -> ModelSource:
    """The model behind --model (or --entry), checked against the task; ConfigError with a fix."""
    path = Path(src)
    if not path.exists() and ":" in src and "/" not in src.split(":", 1)[0]:
        return _resolve_entry(src)
    if not path.is_dir():
        raise ConfigError(expected("--model to be a `hpcai submit train` job or checkpoint directory, a local "
                                   "Hugging Face model directory, or --entry package.module:function", src,
                                   "Check the path (models are never downloaded)."))
    path = path.resolve()
    if (path / "checkpoints").is_dir() or (path / "latest").is_file():
        source = _resolve_hpcai(path)
    elif (path / "config.json").is_file():
        source = _resolve_hf(path)
    else:
        raise ConfigError(expected("a model directory with checkpoints/ (a train job), `latest` (a checkpoint "
                                   "directory) or config.json (Hugging Face)", str(path), "Point --model at one."))
    if task in ("generate", "score") and not source.causal:
        raise ConfigError(expected(f"a causal language model for --task {task}", f"{path} (an encoder)",
                                   "Use --task embed with an encoder, or a causal LM."))
    return source


def _resolve_hpcai(path: Path) -> ModelSource:
    from hpc_aidc.formats.checkpoint_layout import latest_tag
    from hpc_aidc.spec.train import parse_train_config

    ckpt = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    job = ckpt.parent
    tag = latest_tag(ckpt)
    if tag is None:
        raise ConfigError(expected(f"a complete checkpoint in {ckpt}", "none (no `latest`, or it is incomplete)",
                                   "Wait for the training job to save one, or point --model at another job."))
    config_file = job / "config.json"
    if not config_file.is_file():
        raise ConfigError(expected(f"the training config {config_file} beside the checkpoints", "no such file",
                                   "Point --model at the job directory `hpcai submit train` made."))
    config = parse_train_config(json.loads(config_file.read_text()), str(config_file))
    if config.train.entry or config.train.pipeline_stages > 1:
        raise ConfigError(expected("a checkpoint of the built-in GPT (no --entry model, no pipeline stages)",
                                   str(job), "Export your model to a Hugging Face directory instead."))
    files = [p for p in (ckpt / tag).rglob("*") if p.is_file() and not p.name.startswith((".", "consolidated"))]
    digest = hashlib.sha256(config_file.read_bytes() + tag.encode() + _tree_print(ckpt / tag, files).encode())
    m = config.model
    return ModelSource("hpcai", str(job), digest.hexdigest(), True, m.seq_len, m.d_model, m.vocab_size, tag)


def _resolve_hf(path: Path) -> ModelSource:
    try:
        cfg = json.loads((path / "config.json").read_text())
    except ValueError as exc:
        raise ConfigError(f"Expected valid JSON in {path / 'config.json'}. Got: {exc}. Check the model.") from None
    weights = [p for p in path.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".pt", ".pth")
               and "optimizer" not in p.name]
    if not weights:
        raise ConfigError(expected(f"model weights (*.safetensors or *.bin) in {path}", "none",
                                   "Save the model with save_pretrained() into that directory."))
    archs = [str(a) for a in cfg.get("architectures") or []]
    causal = any(a.endswith(_CAUSAL_SUFFIXES) for a in archs) or bool(cfg.get("is_decoder"))
    context = cfg.get("n_positions") or cfg.get("max_position_embeddings")
    hidden = cfg.get("hidden_size") or cfg.get("n_embd") or cfg.get("d_model")
    # a sentence-transformers layout is run as that library runs it, causal or not; a plain encoder gets
    # its defaults; a plain causal LM embeds as the mean of its last hidden state
    has_modules = (path / "modules.json").is_file()
    encoder = encoder_recipe(path) if has_modules or not causal else None
    meta = [p for p in path.iterdir() if p.is_file() and p.suffix in (".json", ".txt", ".model")]
    fp = _tree_print(path, sorted({*weights, *meta, *module_files(path)}))
    if encoder is not None:  # how the vector is made is part of what a finished shard was made with
        fp = hashlib.sha256(f"{fp}:{json.dumps(encoder.to_json(), sort_keys=True)}".encode()).hexdigest()
    width = int(hidden) if hidden else None
    return ModelSource("hf", str(path), fp, causal, int(context) if context else None,
                       encoder.width(width) if encoder is not None else width, cfg.get("vocab_size"),
                       encoder=encoder)


def _resolve_entry(spec: str) -> ModelSource:
    from hpc_aidc.formats.entry import load_entry

    fn = load_entry(spec)
    try:
        source_file = Path(fn.__code__.co_filename)
        code = source_file.read_bytes()
    except (AttributeError, OSError):
        code = spec.encode()
    return ModelSource("entry", spec, hashlib.sha256(spec.encode() + code).hexdigest(), True, None, None, None)


# ---------------------------------------------------------------------------------------------------------
# Engines (torch; imported only inside jobs)
