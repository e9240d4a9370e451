"""The built-in GPT-style decoder LM, as a plain module and as DeepSpeed pipeline layers."""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from hpc_aidc.spec.train import ModelConfig


class Block(nn.Module):
    def __init__(self, m: ModelConfig) -> None:
        super().__init__()
        self.n_head = m.n_head
        self.ln1 = nn.LayerNorm(m.d_model)
        self.qkv = nn.Linear(m.d_model, 3 * m.d_model)
        self.proj = nn.Linear(m.d_model, m.d_model)
        self.ln2 = nn.LayerNorm(m.d_model)
        self.fc = nn.Linear(m.d_model, 4 * m.d_model)
        self.out = nn.Linear(4 * m.d_model, m.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        out: torch.Tensor = x + self.out(F.gelu(self.fc(self.ln2(x))))
        return out


class Embed(nn.Module):
    def __init__(self, m: ModelConfig) -> None:
        super().__init__()
        self.tok = nn.Embedding(m.vocab_size, m.d_model)
        self.pos = nn.Embedding(m.seq_len, m.d_model)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        out: torch.Tensor = self.tok(idx) + self.pos(positions)
        return out


class Head(nn.Module):
    def __init__(self, m: ModelConfig) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(m.d_model)
        self.lm = nn.Linear(m.d_model, m.vocab_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lm(self.ln(x))
        return out


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy in fp32 whatever the logits' precision: a softmax over 50k bf16 logits loses the
    small probabilities (a no-op for fp32 logits)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _recompute(fn: Any, *args: torch.Tensor) -> Any:
    """torch's non-reentrant activation checkpoint: keeps the inputs, rebuilds the rest in backward
    (works with ZeRO-3's parameter hooks and with inputs that need no gradient)."""
    return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)


class GPT(nn.Module):
    """Takes a [batch, seq+1] token tensor, returns the next-token loss. With activation checkpointing
    each segment of `checkpoint_interval` blocks keeps only its input and is recomputed in backward."""

    def __init__(self, m: ModelConfig) -> None:
        super().__init__()
        self.embed = Embed(m)
        self.blocks = nn.ModuleList(Block(m) for _ in range(m.n_layer))
        self.head = Head(m)
        self.checkpoint_interval = m.checkpoint_interval if m.activation_checkpointing else 0

    def _segment(self, start: int, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks[start:start + self.checkpoint_interval]:
            x = block(x)
        return x

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens[:, :-1])
        if self.checkpoint_interval and self.training and torch.is_grad_enabled():
            for start in range(0, len(self.blocks), self.checkpoint_interval):
                x = _recompute(functools.partial(self._segment, start), x)
        else:
            for block in self.blocks:
                x = block(x)
        return lm_loss(self.head(x), tokens[:, 1:])


def pipeline_model(m: ModelConfig, num_stages: int) -> Any:
    """The same network as DeepSpeed PipelineModule layers (inputs, labels) -> loss; with activation
    checkpointing, every run of `checkpoint_interval` blocks is recomputed (never a range holding the
    embedding, whose integer input needs no gradient)."""
    from deepspeed.pipe import LayerSpec, PipelineModule

    layers = [LayerSpec(Embed, m), *(LayerSpec(Block, m) for _ in range(m.n_layer)), LayerSpec(Head, m)]
    interval = m.checkpoint_interval if m.activation_checkpointing else 0
    return PipelineModule(layers=layers, num_stages=num_stages, loss_fn=lm_loss, partition_method="uniform",
                          activation_checkpoint_interval=interval, activation_checkpoint_func=_recompute,
                          checkpointable_layers=["Block"])
