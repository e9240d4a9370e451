"""A row's result does not depend on the rows that share its batch: for every engine (the built-in GPT,
a Hugging Face causal LM, a Hugging Face encoder) and every task it runs, random batch compositions and
lengths give each row what it gets alone (fp32 on the CPU: 1e-5 relative; greedy tokens identical)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _builtin_gpt() -> Any:
    import torch

    from hpc_aidc.data.tokenize import load_tokenizer
    from hpc_aidc.node.infer.model import GptEngine
    from hpc_aidc.node.model import GPT
    from hpc_aidc.spec.train import ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(n_layer=2, n_head=2, d_model=32, vocab_size=64, seq_len=48)
    return GptEngine(GPT(config).eval(), config.seq_len, config.vocab_size, load_tokenizer("bytes"),
                     torch.device("cpu"))


@pytest.fixture(scope="module")
def engines(hf_causal: Path, minilm: Path) -> dict[str, Any]:
    from hpc_aidc.formats.model_source import resolve_model
    from hpc_aidc.node.infer.load import load_engine

    return {
        "builtin-gpt": _builtin_gpt(),
        "hf-causal": load_engine(resolve_model(str(hf_causal), "generate"), "fp32", None, "generate"),
        "hf-causal-embed": load_engine(resolve_model(str(hf_causal), "embed"), "fp32", None, "embed"),
        "hf-encoder": load_engine(resolve_model(str(minilm), "embed"), "fp32", None, "embed"),
    }


def _batches(vocab: int, min_len: int) -> st.SearchStrategy[list[list[int]]]:
    row = st.lists(st.integers(0, vocab - 1), min_size=min_len, max_size=30)
    return st.lists(row, min_size=1, max_size=6)


def _check(engine: Any, task: str, batch: list[list[int]]) -> None:
    from hpc_aidc.spec.infer import parse_infer_params

    greedy = parse_infer_params(task="generate", max_new_tokens=5)
    run: dict[str, Callable[[list[list[int]]], list[Any]]] = {
        "generate": lambda b: [g.tokens for g in engine.generate(b, [0] * len(b), greedy)],
        "score": lambda b: [total for total, _ in engine.score(b)],
        "embed": lambda b: list(engine.embed(b)),
    }
    together = run[task](batch)
    for row, got in zip(batch, together, strict=True):
        alone = run[task]([row])[0]
        if task == "generate":
            assert got == alone, (row, got, alone)
        elif task == "score":
            assert got == pytest.approx(alone, rel=1e-5, abs=1e-5), row
        else:
            scale = float(np.abs(alone).max())
            np.testing.assert_allclose(got, alone, rtol=1e-5, atol=1e-5 * scale, err_msg=str(row))


@pytest.mark.parametrize(("name", "task"), [
    ("builtin-gpt", "generate"), ("builtin-gpt", "score"), ("builtin-gpt", "embed"),
    ("hf-causal", "generate"), ("hf-causal", "score"), ("hf-causal-embed", "embed"),
    ("hf-encoder", "embed"),
])
def test_each_row_equals_the_row_run_alone(name: str, task: str, engines: dict[str, Any]) -> None:
    engine = engines[name]
    vocab = min(int(engine.vocab_size), 30_000)

    @SETTINGS
    @given(batch=_batches(vocab, 2 if task == "score" else 1))
    def prop(batch: list[list[int]]) -> None:
        _check(engine, task, batch)

    prop()
