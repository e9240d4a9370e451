"""Trainer pieces that need no cluster: model FLOPs utilisation, run timing (warm-up and checkpoints left
out), the start-up phase record, batch prefetching that checkpoints the right position, and the built-in
model's activation checkpointing and fp32 loss."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch

from hpc_aidc.node.batches import Prefetcher
from hpc_aidc.node.model import GPT, lm_loss
from hpc_aidc.node.train.run_timing import RunTiming, StartupPhases
from hpc_aidc.node.train.trainer import Trainer
from hpc_aidc.spec.flops import flops_per_token, mfu
from hpc_aidc.spec.train import parse_train_config


def test_mfu_counts_matmul_parameters_and_attention() -> None:
    """PaLM/Megatron: 6 FLOPs per non-embedding parameter and token, plus 12 L d s for attention."""
    m = parse_train_config({"model": {"preset": "1.3b"}}).model
    n_embed = (m.vocab_size + m.seq_len) * m.d_model
    assert flops_per_token(m) == 6 * (m.n_params - n_embed) + 12 * m.n_layer * m.d_model * m.seq_len
    # The old count (6 N with embeddings, no attention) read low for these sizes.
    for preset in ("1.3b", "7b"):
        model = parse_train_config({"model": {"preset": preset}}).model
        assert 1.05 < flops_per_token(model) / (6 * model.n_params) < 1.15
    assert mfu(1.0e5, m, 989.0, 8) == pytest.approx(flops_per_token(m) * 1.0e5 / (989e12 * 8))


def test_summary_mfu_uses_the_peak_of_the_precision_and_only_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_train_config({"model": {"preset": "small"}})
    trainer = Trainer(config, Path("/nonexistent"), rank=0, world=8, local_rank=0)
    for _ in range(5):
        trainer.timing.step(2.0, 1.0e6)  # the first 3 are warm-up: 2 measured steps of 1e6 tokens in 4 s
    trainer.timing.checkpoint(30.0)
    monkeypatch.setenv("HPCAI_PEAK_TFLOPS", "989")
    trainer.device = torch.device("cuda", 0)
    perf = trainer._performance()
    assert perf["tokens_per_s_training"] == pytest.approx(5.0e5) and perf["measured_steps"] == 2
    assert perf["mfu"] == pytest.approx(flops_per_token(config.model) * 5.0e5 / (989e12 * 8))
    assert perf["checkpoint_s_max"] == 30.0 and perf["grace_needed_s"] > 30
    trainer.device = torch.device("cpu")
    assert trainer._performance()["mfu"] is None  # no MFU on CPU
    trainer.device = torch.device("cuda", 0)
    monkeypatch.delenv("HPCAI_PEAK_TFLOPS")
    assert trainer._performance()["mfu"] is None  # a GPU type without a peak in the site profile


def test_run_timing_leaves_out_warm_up_steps_and_checkpoints() -> None:
    timing = RunTiming(warmup_steps=2)
    timing.step(9.0, 100)
    timing.step(5.0, 100)
    timing.checkpoint(4.0)  # before any measured step: the warm-up steps stand in for the step time
    assert timing.step_s_max == 9.0 and timing.tokens_per_s() is None
    timing.step(1.0, 100)
    timing.step(3.0, 100)
    assert timing.tokens_per_s() == pytest.approx(50.0) and timing.measured_steps == 2
    timing.checkpoint(6.0)
    assert (timing.checkpoint_s_max, timing.checkpoint_s_last, timing.checkpoint_s_total) == (6.0, 6.0, 10.0)


def test_startup_phases_add_up_from_the_process_start() -> None:
    phases = StartupPhases()
    assert phases.seconds["process"] > 0  # this interpreter started before the test
    time.sleep(0.05)
    phases.done("nap")
    phases.done("nothing")
    assert phases.seconds["nap"] >= 0.05 and phases.seconds["nothing"] < phases.seconds["nap"]


def test_prefetched_batches_come_in_order_and_checkpoint_the_unconsumed_position() -> None:
    source = iter(range(100))
    fetched: list[int] = []

    def fetch() -> tuple[Any, torch.Tensor]:
        i = next(source)
        fetched.append(i)
        return {"next": i}, torch.full((2, 3), i)

    batches = Prefetcher(fetch, torch.device("cpu"))
    try:
        assert [int(batches.next()[0, 0]) for _ in range(3)] == [0, 1, 2]
        # batch 3 is being prepared (or ready); a checkpoint now must resume at it, not after it
        assert batches.position() == {"next": 3}
        assert int(batches.next()[0, 0]) == 3 and batches.position() == {"next": 4}
        assert max(fetched) <= 5  # never more than one batch ahead
    finally:
        batches.close()


def test_activation_checkpointing_gives_the_same_loss_and_gradients() -> None:
    """Recomputation changes memory, not results: bitwise on CPU, per layer and per 2-block segment."""
    base = {"preset": "tiny", "n_layer": 4}
    tokens = torch.randint(0, 256, (4, 65), generator=torch.Generator().manual_seed(0))
    results = []
    for extra in ({}, {"activation_checkpointing": True}, {"activation_checkpointing": True, "checkpoint_interval": 2}):
        torch.manual_seed(3)
        model = GPT(parse_train_config({"model": {**base, **extra}}).model)
        loss = model(tokens)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    for loss, grads in results[1:]:
        assert torch.equal(loss, results[0][0])
        assert all(torch.equal(a, b) for a, b in zip(grads, results[0][1], strict=True))
    assert GPT(parse_train_config({"model": base}).model).checkpoint_interval == 0
    # the presets that need it have it on
    assert parse_train_config({"model": {"preset": "7b"}}).model.activation_checkpointing
    assert not parse_train_config({"model": {"preset": "small"}}).model.activation_checkpointing


def test_loss_is_computed_in_fp32_on_bf16_logits() -> None:
    logits = torch.randn(2, 5, 50304, generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, 50304, (2, 5), generator=torch.Generator().manual_seed(2))
    loss = lm_loss(logits.to(torch.bfloat16), targets)
    assert loss.dtype == torch.float32
    exact = torch.nn.functional.cross_entropy(logits.to(torch.bfloat16).float().reshape(-1, 50304), targets.reshape(-1))
    assert torch.equal(loss, exact)


@pytest.mark.parametrize(("precision", "checkpointing"), [("bf16", False), ("bf16", True), ("fp32", False)])
def test_the_planner_counts_what_the_model_keeps_for_backward(precision: str, checkpointing: bool) -> None:
    """spec.memory's activations are the tensors autograd saves (parameters aside): every block's 16 d
    values per token in the training precision and the norms' and attention's fp32 statistics, the head's
    norm, and the loss's fp32 log-probabilities (4 bytes per logit; the backward pass adds their two
    gradients, 8 more); with recomputation only each segment's input."""
    from hpc_aidc.spec.memory import activation_bytes

    config = parse_train_config({"model": {"n_layer": 3, "n_head": 4, "d_model": 64, "vocab_size": 512,
                                           "seq_len": 32, "activation_checkpointing": checkpointing},
                                 "train": {"micro_batch": 2, "precision": precision}})
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if precision == "bf16" else torch.float32)  # as the trainer builds it
    try:
        model = GPT(config.model)
    finally:
        torch.set_default_dtype(previous)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randint(0, 512, (2, 33), generator=torch.Generator().manual_seed(0)))
    logits = 2 * 32 * 512
    assert activation_bytes(config) - 8 * logits == pytest.approx(sum(saved.values()), rel=0.01)
