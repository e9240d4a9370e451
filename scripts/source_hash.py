"""Print a digest of what a wheel of hpc-aidc carries (pyproject.toml and every file under hpc_aidc/,
the package data links followed): scripts/bootstrap.sh reinstalls the dev cluster's copy when it changes,
and the test suite refuses to run the cluster tests against a stale copy."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path


def source_hash(root: Path) -> str:
    digest = hashlib.sha256()
    files = [root / "pyproject.toml"]
    # os.walk, not rglob: hpc_aidc/share/* are links to folders, and their files go into the wheel too
    for folder, dirs, names in os.walk(root / "hpc_aidc", followlinks=True):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        files += [Path(folder) / name for name in names]
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


if __name__ == "__main__":
    print(source_hash(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])))
