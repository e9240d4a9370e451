"""Embeddings equal the model's own library: the array-task runner (run locally, as a task runs it) against
`SentenceTransformer(dir).encode()` by id, for the real all-MiniLM-L6-v2 as shipped and for variants
saved by sentence-transformers itself (every pooling mode, Dense layers, a default prompt left out of
the pooling, an older save with do_lower_case and max_seq_length, a plain Hugging Face directory), over
rows that mix lengths in one batch: short, empty, Japanese, one of 5,000 characters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from infer_testkit import run_local, write_plan_for

ROWS = (["hello world", "a", "", "   ", "Short.", "東京は日本の首都です。", "x " * 2500,
         "Ünïcödé ÇAPS İstanbul ǅ", "The QUICK brown fox.\tTabs\nand newlines."]
        + [f"The cat number {i} sat on the mat{'.' * (i % 5)} " * (1 + i % 4) for i in range(40)])


def _st_save(base: Path, out: Path, pooling: tuple[str, ...], *, dense: int = 0, normalize: bool,
             prompt: str = "", include_prompt: bool = True, max_seq_length: int | None = None) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    torch.manual_seed(0)
    modules: list[torch.nn.Module] = [Transformer(str(base), max_seq_length=max_seq_length),
                                      Pooling(384, pooling_mode=pooling, include_prompt=include_prompt)]
    width = 384 * len(pooling)
    for i in range(dense):
        activation = torch.nn.Tanh() if i == 0 else torch.nn.Identity()
        modules.append(Dense(width, 64 - 16 * i, activation_function=activation))
        width = 64 - 16 * i
    if normalize:
        modules.append(Normalize())
    prompts = {"query": prompt} if prompt else None
    SentenceTransformer(modules=modules, device="cpu", prompts=prompts,
                        default_prompt_name="query" if prompt else None).save(str(out))
    return out


@pytest.fixture(scope="module")
def models(minilm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("st-models")
    legacy = root / "legacy"  # an older save: booleans for the pooling, do_lower_case, max_seq_length
    shutil.copytree(minilm, legacy)
    (legacy / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 20, "do_lower_case": True}))
    (legacy / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 384, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}))
    modules = json.loads((legacy / "modules.json").read_text())
    (legacy / "modules.json").write_text(json.dumps([m for m in modules if not m["type"].endswith("Normalize")]))
    plain = root / "plain"  # a Hugging Face encoder directory: sentence-transformers' defaults for one
    shutil.copytree(minilm, plain)
    for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"):
        (plain / name).unlink(missing_ok=True)
    shutil.rmtree(plain / "1_Pooling")
    return {
        "shipped": minilm,
        "cls-max-dense-prompt": _st_save(minilm, root / "a", ("cls", "max"), dense=2, normalize=True,
                                         prompt="query: "),
        "weighted-last-sqrt-no-prompt": _st_save(minilm, root / "b", ("weightedmean", "lasttoken",
                                                                      "mean_sqrt_len_tokens"),
                                                 normalize=False, prompt="passage: ", include_prompt=False,
                                                 max_seq_length=24),
        "legacy": legacy,
        "plain": plain,
    }


def _ours(model: Path, tmp: Path, batch_size: int, **params: object) -> np.ndarray:
    import zarr

    tmp.mkdir(parents=True, exist_ok=True)
    src = tmp / "rows.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(ROWS)))
    out = tmp / "out"
    write_plan_for(out, str(model), src, 2, 32, task="embed", batch_size=batch_size, precision="fp32", **params)
    run_local(out, [0, 1])
    rows = [json.loads(line) for f in sorted((out / "shards").glob("*.jsonl")) for line in f.read_text().splitlines()]
    assert [r["error"] for r in rows] == [None] * len(ROWS), [r for r in rows if r["error"]]
    assert [r["id"] for r in rows] == list(range(len(ROWS)))  # ids keep their JSON type
    return np.asarray(zarr.open_array(str(out / "embeddings.zarr"), mode="r")[:])


def _reference(model: Path) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return np.asarray(SentenceTransformer(str(model), device="cpu").encode(ROWS, batch_size=7))


@pytest.mark.parametrize("name", ["shipped", "cls-max-dense-prompt", "weighted-last-sqrt-no-prompt", "legacy",
                                  "plain"])
def test_embeddings_equal_sentence_transformers_row_by_row(name: str, models: dict[str, Path],
                                                            tmp_path: Path) -> None:
    ours = _ours(models[name], tmp_path, batch_size=5)
    ref = _reference(models[name])
    assert ours.shape == ref.shape
    cosine = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    assert cosine.min() >= 0.9999, {i: float(c) for i, c in enumerate(cosine) if c < 0.9999}
    # the same vectors, not only the same directions: norms too (a Normalize module, or none)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_normalize_flag_overrides_the_model(models: dict[str, Path], tmp_path: Path) -> None:
    ref = _reference(models["shipped"])  # unit length: the model's Normalize module
    raw = _ours(models["shipped"], tmp_path / "raw", batch_size=16, normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(unit, ref, rtol=1e-4, atol=1e-5)
    plain = _ours(models["plain"], tmp_path / "plain", batch_size=16, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(plain, axis=1), 1.0, rtol=1e-5)


def test_layouts_the_engine_cannot_run_exactly_are_refused_up_front(models: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    from hpc_aidc.errors import ConfigError
    from hpc_aidc.formats.model_source import resolve_model

    odd = tmp_path / "odd"
    shutil.copytree(models["shipped"], odd)
    modules = json.loads((odd / "modules.json").read_text())
    modules.insert(2, {"idx": 9, "name": "9", "path": "9_LSTM", "type": "sentence_transformers.models.LSTM"})
    (odd / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ConfigError, match=r"Transformer, Pooling.*LSTM.*--entry"):
        resolve_model(str(odd), "embed")
    modules[2] = {"idx": 2, "name": "2", "path": "../../etc", "type": "sentence_transformers.models.Dense"}
    (odd / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ConfigError, match="inside"):
        resolve_model(str(odd), "embed")
