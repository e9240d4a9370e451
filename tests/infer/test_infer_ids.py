"""Row ids keep their input type (issue 24): JSONL and Parquet inputs to JSONL and Parquet outputs, the
plan's id type for shards of default ids only, inputs that mix id types refused at planning (and by
`hpcai submit infer --dry-run`, exit 2, nothing written), and empty texts handed to the engine. Pure: a
user function stands in for the model, tasks run in this process; no Slurm."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hpc_aidc.data import infer_inputs
from hpc_aidc.data.infer_inputs import plan_from_json, plan_inputs, read_shard
from hpc_aidc.errors import DataError

ENTRY = "echo_entry:run"


@pytest.fixture()
def entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A user function (`<text>` for each text) importable here and by the task runner."""
    (tmp_path / "echo_entry.py").write_text("def run(texts, task, params):\n"
                                            "    return [f'<{t}>' for t in texts]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return ENTRY


def _jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _run(out: Path, input_path: Path, rows_per_shard: int, fmt: str) -> list[dict[str, Any]]:
    """Plan and run a whole generate run with the user function; the output rows in order."""
    from infer_testkit import write_plan_for

    from hpc_aidc.node.infer.run import main

    write_plan_for(out, ENTRY, input_path, 1, rows_per_shard, output_format=fmt, max_error_rate=1.0)
    assert main([str(out), "--task", "0"]) == 0
    return _rows(out, fmt)


def _rows(out: Path, fmt: str) -> list[dict[str, Any]]:
    files = sorted((out / "shards").glob(f"*.{fmt}"))
    if fmt == "jsonl":
        return [json.loads(line) for f in files for line in f.read_text().splitlines()]
    import pyarrow.parquet as pq

    return [r for f in files for r in pq.read_table(f).to_pylist()]


def _id_types(out: Path) -> set[str]:
    import pyarrow.parquet as pq

    return {str(pq.read_schema(f).field("id").type) for f in (out / "shards").glob("*.parquet")}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_integer_ids_stay_integers(entry: str, tmp_path: Path, fmt: str) -> None:
    src = _jsonl(tmp_path / "in.jsonl", [{"id": 10, "text": "a"}, {"id": 0, "text": "b"}, "{broken",
                                         {"text": "no id"}, {"id": -3, "text": "c"}])
    assert plan_inputs(src, rows_per_shard=2).id_type == "int"
    rows = _run(tmp_path / "out", src, 2, fmt)
    # a row without an id (or an error row) has its global index: an integer too
    assert [r["id"] for r in rows] == [10, 0, 2, 3, -3]
    assert all(type(r["id"]) is int for r in rows)
    assert rows[2]["error"].startswith("invalid JSON") and rows[3]["output"] == "<no id>"
    if fmt == "parquet":
        assert _id_types(tmp_path / "out") == {"int64"}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_string_ids_stay_strings_also_in_a_shard_of_default_ids(entry: str, tmp_path: Path, fmt: str) -> None:
    src = _jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": "x"}, {"id": "7", "text": "y"},
                                         {"text": "no id"}, "not json", {"id": True, "text": "a bool is no id"}])
    assert plan_inputs(src, rows_per_shard=2).id_type == "str"
    rows = _run(tmp_path / "out", src, 2, fmt)
    # shards 1 and 2 hold no string id at all: the plan's id type still makes their ids strings
    assert [r["id"] for r in rows] == ["a", "7", "2", "3", "4"]
    if fmt == "parquet":
        assert _id_types(tmp_path / "out") == {"string"}


