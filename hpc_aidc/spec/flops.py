"""Model FLOPs of the built-in GPT and model FLOPs utilisation (pure).

The standard count (Kaplan et al. 2020; PaLM, Chowdhery et al. 2022, appendix B; Megatron-LM,
Narayanan et al. 2021): a token costs 6 FLOPs per parameter that multiplies (2 forward, 4 backward),
where the token and position embeddings are lookups and count nothing (the untied output head is a
matrix multiply and counts), plus attention's score and value products, 2 x 2 x s x d per layer
forward, 12 x L x d x s for training. Recomputation (activation checkpointing) is work the model does
not need, so model FLOPs leave it out (hardware FLOPs would count it)."""

from __future__ import annotations

from hpc_aidc.spec.train import ModelConfig

FORMULA = "6*N + 12*L*d*s FLOPs/token (N: parameters without the embeddings; PaLM/Megatron-LM, no recompute)"


def flops_per_token(m: ModelConfig) -> float:
    """Training FLOPs per token: 6 N (N without embeddings) + 12 L d s (attention)."""
    matmul_params = m.n_params - m.n_embedding_params
    return 6.0 * matmul_params + 12.0 * m.n_layer * m.d_model * m.seq_len


def mfu(tokens_per_s: float, m: ModelConfig, peak_tflops: float, n_gpus: int) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak of every GPU of the job."""
    return flops_per_token(m) * tokens_per_s / (peak_tflops * 1e12 * n_gpus)
