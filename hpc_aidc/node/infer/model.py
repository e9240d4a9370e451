"""The engines that run batch-inference models (their sources and fingerprints: hpc_aidc.formats.model_source).

Engines take token ids and give back tokens, log-likelihoods or embeddings for a batch of rows. A decoder's
prompts are left-padded with an attention mask and explicit positions (an encoder's: right-padded, in
encoder.py), so a row's result does not depend on which rows share its batch beyond floating-point
rounding (tests/infer/test_batch_invariance.py); the runner forms the same batches on every
run, so a resumed run is bitwise equal to a one-shot run. Generation keeps a KV cache (the built-in GPT
and HF models alike) and samples each row with its own generator seeded by (seed, row id)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hpc_aidc.formats.model_source import ModelSource, resolve_model

__all__ = ["Engine", "ModelSource", "resolve_model", "row_seed"]


@dataclass(frozen=True)
class Generated:
    tokens: list[int]
    finish_reason: str  # stop | length


class Engine:
    """The interface the runner uses; token-level engines implement `_forward`."""

    eos_id: int | None = None
    context: int | None = None
    vocab_size: int | None = None
    token_level = True  # False: the engine takes text (a user function)

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def generate(self, prompts: Sequence[Sequence[int]], seeds: Sequence[int], params: Any) -> list[Generated]:
        import torch

        with torch.inference_mode():
            return _generate_loop(self, prompts, seeds, params)

    def score(self, seqs: Sequence[Sequence[int]]) -> list[tuple[float, int]]:
        import torch

        with torch.inference_mode():
            ids, mask, positions = _left_pad(seqs, self.device)
            logits, _ = self._forward(ids, mask, positions, None, all_logits=True)
            logp = torch.log_softmax(logits.float(), dim=-1)[:, :-1]
            picked = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
            valid = mask[:, :-1] & mask[:, 1:]
            totals = (picked * valid).sum(-1).double().cpu().tolist()
            counts = valid.sum(-1).cpu().tolist()
        return [(float(t), int(c)) for t, c in zip(totals, counts, strict=True)]

    def embed(self, seqs: Sequence[Sequence[int]]) -> Any:
        """Mean over each row's tokens of the last hidden state: a float32 numpy array [rows, width]
        (decoders; encoders: hpc_aidc.node.infer.encoder)."""
        import torch

        with torch.inference_mode():
            ids, mask, positions = _left_pad(seqs, self.device)
            hidden = self._hidden(ids, mask, positions).float()
            weights = mask[..., None].float()
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return pooled.cpu().numpy()

    # token-level engines
    device: Any = None

    def _forward(self, ids: Any, mask: Any, positions: Any, cache: Any, all_logits: bool = False,
                 reserve: int = 0) -> tuple[Any, Any]:
        """Logits (last position, or all) and the KV cache; `reserve`: positions generation will add."""
        raise NotImplementedError

    def _hidden(self, ids: Any, mask: Any, positions: Any) -> Any:
        raise NotImplementedError


def _left_pad(seqs: Sequence[Sequence[int]], device: Any) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = True
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def _choose(logits: Any, seeds: Sequence[int], gens: list[Any], params: Any) -> list[int]:
    """The next token of every row: argmax (greedy) or a sample from the row's own generator after
    temperature, top-k and top-p (computed in fp32 on the CPU, so the same on any batch)."""
    import torch

    if params.temperature == 0.0:
        return [int(i) for i in logits.argmax(-1).cpu().tolist()]
    out = []
    cpu = logits.float().cpu() / params.temperature
    for i in range(cpu.shape[0]):
        row = cpu[i]
        if params.top_k:
            kth = torch.topk(row, min(params.top_k, row.shape[-1])).values[-1]
            row = row.masked_fill(row < kth, float("-inf"))
        probs = torch.softmax(row, -1)
        if params.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < params.top_p
            filtered = torch.zeros_like(probs)
            filtered[order[keep]] = probs[order[keep]]
            probs = filtered / filtered.sum()
        out.append(int(torch.multinomial(probs, 1, generator=gens[i]).item()))
    return out


def row_seed(seed: int, row_id: str) -> int:
    """A row's own sampling seed: independent of batching, tasks and restarts."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{row_id}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def _generate_loop(engine: Engine, prompts: Sequence[Sequence[int]], seeds: Sequence[int],
                   params: Any) -> list[Generated]:
    import torch

    gens = [torch.Generator().manual_seed(s) for s in seeds] if params.temperature else []
    ids, mask, positions = _left_pad(prompts, engine.device)
    logits, cache = engine._forward(ids, mask, positions, None, reserve=params.max_new_tokens)
    out: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    reasons = ["length"] * len(prompts)
    last = positions[:, -1:]
    for step in range(params.max_new_tokens):
        nxt = _choose(logits, seeds, gens, params)
        for i, tok in enumerate(nxt):
            if not done[i]:
                out[i].append(tok)
                if engine.eos_id is not None and tok == engine.eos_id:
                    done[i], reasons[i] = True, "stop"
        if all(done) or step == params.max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((mask.shape[0], 1), dtype=torch.bool, device=mask.device)], dim=1)
        last = last + 1
        step_ids = torch.as_tensor(nxt, dtype=torch.long, device=ids.device)[:, None]
        logits, cache = engine._forward(step_ids, mask, last, cache)
    return [Generated(tokens, reason) for tokens, reason in zip(out, reasons, strict=True)]


