"""Batch inference on the dev cluster (real Slurm job arrays): a 4-task array over a packed store with one
task cancelled mid-shard and another requeued by an admin, finished by `infer retry`, equal bit for bit
to a one-shot run; a run split into several arrays by a small MaxArraySize; bad input refused before
anything is submitted or written; `hpcai status` of an inference job; `hpcai logs` of an array task and of
a whole inference array."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_kit import json_output, release_requeued, submit_json
from conftest import REPO, RunHpcai, assert_clean_error, wait_until
from infer_testkit import run_local

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def work() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="hpcai-infer-", dir="/tmp"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_job(cluster: None, work: Path, hpcai: RunHpcai) -> Path:
    """The tiny GPT, trained by `hpcai submit train` (its checkpoint is what inference runs)."""
    job = submit_json(hpcai, "train", "-N", "1", "--ntasks-per-node", "1", "-p", "debug", "-A", "physics",
                      "--config", str(REPO / "examples" / "tiny.toml"), "--wait", cwd=work, timeout=600)
    return Path(job["folder"])


@pytest.fixture(scope="module")
def packed(cluster: None, work: Path, hpcai: RunHpcai) -> Path:
    """A packed token store the tiny GPT can read: ids below its vocabulary (256), 24 tokens a row."""
    import numpy as np

    tokens = work / "tokens.bin"
    np.random.default_rng(0).integers(0, 256, size=24 * 300, dtype=np.uint16).tofile(tokens)
    store = work / "corpus.zarr"
    proc = hpcai("data", "pack", str(tokens), "--out", str(store), "--seq-len", "24", "--token-dtype", "uint16",
                 "--vocab-size", "256", "--shard-mib", "0.001", "--chunk-samples", "4")
    assert proc.returncode == 0, proc.stderr
    return store


def _status(hpcai: RunHpcai, out: Path) -> dict[str, object]:
    result: dict[str, object] = json_output(hpcai("infer", "status", str(out), "--json"))
    return result


def _idle(hpcai: RunHpcai, out: Path) -> bool:
    s = _status(hpcai, out)
    return s["running"] == 0 and s["pending"] == 0


def _array_id(out: Path) -> str:
    return str(json.loads((out / "submissions.jsonl").read_text().splitlines()[-1])["job_id"])


def _shards_of_task(task: int, tasks: int, shards: int) -> list[int]:
    return list(range(task * shards // tasks, (task + 1) * shards // tasks))


def test_array_with_a_cancelled_and_a_requeued_task_ends_bitwise_equal_to_a_one_shot_run(
        tiny_job: Path, packed: Path, work: Path, hpcai: RunHpcai) -> None:
    out = work / "out-array"
    sub = submit_json(hpcai, "infer", "--model", str(tiny_job), "--input", str(packed), "--output", str(out),
                      "--tasks", "4", "-A", "physics", "--max-new-tokens", "40", "--batch-size", "1",
                      "--temperature", "0.9", "--top-p", "0.9", "--seed", "3")
    job = sub["arrays"][0]["job_id"]
    shards = json.loads((out / "plan.json").read_text())["input"]["shards"]
    n = len(shards)
    assert n >= 12

    def mid_shard(task: int) -> bool:
        return any(list((out / "partial" / f"{k:06d}").glob("b*.json")) for k in _shards_of_task(task, 4, n))

    wait_until("task 1 flushed no batch", lambda: mid_shard(1), 180, interval=0.2)
    subprocess.run(["scancel", f"{job}_1"], check=True)
    wait_until("task 2 flushed no batch", lambda: mid_shard(2), 180, interval=0.2)
    subprocess.run(["scontrol", "requeue", f"{job}_2"], check=True)
    release_requeued(f"{job}_2")
    wait_until("the array did not end", lambda: _idle(hpcai, out), 300, interval=0.2)
    status = _status(hpcai, out)
    # the cancelled task's shards are missing (one of them part-done), everything else is complete
    assert status["missing"] >= 1 and status["done"] + status["missing"] + status["failed"] == n, status
    retried = hpcai("infer", "retry", str(out), "--json")
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout)["task_list"] == "1"
    wait_until("retry did not finish the run",
               lambda: _idle(hpcai, out) and _status(hpcai, out)["done"] == n, 300, interval=0.2)
    assert_clean_error(hpcai("infer", "retry", str(out)), "Got none to retry")

    reference = work / "out-one-shot"
    reference.mkdir()
    shutil.copy(out / "plan.json", reference / "plan.json")
    run_local(reference, range(4))
    for k in range(n):
        name = f"{k:06d}.jsonl"
        assert (out / "shards" / name).read_bytes() == (reference / "shards" / name).read_bytes(), k
    rows = [json.loads(line) for k in range(n)
            for line in (out / "shards" / f"{k:06d}.jsonl").read_text().splitlines()]
    # none twice, none missing
    assert [r["id"] for r in rows] == list(range(sum(s["rows"] for s in shards)))  # a packed store: int ids
    assert all(r["error"] is None and len(r["tokens"]) == 40 for r in rows)
    # the requeued task ran twice and resumed: its shard kept the batches of the first run
    assert (out / "done").is_dir() and not any((out / "partial").iterdir())
    shown = hpcai("status", f"{job}_0")
    assert shown.returncode == 0 and "inference:" in shown.stdout and f"{n} done" in shown.stdout, shown.stdout


def test_a_small_max_array_size_splits_the_run_into_several_arrays(work: Path, hpcai: RunHpcai, cluster: None) -> None:
    mod = work / "upper_entry.py"
    mod.write_text("def run(texts, task, params):\n    return [t.upper() for t in texts]\n")
    data = work / "lines.txt"
    data.write_text("".join(f"line {i}\n" for i in range(60)))
    out = work / "out-windows"
    arrays = submit_json(hpcai, "infer", "--entry", "upper_entry:run", "--input", str(data), "--output", str(out),
                         "--rows-per-shard", "2", "--tasks", "10", "-A", "physics", "--gpus-per-task", "0",
                         env={"HPCAI_MAX_ARRAY_SIZE": "4", "PYTHONPATH": str(work)})["arrays"]
    assert [(a["offset"], a["array"]) for a in arrays] == [(0, "0-3"), (4, "0-3"), (8, "0-1")]
    wait_until("the windows did not finish",
               lambda: _idle(hpcai, out) and _status(hpcai, out)["done"] == 30, 300, interval=0.2)
    rows = [json.loads(line) for f in sorted((out / "shards").glob("*.jsonl")) for line in f.read_text().splitlines()]
    assert [r["output"] for r in rows] == [f"LINE {i}" for i in range(60)]


def test_bad_input_is_refused_before_anything_is_submitted(tiny_job: Path, packed: Path, work: Path,
                                                           hpcai: RunHpcai) -> None:
    wrong_field = work / "body.jsonl"
    wrong_field.write_text(json.dumps({"body": "x"}) + "\n")
    mixed_ids = work / "mixed.jsonl"
    mixed_ids.write_text(json.dumps({"id": 1, "text": "x"}) + "\n" + json.dumps({"id": "b", "text": "y"}) + "\n")
    encoder = work / "encoder"
    encoder.mkdir(exist_ok=True)
    (encoder / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "hidden_size": 8}))
    (encoder / "model.safetensors").write_bytes(b"\0" * 16)
    base = ["submit", "infer", "--input", str(packed), "-A", "physics"]
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout
    cases = [
        ([*base, "--model", str(tiny_job), "--output", str(work / "o1"), "--input", str(work / "nope.jsonl")],
         "Expected an existing --input"),
        ([*base, "--model", str(tiny_job), "--output", str(work / "o2"), "--input", str(wrong_field)],
         "Expected a field 'text'"),
        ([*base, "--model", str(work / "no-model"), "--output", str(work / "o3")], "Expected --model to be"),
        ([*base, "--model", str(encoder), "--output", str(work / "o4")], "Expected a causal language model"),
        ([*base, "--model", str(tiny_job), "--output", str(work / "o5"), "--tasks", "99"],
         "Expected --tasks between 1 and the number of input shards"),
        ([*base, "--model", str(tiny_job), "--output", str(work / "o6"), "--gpus-per-task", "1",
          "--batch-size", "100000000"], "Expected a batch that fits one h100"),
        ([*base, "--output", str(work / "o7")], "Expected exactly one of --model or --entry"),
        ([*base, "--model", str(tiny_job), "--output", str(work / "o8"), "--top-p", "0"], "Expected --top-p in (0, 1]"),
        ([*base, "--model", str(tiny_job), "--output", str(work / "o9"), "--input", str(mixed_ids)],
         "the first string id is 'b' at row 1 (line 2, shard 0)"),
    ]
    for argv, needle in cases:
        assert_clean_error(hpcai(*argv), needle)
        assert not (work / argv[argv.index("--output") + 1].split("/")[-1]).exists()
    # an output that holds another run's results is refused, and left as it was
    out = work / "out-array"
    if (out / "plan.json").exists():
        plan_before = (out / "plan.json").read_bytes()
        assert_clean_error(hpcai(*base, "--model", str(tiny_job), "--output", str(out), "--max-new-tokens", "5"),
                           "Got the results of other parameters (")
        assert (out / "plan.json").read_bytes() == plan_before
    after = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout
    assert set(after.split()) <= set(before.split())


def test_logs_of_an_inference_array_task_and_of_the_whole_array(work: Path, hpcai: RunHpcai, cluster: None) -> None:
    """`hpcai logs N_K` finds an inference task's log in its run's folder (infer-<run>/), also with
    --follow; `hpcai logs N` prints every task's log after a header; --follow refuses a whole array."""
    (work / "shout_entry.py").write_text("def run(texts, task, params):\n    return [t + '!' for t in texts]\n")
    data = work / "shout.jsonl"
    data.write_text("".join(json.dumps({"id": i, "text": f"row {i}"}) + "\n" for i in range(8)))
    out = work / "out-logs"
    sub = submit_json(hpcai, "infer", "--entry", "shout_entry:run", "--input", str(data), "--output", str(out),
                      "--rows-per-shard", "2", "--tasks", "2", "-A", "physics", "--gpus-per-task", "0",
                      env={"PYTHONPATH": str(work)})
    job = sub["arrays"][0]["job_id"]
    follow = hpcai("logs", f"{job}_1", "--follow", timeout=300)
    assert follow.returncode == 0, follow.stderr
    assert "hpcai infer: task 1 process 0/1: shards [2, 3] of 4" in follow.stdout
    assert "hpcai infer: shard 3 done" in follow.stdout
    wait_until("the run did not finish", lambda: _idle(hpcai, out) and _status(hpcai, out)["done"] == 4, 300,
               interval=0.2)
    one = hpcai("logs", f"{job}_0")
    assert one.returncode == 0 and "hpcai infer: shard 1 done" in one.stdout and "shard 3" not in one.stdout, one
    whole = hpcai("logs", job)
    assert whole.returncode == 0, whole.stderr
    headers = [line for line in whole.stdout.splitlines() if line.startswith("==> ")]
    assert headers == [f"==> {job}_0 (COMPLETED) <==", f"==> {job}_1 (COMPLETED) <=="], whole.stdout
    assert whole.stdout.index("shard 1 done") < whole.stdout.index(headers[1]) < whole.stdout.index("shard 3 done")
    assert_clean_error(hpcai("logs", job, "--follow"), f"Follow one task: `hpcai logs {job}_0 --follow`")
    rows = [json.loads(line) for f in sorted((out / "shards").glob("*.jsonl")) for line in f.read_text().splitlines()]
    assert [(r["id"], r["output"]) for r in rows] == [(i, f"row {i}!") for i in range(8)]  # ids stay integers
