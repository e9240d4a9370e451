"""The encoder engine: a local Hugging Face encoder run as sentence-transformers runs it (the recipe in
hpc_aidc.formats.sentence_model). Rows are padded on the right, so every real token keeps its position
and attends to the same tokens as when the row runs alone: a row's vector does not depend on its batch
beyond floating-point rounding."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hpc_aidc.formats.sentence_model import EncoderRecipe
from hpc_aidc.node.infer.model import Engine, quiet_loading


def pool(hidden: Any, mask: Any, modes: Sequence[str], prompt_length: int = 0) -> Any:
    """sentence-transformers' Pooling over right-padded rows: the modes' vectors side by side.
    `prompt_length` tokens at the start are left out of every mode (include_prompt false)."""
    import torch

    full = mask
    if prompt_length:
        mask = mask.clone()
        mask[:, :prompt_length] = False
    acc = hidden.float() if hidden.dtype in (torch.float16, torch.bfloat16) else hidden
    weights = mask[..., None].to(acc.dtype)
    count = weights.sum(1).clamp(min=1e-9)
    out = []
    for mode in modes:
        if mode == "cls":
            first = mask.int().argmax(1)
            out.append(hidden[torch.arange(hidden.shape[0]), first])
        elif mode == "max":
            out.append(hidden.masked_fill(~mask[..., None], float("-inf")).max(1).values)
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            total = (acc * weights).sum(1)
            out.append((total / (count if mode == "mean" else count.sqrt())).to(hidden.dtype))
        elif mode == "weightedmean":
            position = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=acc.dtype)[None, :, None]
            w = weights * position
            out.append(((acc * w).sum(1) / w.sum(1).clamp(min=1e-9)).to(hidden.dtype))
        elif mode == "lasttoken":
            last = (full.long().sum(1) - 1).clamp(min=0)
            picked = hidden[torch.arange(hidden.shape[0]), last]
            out.append(picked * mask[torch.arange(hidden.shape[0]), last][:, None].to(hidden.dtype))
        else:
            raise ValueError(f"unknown pooling mode {mode!r}")
    return torch.cat(out, dim=-1)


class EncoderEngine(Engine):
    """AutoModel's last hidden state, pooled, through the Dense layers; never downloads."""

    def __init__(self, path: str, recipe: EncoderRecipe, dtype: Any, device: Any) -> None:
        from transformers import AutoModel, AutoTokenizer

        quiet_loading()
        self.recipe = recipe
        self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True, dtype=dtype).to(device).eval()
        self.device = device
        cfg = self.model.config
        positions = getattr(cfg, "max_position_embeddings", None)
        if recipe.max_seq_length is not None:
            limit = recipe.max_seq_length
        else:  # sentence-transformers: the tokenizer's own limit, capped by the positions the model has
            limit = int(self.tok.model_max_length)
            if isinstance(positions, int) and positions > 0:
                limit = min(limit, positions)
        self.context = limit
        self.vocab_size = getattr(cfg, "vocab_size", None)
        if recipe.lower_case:
            _lower_case_first(self.tok)
        self.prompt_length = self._prompt_length() if recipe.prompt and not recipe.include_prompt else 0
        self.dense = [_load_dense(Path(path) / layer.path, layer, dtype, device) for layer in recipe.dense]

    def encode(self, text: str) -> list[int]:
        """The row's tokens as sentence-transformers makes them: prompt, then truncation at the limit
        (on the tokenizer's truncation side, special tokens kept)."""
        ids = self.tok(self.recipe.prompt + text, truncation=True, max_length=self.context)["input_ids"]
        return [int(i) for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tok.decode(list(ids), skip_special_tokens=True))

    def embed(self, seqs: Sequence[Sequence[int]]) -> Any:
        import torch

        with torch.inference_mode():
            width = max(len(s) for s in seqs)
            pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
            ids = torch.full((len(seqs), width), int(pad), dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.bool)
            for i, s in enumerate(seqs):
                ids[i, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
                mask[i, :len(s)] = True
            ids, mask = ids.to(self.device), mask.to(self.device)
            hidden = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
            vectors = pool(hidden, mask, self.recipe.pooling, self.prompt_length)
            for layer in self.dense:
                vectors = layer(vectors.to(layer.weight.dtype))
        return vectors.float().cpu().numpy()

    def _prompt_length(self) -> int:
        """The prompt's tokens, without a trailing special token (sentence-transformers' count)."""
        ids = self.tok(self.recipe.prompt, truncation=True, max_length=self.context)["input_ids"]
        return len(ids) - (1 if ids and ids[-1] in set(self.tok.all_special_ids) else 0)


def _lower_case_first(tok: Any) -> None:
    """do_lower_case: a Lowercase normaliser first, unless the tokenizer lower-cases already (as
    sentence-transformers does it, so the same characters fold the same way)."""
    from tokenizers.normalizers import Lowercase
    from tokenizers.normalizers import Sequence as NormalizerSequence

    backend = tok.backend_tokenizer
    current = backend.normalizer
    # tokenizers' Sequence is iterable at run time; its stubs do not say so
    inner: list[Any] = list(current) if isinstance(current, NormalizerSequence) else []  # type: ignore[call-overload]
    if isinstance(current, Lowercase) or any(isinstance(n, Lowercase) for n in inner):
        return
    steps: list[Any] = [Lowercase()]
    if isinstance(current, NormalizerSequence):
        steps += inner
    elif current is not None:
        steps.append(current)
    backend.normalizer = NormalizerSequence(steps)


class _Dense:
    def __init__(self, weight: Any, bias: Any, activation: str) -> None:
        self.weight, self.bias, self.activation = weight, bias, activation

    def __call__(self, x: Any) -> Any:
        import torch
        import torch.nn.functional as F

        y = F.linear(x, self.weight, self.bias)
        functions = {"identity": lambda v: v, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": F.relu,
                     "gelu": F.gelu}
        return functions[self.activation](y)


def _load_dense(folder: Path, layer: Any, dtype: Any, device: Any) -> _Dense:
    import torch

    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(folder / "model.safetensors"))
    else:
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    weight = state["linear.weight"].to(device=device, dtype=dtype)
    if tuple(weight.shape) != (layer.out_features, layer.in_features):
        raise ValueError(f"{folder}: linear.weight is {tuple(weight.shape)}, the config says "
                         f"({layer.out_features}, {layer.in_features})")
    bias = state["linear.bias"].to(device=device, dtype=dtype) if layer.bias else None
    return _Dense(weight, bias, layer.activation)
