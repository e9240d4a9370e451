"""Batch inference without Slurm: the pure parts (batching, array windows, sacct's compact array rows,
input shards), and the task runner run locally against a direct transformers run (HF causal LM:
log-likelihoods and greedy generations; the real all-MiniLM-L6-v2 encoder: embeddings), poisoned rows,
a user function, and a task killed mid-shard that resumes to bitwise the one-shot output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import wait_until
from infer_testkit import CORPUS, run_local, write_plan_for

from hpc_aidc.data.infer_inputs import plan_inputs, read_shard
from hpc_aidc.node.infer.run import make_batches
from hpc_aidc.scheduler.infer import parse_array_states, parse_max_array_size
from hpc_aidc.spec.infer import compact_ranges, shard_range, windows

RECORDED = Path(__file__).resolve().parents[1] / "recorded"


def test_batches_are_sorted_by_length_and_capped() -> None:
    lengths = [5, 1, 9, 3, 3, 7]
    assert make_batches(lengths, 2, None) == [[1, 3], [4, 0], [5, 2]]
    assert make_batches(lengths, 10, 14) == [[1, 3, 4], [0, 5], [2]]  # (rows x longest) <= 14
    assert make_batches([], 4, None) == []


def test_windows_keep_array_index_values_below_the_cap() -> None:
    assert windows(list(range(7)), 3) == [(0, [0, 1, 2]), (3, [0, 1, 2]), (6, [0])]
    assert windows([4, 5, 11], 5) == [(0, [4]), (5, [0]), (10, [1])]
    assert compact_ranges([7, 0, 2, 3, 4]) == "0,2-4,7"
    assert [list(shard_range(t, 3, 8)) for t in range(3)] == [[0, 1], [2, 3, 4], [5, 6, 7]]


def test_recorded_sacct_array_rows_and_max_array_size() -> None:
    rows = parse_array_states((RECORDED / "sacct_array_states.txt").read_text())
    by_index = {(r.job, i): r.state for r in rows for i in r.indices}
    assert by_index[("278", 0)] == "COMPLETED" and by_index[("278", 3)] == "PENDING"
    assert {i for (j, i), s in by_index.items() if s == "PENDING"} == {2, 3, 4, 5}  # 278_[2-5%2]
    assert parse_max_array_size((RECORDED / "scontrol_config.txt").read_text()) == 1001


def test_input_shards_rows_ids_and_poison(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": "a", "text": "hello"}).encode(), b"\xff\xfe not utf-8", b"{broken json",
             json.dumps({"text": ""}).encode(), json.dumps({"other": "x"}).encode(),
             json.dumps({"text": "ok"}).encode()]
    path.write_bytes(b"\n".join(lines))  # no newline after the last row
    plan = plan_inputs(path, "text", rows_per_shard=4)
    assert [s.rows for s in plan.shards] == [4, 2] and plan.num_rows == 6
    rows = [r for s in plan.shards for r in read_shard(plan, s)]
    assert [r.id for r in rows] == ["a", "1", "2", "3", "4", "5"]  # the string form: the rows' key
    assert plan.id_type == "str" and [plan.output_id(r.id) for r in rows][:2] == ["a", "1"]
    assert [r.error for r in rows] == [None, "invalid UTF-8 at byte 0", "invalid JSON: Expecting property name "
                                       "enclosed in double quotes", None, "no text field 'text'", None]
    assert rows[3].text == ""  # an empty text is tokenised like any other (the engine decides)
    text = tmp_path / "in.txt"
    text.write_text("one\ntwo\n\nfour\n")
    tplan = plan_inputs(text, rows_per_shard=10)
    assert [(r.id, r.text, r.error) for r in read_shard(tplan, tplan.shards[0])][2] == ("2", "", None)


def test_parquet_input_shards(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(25)], "text": [f"row {i}" for i in range(25)]}), path,
                   row_group_size=7)
    plan = plan_inputs(path, "text", rows_per_shard=10)
    assert [s.rows for s in plan.shards] == [10, 10, 5]
    rows = [r for s in plan.shards for r in read_shard(plan, s)]
    assert [r.id for r in rows] == [f"r{i}" for i in range(25)] and rows[13].text == "row 13"


def _rows(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for f in sorted((out / "shards").glob("*.jsonl")) for line in f.read_text().splitlines()]


def test_hf_causal_lm_equals_a_direct_transformers_run(hf_causal: Path, prompts_jsonl: Path, tmp_path: Path) -> None:
    import torch
    import zarr
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gen, score = tmp_path / "gen", tmp_path / "score"
    write_plan_for(gen, str(hf_causal), prompts_jsonl, 2, 16, task="generate", max_new_tokens=6, batch_size=5,
                   precision="fp32")
    write_plan_for(score, str(hf_causal), prompts_jsonl, 1, 16, task="score", batch_size=7, precision="fp32")
    run_local(gen, [0, 1])
    run_local(score, [0])
    tok = AutoTokenizer.from_pretrained(hf_causal, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(hf_causal, local_files_only=True).eval()
    generated = _rows(gen)
    loglik = zarr.open_array(str(score / "loglik.zarr"), mode="r")[:]
    assert len(generated) == 40 and loglik.shape == (40,)
    for i, text in enumerate(CORPUS[:40]):
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.inference_mode():
            direct = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.eos_token_id)
            logits = model(ids).logits.log_softmax(-1)
        expected_tokens = direct[0, ids.shape[1]:].tolist()
        row = generated[i]
        assert row["id"] == f"p{i}" and row["error"] is None
        # greedy: the same tokens up to the end-of-text token, where both stop
        assert row["tokens"] == expected_tokens[:len(row["tokens"])], (i, row, expected_tokens)
        direct_ll = float(logits[0, :-1].gather(-1, ids[0, 1:, None]).sum())
        assert loglik[i] == pytest.approx(direct_ll, rel=1e-5, abs=1e-4)


def test_real_encoder_embeddings_equal_a_direct_forward_pass(minilm: Path, prompts_jsonl: Path, tmp_path: Path) -> None:
    import tensorstore as ts
    import torch
    import zarr
    from transformers import AutoModel, AutoTokenizer

    out = tmp_path / "embed"
    write_plan_for(out, str(minilm), prompts_jsonl, 2, 16, task="embed", batch_size=8, precision="fp32")
    run_local(out, [0, 1])
    vectors = zarr.open_array(str(out / "embeddings.zarr"), mode="r")[:]
    assert vectors.shape == (40, 384) and vectors.dtype == np.float32
    # tensorstore reads the same array (a Zarr v3 sharded store written by rename, shard by shard)
    via_ts = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(out / "embeddings.zarr")}}).result()
    assert np.array_equal(via_ts.read().result(), vectors)
    tok = AutoTokenizer.from_pretrained(minilm, local_files_only=True)
    model = AutoModel.from_pretrained(minilm, local_files_only=True).eval()
    for i, text in enumerate(CORPUS[:40]):
        enc = tok(text, return_tensors="pt")
        with torch.inference_mode():
            direct = model(**enc).last_hidden_state.mean(1)[0].numpy()
        direct /= np.linalg.norm(direct)  # the model's Normalize module (modules.json)
        # Tolerance: padding to the batch's longest row changes float summation order only.
        np.testing.assert_allclose(vectors[i], direct, rtol=1e-4, atol=2e-5)


def test_poisoned_rows_land_in_the_error_column_and_the_run_completes(hf_causal: Path, tmp_path: Path) -> None:
    path = tmp_path / "poison.jsonl"
    good = [json.dumps({"text": t}).encode() for t in CORPUS[:30]]
    poison = [b"\xc3\x28 invalid utf-8", json.dumps({"text": ""}).encode(),
              json.dumps({"text": "word " * 400}).encode()]
    path.write_bytes(b"\n".join(good[:10] + poison + good[10:]) + b"\n")
    out = tmp_path / "out"
    write_plan_for(out, str(hf_causal), path, 1, 50, task="generate", max_new_tokens=4, precision="fp32")
    run_local(out, [0])
    rows = _rows(out)
    assert len(rows) == 33 and len({r["id"] for r in rows}) == 33
    errors = {r["id"]: r["error"] for r in rows if r["error"]}  # no ids in the input: the row index, an int
    assert errors[10].startswith("invalid UTF-8") and errors[11] == "empty after tokenisation"
    assert errors[12].startswith("over-long input") and len(errors) == 3
    assert {tuple(sorted(r)) for r in rows} == {tuple(sorted(rows[0]))}  # one schema on every row
    assert all(r["finish_reason"] == "error" and r["output"] is None for r in rows if r["error"])
    record = json.loads((out / "done" / "000000.json").read_text())
    assert record["error_rows"] == 3 and record["rows"] == 33


def test_too_many_bad_rows_stop_the_task_with_examples(hf_causal: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("\n" * 25 + "fine\n")
    out = tmp_path / "out"
    write_plan_for(out, str(hf_causal), path, 1, 100, task="score", max_error_rate=0.2)
    proc = subprocess.run([sys.executable, "-m", "hpc_aidc.node.infer.run", str(out), "--task", "0"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "Expected at most 20% bad rows" in proc.stderr and "row 0: empty after tokenisation" in proc.stderr
    failures = list((out / "failed" / "000000").glob("*.json"))
    assert len(failures) == 1 and not (out / "done" / "000000.json").exists()


def test_user_entry_function_errors_are_per_row(tmp_path: Path, prompts_jsonl: Path) -> None:
    mod = tmp_path / "myentry.py"
    mod.write_text("def run(texts, task, params):\n"
                   "    if any('fox 3 ' in t for t in texts):\n"
                   "        raise ValueError('I do not like fox 3')\n"
                   "    return [t.upper() for t in texts]\n")
    out = tmp_path / "out"
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = f"{tmp_path}:{env_path}"
    sys.path.insert(0, str(tmp_path))
    try:
        write_plan_for(out, "myentry:run", prompts_jsonl, 1, 40, task="generate", batch_size=8)
        run_local(out, [0])
    finally:
        os.environ["PYTHONPATH"] = env_path
        sys.path.remove(str(tmp_path))
    rows = _rows(out)
    assert [r["id"] for r in rows if r["error"]] == ["p3"] and "I do not like fox 3" in rows[3]["error"]
    assert rows[0]["output"] == CORPUS[0].upper()


def _wait_flushed(proc: subprocess.Popen[str] | subprocess.Popen[bytes], partial: Path, batches: int) -> None:
    """Until the running task has flushed `batches` batches of its shard; fails at once if it ended."""

    def flushed() -> bool:
        if len(list(partial.glob("b*.json"))) >= batches:
            return True
        assert proc.poll() is None, "no batches were flushed"
        return False

    wait_until("no batches were flushed", flushed, 120, interval=0.05)


def test_a_task_killed_mid_shard_resumes_to_the_one_shot_output(hf_causal: Path, tmp_path: Path) -> None:
    path = tmp_path / "many.txt"
    path.write_text("".join(f"{CORPUS[i % 200]} {i}\n" for i in range(120)))
    one_shot, resumed = tmp_path / "one", tmp_path / "two"
    for out in (one_shot, resumed):
        write_plan_for(out, str(hf_causal), path, 1, 60, task="generate", max_new_tokens=12, batch_size=2,
                       temperature=0.8, top_k=20, top_p=0.9, seed=7, precision="fp32")
    run_local(one_shot, [0])
    proc = subprocess.Popen([sys.executable, "-m", "hpc_aidc.node.infer.run", str(resumed), "--task", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = resumed / "partial" / "000000"
    _wait_flushed(proc, partial, 4)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    flushed = len(list(partial.glob("b*.json")))
    assert not (resumed / "done" / "000000.json").exists() and flushed >= 4
    run_local(resumed, [0])
    for name in ("000000.jsonl", "000001.jsonl"):
        assert (resumed / "shards" / name).read_bytes() == (one_shot / "shards" / name).read_bytes()
    rows = _rows(resumed)
    assert len(rows) == 120 and len({r["id"] for r in rows}) == 120 and not any(r["error"] for r in rows)
    assert not partial.exists()


def test_parquet_output_has_one_schema_on_error_and_success_rows(hf_causal: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    path = tmp_path / "in.txt"
    path.write_text("hello there\n\nthe quick brown fox\n")
    out = tmp_path / "out"
    write_plan_for(out, str(hf_causal), path, 1, 10, output_format="parquet", task="generate", max_new_tokens=3,
                   max_error_rate=1.0)
    run_local(out, [0])
    table = pq.read_table(out / "shards" / "000000.parquet")
    assert table.column_names == ["id", "input", "output", "tokens", "input_tokens", "finish_reason", "error"]
    rows = table.to_pylist()
    assert [r["error"] for r in rows] == [None, "empty after tokenisation", None]
    assert [r["id"] for r in rows] == [0, 1, 2] and str(table.schema.field("id").type) == "int64"
    assert rows[1]["finish_reason"] == "error" and rows[1]["tokens"] == [] and len(rows[0]["tokens"]) <= 3


def test_the_warning_signal_stops_at_a_batch_boundary_and_the_rerun_is_bitwise(hf_causal: Path, tmp_path: Path) -> None:
    path = tmp_path / "many.txt"
    path.write_text("".join(f"{CORPUS[i]}\n" for i in range(80)))
    one_shot, warned = tmp_path / "one", tmp_path / "two"
    for out in (one_shot, warned):
        write_plan_for(out, str(hf_causal), path, 1, 80, task="generate", max_new_tokens=10, batch_size=2,
                       precision="fp32")
    run_local(one_shot, [0])
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    proc = subprocess.Popen([sys.executable, "-m", "hpc_aidc.node.infer.run", str(warned), "--task", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    partial = warned / "partial" / "000000"
    _wait_flushed(proc, partial, 2)
    proc.send_signal(signal.SIGUSR2)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3 and "stopped at a batch boundary" in stdout
    assert partial.is_dir() and not (warned / "done" / "000000.json").exists()
    run_local(warned, [0])
    assert (warned / "shards" / "000000.jsonl").read_bytes() == (one_shot / "shards" / "000000.jsonl").read_bytes()


def test_out_of_memory_halves_the_batch_and_a_single_row_that_does_not_fit_is_fatal(tmp_path: Path) -> None:
    from hpc_aidc.data.infer_inputs import Row
    from hpc_aidc.node.infer.model import Engine
    from hpc_aidc.node.infer.run import EngineFailure, PreparedRow, ShardRunner

    class SmallDevice(Engine):
        def __init__(self) -> None:
            self.calls: list[int] = []

        def score(self, seqs):  # type: ignore[no-untyped-def, override]
            self.calls.append(len(seqs))
            if len(seqs) > 2 or any(len(s) > 50 for s in seqs):
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return [(float(-len(s)), len(s) - 1) for s in seqs]

    path = tmp_path / "in.txt"
    path.write_text("a b\n")
    out = tmp_path / "out"
    write_plan_for(out, "infer_testkit:write_plan_for", path, 1, 10, task="score")  # any entry: not loaded
    from hpc_aidc.formats.infer_plan import load_plan

    runner = ShardRunner(out, load_plan(out), "1", 0, "n1")
    engine = SmallDevice()
    runner._engine = engine
    batch = [PreparedRow(Row(str(i)), ids=[1] * (3 + i)) for i in range(5)]
    results = runner.compute(batch)
    assert [r["loglik"] for r in results] == [-3.0, -4.0, -5.0, -6.0, -7.0]
    assert engine.calls == [5, 2, 3, 1, 2]  # 5 -> 2 + 3, 3 -> 1 + 2
    with pytest.raises(EngineFailure, match="Expected one row to fit the device"):
        runner.compute([PreparedRow(Row("big"), ids=[1] * 60)])


def test_builtin_gpt_kv_cache_generation_equals_full_recomputation() -> None:
    """Batched, left-padded, cached generation of the built-in GPT gives each row the tokens that a
    plain full forward pass per step gives that row alone; scores and embeddings agree the same way."""
    import torch

    from hpc_aidc.data.tokenize import load_tokenizer
    from hpc_aidc.node.infer.model import GptEngine
    from hpc_aidc.node.model import GPT
    from hpc_aidc.spec.infer import parse_infer_params
    from hpc_aidc.spec.train import ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(n_layer=2, n_head=2, d_model=32, vocab_size=64, seq_len=48)
    model = GPT(config).eval()
    engine = GptEngine(model, config.seq_len, config.vocab_size, load_tokenizer("bytes"), torch.device("cpu"))
    prompts = [[5, 9, 13], [1, 2, 3, 4, 5, 6, 7, 8], [40]]
    params = parse_infer_params(task="generate", max_new_tokens=7)
    got = engine.generate(prompts, [0, 0, 0], params)

    def plain_logits(seq: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            x = model.embed(torch.tensor([seq]))
            for block in model.blocks:
                x = block(x)
            return model.head(x)[0]

    for prompt, g in zip(prompts, got, strict=True):
        seq = list(prompt)
        for _ in range(7):
            seq.append(int(plain_logits(seq)[-1].argmax()))
        assert g.tokens == seq[len(prompt):]
    ll = engine.score(prompts[:2])
    for (total, count), seq in zip(ll, prompts[:2], strict=True):
        logp = plain_logits(seq).log_softmax(-1)[:-1].gather(-1, torch.tensor(seq[1:])[:, None]).sum()
        assert count == len(seq) - 1 and total == pytest.approx(float(logp), rel=1e-5)
    vectors = engine.embed(prompts[:2])
    with torch.inference_mode():
        x = model.embed(torch.tensor([prompts[1]]))
        for block in model.blocks:
            x = block(x)
        direct = model.head.ln(x)[0].mean(0).numpy()
    np.testing.assert_allclose(vectors[1], direct, rtol=1e-5, atol=1e-6)


def test_batch_scripts_written_before_the_move_still_start_the_runner() -> None:
    """An array task pending or requeued across an upgrade runs `python -m hpc_aidc.node.infer_run`."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "hpc_aidc.node.infer_run", "--help"], capture_output=True, text=True,
                          cwd="/", check=False, timeout=120)
    assert proc.returncode == 0 and "--task" in proc.stdout, proc.stderr