def pick_dtype(precision: str, device: Any) -> Any:
    import torch

    if precision == "fp32" or (precision == "auto" and device.type == "cpu"):
        return torch.float32
    if precision == "fp16":
        return torch.float16
    if precision == "auto" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def pick_device() -> Any:
    """This process's GPU, else the CPU. With one GPU visible per process (Slurm's per-task binding) it
    is that one; when a task's processes all see the task's GPUs, process SLURM_LOCALID takes the
    LOCALID-th of them."""
    import torch

    if torch.cuda.is_available():
        index = int(os.environ.get("SLURM_LOCALID", "0") or 0) % torch.cuda.device_count()
        torch.cuda.set_device(index)
        torch.backends.cuda.matmul.allow_tf32 = True
        return torch.device("cuda", index)
    return torch.device("cpu")


class GptEngine(Engine):
    """The built-in GPT of `hpcai submit train` with a KV cache (reads its modules; trains nothing)."""

    def __init__(self, model: Any, context: int, vocab_size: int, tokenizer: Any, device: Any) -> None:
        self.model, self.context, self.vocab_size, self.device = model, context, vocab_size, device
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_id if tokenizer.eos_id < vocab_size else None

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode_documents([text])[0][:-1]]  # without the end token

    def decode(self, ids: Sequence[int]) -> str:
        if self.tokenizer.kind == "bytes":
            return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
        from hpc_aidc.data.tokenize import _hf_tokenizer

        return str(_hf_tokenizer(self.tokenizer.path).decode(list(ids)))

    def _blocks(self, ids: Any, mask: Any, positions: Any, cache: Any, reserve: int = 0) -> tuple[Any, Any]:
        """The blocks over `ids` (new positions), reading and extending a KV cache that is allocated
        once at prefill for the whole generation (per layer [batch, heads, positions, head dim]), so a
        decoding step copies one position instead of the whole cache."""
        import torch
        import torch.nn.functional as F

        m = self.model
        x = m.embed.tok(ids) + m.embed.pos(positions)
        b, t, d = x.shape
        past = 0 if cache is None else cache["len"]
        total = past + t
        if cache is None:
            heads = m.blocks[0].n_head if len(m.blocks) else 1
            shape = (b, heads, t + reserve, d // max(heads, 1))
            cache = {"len": 0, "k": [x.new_empty(shape) for _ in m.blocks], "v": [x.new_empty(shape) for _ in m.blocks]}
        # one mask for every layer: causal over absolute positions, padding keys hidden, and a padding query
        # sees itself (no empty row: that would give NaN)
        causal = torch.ones((t, total), dtype=torch.bool, device=x.device).tril(diagonal=past)
        allowed = causal[None, None] & mask[:, None, None, :total]
        rows = torch.arange(t, device=x.device)
        itself = torch.zeros((t, total), dtype=torch.bool, device=x.device)
        itself[rows, rows + past] = True
        allowed = allowed | itself[None, None]
        for li, block in enumerate(m.blocks):
            q, k, v = block.qkv(block.ln1(x)).split(d, dim=2)
            q, k, v = (z.view(b, t, block.n_head, d // block.n_head).transpose(1, 2) for z in (q, k, v))
            cache["k"][li][:, :, past:total] = k
            cache["v"][li][:, :, past:total] = v
            y = F.scaled_dot_product_attention(q, cache["k"][li][:, :, :total], cache["v"][li][:, :, :total],
                                               attn_mask=allowed)
            x = x + block.proj(y.transpose(1, 2).reshape(b, t, d))
            x = x + block.out(F.gelu(block.fc(block.ln2(x))))
        cache["len"] = total
        return x, cache

    def _forward(self, ids: Any, mask: Any, positions: Any, cache: Any, all_logits: bool = False,
                 reserve: int = 0) -> tuple[Any, Any]:
        x, new_cache = self._blocks(ids, mask, positions, cache, reserve)
        head = self.model.head
        return head(x if all_logits else x[:, -1]), new_cache

    def _hidden(self, ids: Any, mask: Any, positions: Any) -> Any:
        x, _ = self._blocks(ids, mask, positions, None)
        return self.model.head.ln(x)


class HfEngine(Engine):
    """A local Hugging Face causal LM (AutoModelForCausalLM); never downloads. Encoders: encoder.py."""

    def __init__(self, path: str, dtype: Any, device: Any) -> None:
        import warnings

        from transformers import AutoModelForCausalLM, AutoTokenizer

        # transformers 5.x warns on every step that `past_key_values=` is renamed (pinned below 5.40)
        warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
        quiet_loading()

        self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype).to(device).eval()
        self.device = device
        cfg = self.model.config
        self.context = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
        self.vocab_size = getattr(cfg, "vocab_size", None)
        self.eos_id = self.tok.eos_token_id

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self.tok(text, add_special_tokens=False)["input_ids"]]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tok.decode(list(ids), skip_special_tokens=True))

    def _forward(self, ids: Any, mask: Any, positions: Any, cache: Any, all_logits: bool = False,
                 reserve: int = 0) -> tuple[Any, Any]:
        # only the last position's logits when generating: the output layer over a whole prompt is waste
        out = self.model(input_ids=ids, attention_mask=mask.long(), position_ids=positions,
                         past_key_values=cache, use_cache=not all_logits,
                         **({} if all_logits else {"logits_to_keep": 1}))
        return (out.logits if all_logits else out.logits[:, -1]), out.past_key_values

    def _hidden(self, ids: Any, mask: Any, positions: Any) -> Any:
        out = self.model(input_ids=ids, attention_mask=mask.long(), position_ids=positions,
                         output_hidden_states=True)
        return out.hidden_states[-1]


def quiet_loading() -> None:
    """No progress bar of transformers' weight loading in the task logs (carriage returns, no news)."""
    from transformers.utils import logging

    logging.disable_progress_bar()  # type: ignore[no-untyped-call]


class EntryEngine(Engine):
    """A user function `fn(texts, task, params) -> list` (outputs per text, in order)."""

    token_level = False

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def call(self, texts: Sequence[Any], task: str, params: Any) -> list[Any]:
        result = list(self.fn(list(texts), task, params.to_json()))
        if len(result) != len(texts):
            raise ValueError(f"the entry returned {len(result)} outputs for {len(texts)} inputs")
        return result
