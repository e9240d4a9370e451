"""Pack inputs: find them, count what each contributes, and read any range of the concatenated stream.

Token data (.bin, .npy, .txt, .jsonl) is one stream of tokens cut into fixed-length sequences; each file
(raw tokens, .txt) or JSONL line is one document. Text is tokenized once, in the plan step, into
<out>/.pack/tokens/ so that every pack task (and a re-run) reads the same ids. Fixed-shape data (.npy
of shape (n, ...) or an image folder with one sub-folder per class) is a stream of samples."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpc_aidc.data.spec import PackPlan, Source
from hpc_aidc.data.tokenize import Tokenizer
from hpc_aidc.errors import DataError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

TOKEN_SUFFIXES = {".bin": "bin", ".npy": "npy", ".txt": "text", ".jsonl": "jsonl"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def find_files(inputs: Sequence[str | Path], suffixes: Iterable[str]) -> list[Path]:
    """Input files in a stable order: each argument in order, directories walked sorted."""
    wanted = set(suffixes)
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in wanted))
        elif path.is_file():
            if path.suffix.lower() not in wanted:
                raise DataError(
                    f"Expected input files ending in {', '.join(sorted(wanted))}. Got {str(path)!r} instead. "
                    "Convert it or pass a folder of supported files."
                )
            found.append(path)
        else:
            raise DataError(f"Expected an input file or folder. Got {str(path)!r}, which does not exist. "
                            "Check the path.")
    if not found:
        raise DataError(f"Expected at least one input file ending in {', '.join(sorted(wanted))}. "
                        f"Got none under {', '.join(map(str, inputs))}. Check the paths.")
    return found


def _npy_header(path: Path) -> tuple[tuple[int, ...], Any]:
    import numpy as np

    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise DataError(f"Expected a readable .npy file. Got {str(path)!r}: {exc}. Re-create the file.") from None
    return tuple(arr.shape), arr.dtype


def _read_texts(path: Path, text_key: str) -> list[str]:
    if path.suffix.lower() == ".txt":
        return [path.read_text(errors="replace")]
    texts: list[str] = []
    with path.open(errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                texts.append(str(json.loads(line)[text_key]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(
                    f"Expected a JSON object with a {text_key!r} field on each line. Got {line[:60]!r} at "
                    f"{path}:{lineno} instead. Fix the line or pass --text-key."
                ) from None
    return texts


def token_cache(out: Path, i: int) -> tuple[Path, Path]:
    base = out / ".pack" / "tokens"
    return base / f"{i:06d}.npy", base / f"{i:06d}.docs.npy"


def plan_token_sources(files: Sequence[Path], out: Path, tokenizer: Tokenizer, token_dtype_in: str,
                       text_key: str) -> tuple[list[Source], int]:
    """Sources with their token counts, and the number of documents. Tokenizes text into the cache."""
    import numpy as np

    from hpc_aidc.fsutil import atomic_save_npy

    sources: list[Source] = []
    documents = 0
    itemsize = np.dtype(token_dtype_in).itemsize
    for i, path in enumerate(files):
        kind = TOKEN_SUFFIXES[path.suffix.lower()]
        if kind == "bin":
            size = path.stat().st_size
            if size % itemsize:
                raise DataError(
                    f"Expected a .bin file of whole {token_dtype_in} tokens. Got {size} bytes in {path}, "
                    f"not a multiple of {itemsize}. Pass the right --token-dtype."
                )
            count, docs = size // itemsize, 1
        elif kind == "npy":
            shape, dtype = _npy_header(path)
            if len(shape) != 1 or dtype.kind not in "iu":
                raise DataError(f"Expected a 1-D integer token array in {path}. Got shape {shape} dtype {dtype}. "
                                "Flatten it or pack it as fixed-shape samples (--kind samples).")
            count, docs = shape[0], 1
        else:
            tokens_path, docs_path = token_cache(out, i)
            if not (tokens_path.exists() and docs_path.exists()):
                encoded = tokenizer.encode_documents(_read_texts(path, text_key))
                lengths = np.array([len(e) for e in encoded], dtype=np.int64)
                flat = np.concatenate(encoded) if encoded else np.zeros(0, np.int64)
                atomic_save_npy(tokens_path, flat.astype(np.uint32))
                atomic_save_npy(docs_path, lengths)
            count = int(np.load(tokens_path, mmap_mode="r").shape[0])
            docs = int(np.load(docs_path, mmap_mode="r").shape[0])
        sources.append(Source(path=str(path.resolve()), kind=kind, count=int(count)))
        documents += docs
    return sources, documents


def _source_tokens(plan: PackPlan, out: Path, i: int) -> npt.NDArray[Any]:
    import numpy as np

    src = plan.sources[i]
    if src.kind == "bin":
        return np.memmap(src.path, dtype=plan.token_dtype_in, mode="r")
    tokens: npt.NDArray[Any] = np.load(src.path if src.kind == "npy" else token_cache(out, i)[0], mmap_mode="r")
    return tokens


def _gather(plan: PackPlan, start: int, stop: int,
            read: Any) -> list[npt.NDArray[Any]]:
    """Pieces of the concatenated source stream [start, stop), read through `read(i, lo, hi)`."""
    pieces = []
    offset = 0
    for i, src in enumerate(plan.sources):
        lo, hi = max(start, offset), min(stop, offset + src.count)
        if lo < hi:
            pieces.append(read(i, lo - offset, hi - offset))
        offset += src.count
        if offset >= stop:
            break
    return pieces


def read_tokens(plan: PackPlan, out: Path, start: int, stop: int, dtype: str) -> npt.NDArray[Any]:
    import numpy as np

    pieces = _gather(plan, start, stop, lambda i, lo, hi: _source_tokens(plan, out, i)[lo:hi])
    flat = np.concatenate(pieces) if pieces else np.zeros(0, dtype)
    if flat.size and int(flat.max()) > np.iinfo(dtype).max:
        raise DataError(f"Expected token ids that fit {dtype}. Got id {int(flat.max())}. Pass --dtype uint32.")
    return flat.astype(dtype, copy=False)


def document_starts(plan: PackPlan, out: Path) -> npt.NDArray[np.int64]:
    """Global token offsets where documents start, limited to the tokens kept in sequences."""
    import numpy as np

    starts: list[npt.NDArray[np.int64]] = []
    offset = 0
    for i, src in enumerate(plan.sources):
        if src.kind in ("bin", "npy"):
            starts.append(np.array([offset], np.int64))
        else:
            lengths = np.load(token_cache(out, i)[1])
            starts.append(offset + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64))
        offset += src.count
    kept = plan.num_samples * plan.seq_len
    all_starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
    return all_starts[all_starts < kept]


def plan_sample_sources(files: Sequence[Path]) -> tuple[list[Source], tuple[int, ...], str]:
    """Sources of fixed-shape samples (.npy stacks or images), their common shape and dtype."""
    sources: list[Source] = []
    shapes: set[tuple[int, ...]] = set()
    dtypes: set[str] = set()
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    classes = sorted({p.parent.name for p in images})
    for path in files:
        if path.suffix.lower() == ".npy":
            shape, dtype = _npy_header(path)
            if len(shape) < 1:
                raise DataError(f"Expected an array of samples (n, ...) in {path}. Got a scalar. Re-create it.")
            sources.append(Source(str(path.resolve()), "npy", shape[0]))
            shapes.add(shape[1:])
            dtypes.add(str(dtype))
        else:
            image = _load_image(path)
            sources.append(Source(str(path.resolve()), "image", 1, classes.index(path.parent.name)))
            shapes.add(tuple(image.shape))
            dtypes.add(str(image.dtype))
    if len(shapes) != 1 or len(dtypes) != 1:
        raise DataError(
            f"Expected samples of one shape and dtype. Got shapes {sorted(shapes)} and dtypes {sorted(dtypes)}. "
            "Resize or convert the inputs to a common shape first."
        )
    return sources, shapes.pop(), dtypes.pop()


def _load_image(path: Path) -> npt.NDArray[Any]:
    import numpy as np

    try:
        from PIL import Image
    except ImportError:
        raise DataError("Expected Pillow to read image folders. Got it not installed. "
                        "pip install pillow, or pack .npy arrays instead.") from None
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except OSError as exc:
        raise DataError(f"Expected a readable image. Got {str(path)!r}: {exc}. Remove or fix it.") from None


def read_samples(plan: PackPlan, start: int, stop: int) -> npt.NDArray[Any]:
    import numpy as np

    def one(i: int, lo: int, hi: int) -> npt.NDArray[Any]:
        src = plan.sources[i]
        rows: npt.NDArray[Any] = (_load_image(Path(src.path))[None] if src.kind == "image"
                                  else np.asarray(np.load(src.path, mmap_mode="r")[lo:hi]))
        return rows

    return np.concatenate(_gather(plan, start, stop, one))


def read_labels(plan: PackPlan, start: int, stop: int) -> npt.NDArray[Any]:
    import numpy as np

    return np.array([s.label for s in plan.sources[start:stop]], dtype=np.int64)