def test_text_and_packed_like_inputs_have_integer_ids(entry: str, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("one\n\ntwo\n")
    assert plan_inputs(src).id_type == "int"
    rows = _run(tmp_path / "out", src, 10, "jsonl")
    assert [(r["id"], r["output"], r["error"]) for r in rows] == [(0, "<one>", None), (1, "<>", None),
                                                                   (2, "<two>", None)]


@pytest.mark.parametrize(("ids", "column"), [(list(range(100, 105)), "int64"),
                                              ([f"r{i}" for i in range(5)], "string")])
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_parquet_ids_keep_their_column_type(entry: str, tmp_path: Path, ids: list[Any], column: str,
                                            fmt: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": pa.array([ids[0], None, *ids[2:]], type=pa.int64() if column == "int64"
                                            else pa.string()),
                             "text": ["a", "b", "", None, "e"]}), src, row_group_size=2)
    plan = plan_inputs(src, rows_per_shard=2)
    assert plan.id_type == ("int" if column == "int64" else "str")
    rows = _run(tmp_path / "out", src, 2, fmt)
    default = 1 if column == "int64" else "1"  # a null id: the row's index, in the column's type
    assert [r["id"] for r in rows] == [ids[0], default, *ids[2:]]
    assert rows[2]["output"] == "<>" and rows[3]["error"] == "null input"
    if fmt == "parquet":
        assert _id_types(tmp_path / "out") == {column}


def test_the_key_of_a_row_is_the_id_as_text_so_seeds_do_not_change(tmp_path: Path) -> None:
    """row_seed(seed, row.id) gets the same string for {"id": 5} as it did before ids kept their type."""
    src = _jsonl(tmp_path / "in.jsonl", [{"id": 5, "text": "a"}, {"text": "b"}])
    plan = plan_inputs(src)
    rows = read_shard(plan, plan.shards[0])
    assert [r.id for r in rows] == ["5", "1"] and [plan.output_id(r.id) for r in rows] == [5, 1]


def test_a_plan_written_before_typed_ids_keeps_string_ids(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "in.jsonl", [{"id": 5, "text": "a"}])
    doc = plan_inputs(src).to_json()
    assert doc["id_type"] == "int" and plan_from_json(doc).id_type == "int"
    del doc["id_type"]
    old = plan_from_json(doc)
    assert old.id_type == "str" and old.output_id("5") == "5"
    with pytest.raises(ValueError, match="id_type"):
        plan_from_json({**doc, "id_type": "float"})


@pytest.mark.parametrize("block", [1 << 20, 7])  # 7 bytes: lines cut by the scan's block boundaries
def test_mixed_ids_are_refused_with_the_first_offending_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            block: int) -> None:
    monkeypatch.setattr(infer_inputs, "_SCAN_BLOCK", block)
    src = _jsonl(tmp_path / "in.jsonl", [{"text": "no id"}, {"id": 1, "text": "a"}, "broken {\"id\": \"x\"",
                                         {"id": True, "text": "b"}, {"id": 2.5, "text": "c"},
                                         {"id": 3, "text": 'says "id": "z"'}, {"id": "x", "text": "d"},
                                         {"id": "y", "text": "e"}])
    with pytest.raises(DataError) as err:
        plan_inputs(src, rows_per_shard=4)
    message = str(err.value)
    assert message.startswith(f"Expected row ids of one type in {src} (all integers or all strings). Got ")
    assert "the first string id is 'x' at row 6 (line 7, shard 1), after integer ids from row 1 on" in message
    assert "integer and string" in message and message.endswith("and submit again.") and "\n" not in message


def test_the_id_scan_leaves_the_shards_as_they_were(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"id": "a", "text": "x"}\r\n\xff\n{"id": "b", "text": "' + b"y" * 50 + b'"}\n{"text": "z"}')
    seen: list[tuple[int, bytes]] = []
    monkeypatch.setattr(infer_inputs, "_SCAN_BLOCK", 5)
    small = infer_inputs._plan_lines(src, 2, lambda row, line: seen.append((row, line)))
    monkeypatch.setattr(infer_inputs, "_SCAN_BLOCK", 1 << 20)
    assert small == infer_inputs._plan_lines(src, 2) and plan_inputs(src, rows_per_shard=2).shards == tuple(small)
    assert [row for row, _ in seen] == [0, 1, 2, 3] and seen[2][1].endswith(b'"}') and seen[3][1] == b'{"text": "z"}'


