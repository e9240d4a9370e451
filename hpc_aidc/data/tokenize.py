"""Tokenizers for text packs: a built-in byte-level one (vocabulary 257: the 256 byte values plus an
end-of-document token) and local Hugging Face `tokenizers` JSON files (never downloaded)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpc_aidc.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

BYTE_EOS = 256
_EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>", "[SEP]", "<|end_of_text|>")


@dataclass(frozen=True)
class Tokenizer:
    """`info` is what the manifest records; `path` is empty for the byte-level tokenizer."""

    kind: str
    vocab_size: int
    eos_id: int
    path: str = ""

    @property
    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"kind": self.kind, "vocab_size": self.vocab_size, "eos_id": self.eos_id}
        if self.path:
            info["path"] = self.path
            info["sha256"] = hashlib.sha256(Path(self.path).read_bytes()).hexdigest()
        return info

    def encode_documents(self, texts: Sequence[str]) -> list[npt.NDArray[np.int64]]:
        """Token ids of each document, each followed by the end-of-document token."""
        import numpy as np

        if self.kind == "bytes":
            return [np.append(np.frombuffer(t.encode(), dtype=np.uint8).astype(np.int64), BYTE_EOS)
                    for t in texts]
        hf = _hf_tokenizer(self.path)
        return [np.array([*enc.ids, self.eos_id], dtype=np.int64) for enc in hf.encode_batch(list(texts))]


def _hf_tokenizer(path: str) -> Any:
    try:
        from tokenizers import Tokenizer as HfTokenizer
    except ImportError:
        raise ConfigError(
            "Expected the `tokenizers` package for --tokenizer FILE.json. Got it not installed. "
            "Install it (pip install tokenizers) or use the built-in --tokenizer bytes."
        ) from None
    return HfTokenizer.from_file(path)


def load_tokenizer(name: str | None, eos_id: int | None = None) -> Tokenizer:
    """`None` or "bytes": the byte-level tokenizer; otherwise a local tokenizers JSON file."""
    if name in (None, "bytes"):
        return Tokenizer("bytes", 257, BYTE_EOS)
    path = Path(name)
    if not path.is_file():
        raise ConfigError(
            f"Expected --tokenizer to be 'bytes' or a local tokenizers JSON file. Got {name!r} (no such "
            "file) instead. Save the tokenizer with tokenizer.save('tok.json') and pass that path."
        )
    try:
        hf = _hf_tokenizer(str(path))
    except Exception as exc:  # the tokenizers library raises plain Exceptions for bad files
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(
            f"Expected a valid tokenizers JSON file at {path}. Got: {exc}. Check the file."
        ) from None
    if eos_id is None:
        eos_id = next((i for i in (hf.token_to_id(n) for n in _EOS_NAMES) if i is not None), None)
    if eos_id is None:
        raise ConfigError(
            f"Expected an end-of-document token in {path} (one of {', '.join(_EOS_NAMES)}). "
            "Got none. Pass --eos-id N."
        )
    return Tokenizer("hf", int(hf.get_vocab_size(with_added_tokens=True)), int(eos_id), str(path.resolve()))
