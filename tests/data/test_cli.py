"""`hpcai data` through the real entry point: happy paths and error paths (one line, exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import RunHpcai

from hpc_aidc.cli.main import cli


def test_pack_info_verify_stage(token_file: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, tokens = token_file
    out = tmp_path / "cli.zarr"
    runner = CliRunner()
    res = runner.invoke(cli, ["data", "pack", str(path), "-o", str(out), "--seq-len", "256",
                              "--shard-mib", "0.05", "--compression", "zstd", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["num_samples"] == len(tokens) // 256
    res = runner.invoke(cli, ["data", "info", str(out), "--json"])
    assert json.loads(res.output)["compression"] == "zstd"
    assert "num_samples" in runner.invoke(cli, ["data", "info", str(out)]).output
    res = runner.invoke(cli, ["data", "verify", str(out)])
    assert res.exit_code == 0 and "ok: 3 shard files" in res.output
    res = runner.invoke(cli, ["data", "stage", str(out), "--scratch", str(tmp_path / "s"), "--json"])
    assert json.loads(res.output)["copied"] is True


def test_interrupted_pack_finishes_missing_shards(token_file: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    from hpc_aidc.data.pack import PackOptions, finalize_pack, pack_task, prepare_pack
    from hpc_aidc.data.spec import read_manifest

    path, _ = token_file
    out = tmp_path / "resume.zarr"
    opts = PackOptions(inputs=(str(path),), out=str(out), seq_len=128, shard_mib=0.01)
    prepare_pack(opts)
    first = pack_task(out, 0, 3)  # as if the run "crashed" after task 0 of 3
    stamps = {i: (out / f"samples/c/{i}/0").stat().st_mtime_ns for i in first}
    assert first == [0, 1, 2, 3]
    res = CliRunner().invoke(cli, ["data", "pack", str(path), "-o", str(out), "--seq-len", "128",
                                   "--shard-mib", "0.01", "--json"])
    assert res.exit_code == 0, res.output
    assert stamps == {i: (out / f"samples/c/{i}/0").stat().st_mtime_ns for i in first}  # not rewritten
    reference = tmp_path / "ref.zarr"
    prepare_pack(PackOptions(inputs=(str(path),), out=str(reference), seq_len=128, shard_mib=0.01))
    pack_task(reference)
    assert read_manifest(out).files == finalize_pack(reference).files


@pytest.mark.parametrize(("args", "message"), [
    (["data", "pack", "{missing}", "-o", "{out}"], "Expected an input file or folder"),
    (["data", "pack", "{bad}", "-o", "{out}", "--seq-len", "4"], "Expected a JSON object with a 'text' field"),
    (["data", "pack", "{odd}", "-o", "{out}"], "Expected a .bin file of whole uint16 tokens"),
    (["data", "pack", "{odd}", "-o", "{out}", "--extra", "nonsense"], "Expected --extra NAME=FILE.npy"),
    (["data", "verify", "{out}"], "Expected a packed dataset with manifest.json"),
    (["data", "info", "{missing}"], "Expected a packed dataset"),
])
def test_errors_are_one_line_exit_2_nothing_written(hpcai: RunHpcai, tmp_path: Path, args: list[str],
                                                    message: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\nnot json\n')
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"abc")
    out = tmp_path / "out.zarr"
    values = {"missing": str(tmp_path / "nope"), "bad": str(bad), "odd": str(odd), "out": str(out)}
    res = hpcai(*(a.format(**values) for a in args), timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stdout == "" and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert message in res.stderr
    assert not out.exists()


def test_corrupt_store_verify_names_shard(hpcai: RunHpcai, tmp_path: Path, packed: tuple[Path, np.ndarray]) -> None:
    store, _ = packed
    shard = store / "samples" / "c" / "5" / "0"
    shard.write_bytes(shard.read_bytes()[:-10])
    res = hpcai("data", "verify", str(store), timeout=120)
    assert res.returncode == 2 and "samples/c/5/0" in res.stderr and res.stderr.count("\n") == 1
    res = hpcai("data", "verify", str(store), "--json", timeout=120)
    assert res.returncode == 2 and json.loads(res.stdout)["ok"] is False


def test_help_does_not_import_heavy_modules() -> None:
    code = ("import sys; from hpc_aidc.cli.main import main\n"
            "try: main(['data', '--help'])\nexcept SystemExit: pass\n"
            "print(sorted(m for m in ('numpy', 'zarr', 'torch') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.strip().endswith("[]"), res.stdout
