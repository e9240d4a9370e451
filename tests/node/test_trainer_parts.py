"""Trainer pieces that need no cluster: model FLOPs utilisation and the start-up phase record."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from hpc_aidc.node.train import StartupPhases, Trainer
from hpc_aidc.spec.train import parse_train_config


def test_mfu_is_six_n_flops_per_token_over_the_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_train_config({"model": {"preset": "small"}})
    trainer = Trainer(config, Path("/nonexistent"), rank=0, world=8, local_rank=0)
    monkeypatch.setenv("HPCAI_PEAK_TFLOPS", "989")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    tokens_per_s = 1.0e6
    expected = 6 * config.model.n_params * tokens_per_s / (989e12 * 8)
    assert trainer._mfu(tokens_per_s) == pytest.approx(expected)
    assert 0 < expected < 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert trainer._mfu(tokens_per_s) is None  # no MFU on CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("HPCAI_PEAK_TFLOPS")
    assert trainer._mfu(tokens_per_s) is None  # a GPU type without a peak in the site profile


def test_startup_phases_add_up_from_the_process_start() -> None:
    phases = StartupPhases()
    assert phases.seconds["process"] > 0  # this interpreter started before the test
    time.sleep(0.05)
    phases.done("nap")
    phases.done("nothing")
    assert phases.seconds["nap"] >= 0.05 and phases.seconds["nothing"] < phases.seconds["nap"]
