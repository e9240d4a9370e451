"""Every sample read back equals its source: through our reader, zarr-python and tensorstore."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from hpc_aidc.data.dataset import ShardedDataset
from hpc_aidc.data.pack import PackOptions, pack_local
from hpc_aidc.data.reader import ShardedArray
from hpc_aidc.data.spec import read_manifest
from hpc_aidc.data.tokenize import BYTE_EOS


def _read_all_ways(store: Path, name: str = "samples") -> list[np.ndarray]:
    manifest = read_manifest(store)
    ours = ShardedArray(store, manifest, name)
    single = np.stack([ours[i] for i in range(len(ours))])
    batch = ours.take(np.arange(len(ours))[::-1])[::-1]
    via_zarr = zarr.open_array(str(store / name), mode="r")[:]
    results = [single, batch, via_zarr]
    try:
        import tensorstore as ts
    except ImportError:  # optional: the independent implementation of the format
        return results
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(store / name)}}
    results.append(ts.open(spec, read=True).result().read().result())
    return results


@pytest.mark.parametrize("compression", ["none", "zstd", "blosc"])
@pytest.mark.parametrize("engine", ["direct", "zarr"])
def test_tokens_round_trip(tmp_path: Path, token_file: tuple[Path, np.ndarray], compression: str,
                           engine: str) -> None:
    path, tokens = token_file
    out = tmp_path / f"{compression}.zarr"
    from hpc_aidc.data.pack import finalize_pack, pack_task, prepare_pack

    prepare_pack(PackOptions(inputs=(str(path),), out=str(out), seq_len=100, shard_mib=0.03,
                             chunk_samples=4, compression=compression))
    pack_task(out, 0, 1, engine)
    manifest = finalize_pack(out)
    ref = tokens[: 500 * 100].reshape(500, 100)
    assert manifest.num_samples == 500 and manifest.num_shards > 3
    for got in _read_all_ways(out):
        np.testing.assert_array_equal(got, ref)


def test_text_documents_and_npy_sources(tmp_path: Path, jsonl: tuple[Path, list[str]]) -> None:
    path, texts = jsonl
    extra = np.arange(7, dtype=np.int32)
    np.save(tmp_path / "in" / "z.npy", extra)
    out = tmp_path / "text.zarr"
    manifest = pack_local(PackOptions(inputs=(str(path), str(tmp_path / "in" / "z.npy")), out=str(out),
                                      seq_len=64, shard_mib=0.01))
    stream = np.concatenate([np.append(np.frombuffer(t.encode(), np.uint8), BYTE_EOS) for t in texts] + [extra])
    n = len(stream) // 64
    assert manifest.tokenizer == {"kind": "bytes", "vocab_size": 257, "eos_id": BYTE_EOS}
    assert manifest.dropped_tokens == len(stream) - n * 64
    for got in _read_all_ways(out):
        np.testing.assert_array_equal(got, stream[: n * 64].reshape(n, 64))
    starts = ShardedDataset(out).document_starts()
    lengths = [len(t.encode()) + 1 for t in texts]
    want = np.concatenate([[0], np.cumsum(lengths)])  # the .npy file is the last document
    np.testing.assert_array_equal(starts, want[want < n * 64])


def test_hf_tokenizer_file(tmp_path: Path, jsonl: tuple[Path, list[str]]) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers

    tok = tokenizers.Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "document": 2, "héllo": 3,
                                                 "wörld": 4}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tok.json"))
    path, texts = jsonl
    out = tmp_path / "hf.zarr"
    manifest = pack_local(PackOptions(inputs=(str(path),), out=str(out), seq_len=16, shard_mib=0.01,
                                      tokenizer=str(tmp_path / "tok.json")))
    assert manifest.tokenizer is not None and manifest.tokenizer["eos_id"] == 1
    assert manifest.array("samples").dtype == "uint16"
    first = [[*tok.encode(t).ids, 1] for t in texts[:6]]
    flat = np.concatenate(first)[:16]
    np.testing.assert_array_equal(ShardedDataset(out)[0], flat)


def test_fixed_shape_samples_with_labels_and_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (70, 8, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", images[:30])
    np.save(tmp_path / "b.npy", images[30:])
    labels = rng.integers(0, 10, 70)
    np.save(tmp_path / "labels.npy", labels)
    out = tmp_path / "img.zarr"
    pack_local(PackOptions(inputs=(str(tmp_path / "a.npy"), str(tmp_path / "b.npy")), out=str(out),
                           shard_mib=0.004, labels=str(tmp_path / "labels.npy")))
    for got in _read_all_ways(out):
        np.testing.assert_array_equal(got, images)
    for got in _read_all_ways(out, "labels"):
        np.testing.assert_array_equal(got, labels)
    ds = ShardedDataset(out)
    item = ds[42]
    np.testing.assert_array_equal(item["samples"], images[42])
    assert item["labels"] == labels[42]

    from PIL import Image

    folder = tmp_path / "folder"
    for i in range(6):
        (folder / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(folder / f"class{i % 2}" / f"{i}.png")
    out2 = tmp_path / "folder.zarr"
    pack_local(PackOptions(inputs=(str(folder),), out=str(out2), shard_mib=0.001))
    ds2 = ShardedDataset(out2)
    order = [0, 2, 4, 1, 3, 5]  # sorted walk: class0/0,2,4 then class1/1,3,5
    for k, i in enumerate(order):
        np.testing.assert_array_equal(ds2[k]["samples"], images[i])
        assert ds2[k]["labels"] == i % 2