def test_an_escaped_id_key_counts_and_an_id_inside_a_text_does_not(tmp_path: Path) -> None:
    escaped = tmp_path / "escaped.jsonl"
    escaped.write_text('{"id": 1, "text": "a"}\n{"\\u0069d": "two", "text": "b"}\n')
    with pytest.raises(DataError, match=r"the first string id is 'two' at row 1 \(line 2, shard 0\)"):
        plan_inputs(escaped)
    quoted = _jsonl(tmp_path / "quoted.jsonl", [{"id": 1, "text": '{"id": "not mine"}'}, {"text": "b"}])
    assert plan_inputs(quoted).id_type == "int"
    last = tmp_path / "last.jsonl"  # the last line has no newline
    last.write_text('{"id": "a", "text": "x"}\n{"id": 2, "text": "y"}')
    with pytest.raises(DataError, match=r"row 1 \(line 2, shard 0\)"):
        plan_inputs(last)


def test_integer_ids_outside_int64_are_refused(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "in.jsonl", [{"id": 1, "text": "a"}, {"id": 1 << 63, "text": "b"}])
    with pytest.raises(DataError, match=r"Expected integer ids in the int64 range .* at row 1 \(line 2"):
        plan_inputs(src)


def test_empty_texts_are_tokenised_missing_or_null_fields_are_errors(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "in.jsonl", [{"text": ""}, {"text": "  \t"}, {"text": None}, {"other": "x"},
                                         {"text": 3}])
    plan = plan_inputs(src)
    rows = read_shard(plan, plan.shards[0])
    assert [(r.text, r.error) for r in rows] == [("", None), ("  \t", None), (None, "no text field 'text'"),
                                                 (None, "no text field 'text'"), (None, "field 'text' is not text")]


def test_an_engine_that_gives_no_tokens_for_an_empty_text_makes_it_an_error(tmp_path: Path) -> None:
    from hpc_aidc.data.infer_inputs import Row
    from hpc_aidc.formats.infer_plan import load_plan
    from hpc_aidc.node.infer.model import Engine
    from hpc_aidc.node.infer.run import ShardRunner

    class Words(Engine):  # a tokenizer without special tokens: "" and whitespace give none
        token_level, vocab_size, context = True, 100, 64

        def encode(self, text: str) -> list[int]:
            return [len(w) for w in text.split()]

    class WithCls(Words):  # an encoder's: [CLS] ... [SEP] around every text
        def encode(self, text: str) -> list[int]:
            return [1, *super().encode(text), 2]

    from infer_testkit import write_plan_for

    src = tmp_path / "in.txt"
    src.write_text("a b\n")
    write_plan_for(tmp_path / "out", "infer_testkit:write_plan_for", src, 1, 10, task="embed")
    runner = ShardRunner(tmp_path / "out", load_plan(tmp_path / "out"), "1", 0, "n1")
    runner._engine = Words()
    assert runner.prepare(Row("0", text="   ")).error == "empty after tokenisation"
    runner._engine = WithCls()
    prepared = runner.prepare(Row("0", text=""))
    assert prepared.error is None and prepared.ids == [1, 2]


def test_submit_dry_run_refuses_mixed_ids_with_exit_code_2(entry: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from hpc_aidc.cli.main import cli, run_command
    from hpc_aidc.scheduler import infer_submit

    def no_slurm() -> int:
        raise AssertionError("the input must be refused before Slurm is asked anything")

    monkeypatch.setattr(infer_submit, "max_array_size", no_slurm)
    site = tmp_path / "site.toml"
    site.write_text(f'[cluster]\njob_root = "{tmp_path}/jobs"\nenergy_store = "{tmp_path}/energy"\nscratch = "/tmp"\n'
                    'default_partition = "cpu"\n[partitions.cpu]\nnodes = 2\ngpus_per_node = 0\ncpus_per_node = 4\n')
    src = _jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": "x"}] * 3 + [{"id": 4, "text": "y"}])
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exited:
        run_command(cli, ["--site", str(site), "submit", "infer", "--entry", entry, "--input", str(src),
                          "--output", str(out), "--rows-per-shard", "2", "--dry-run"])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1 and "Traceback" not in captured.err
    assert captured.err.startswith("hpcai: error: Expected row ids of one type")
    assert "the first integer id is 4 at row 3 (line 4, shard 1), after string ids from row 0 on" in captured.err
    assert not out.exists() and not (tmp_path / "jobs").exists()
