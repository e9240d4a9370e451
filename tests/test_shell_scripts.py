"""Every shell script we ship parses (bash -n) and passes shellcheck."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

SCRIPTS = sorted(
    p for pattern in ("slurm/**/*.sh", "scripts/*.sh", "bench/**/*.sh", "monitoring/**/*.sh", ".ci/run")
    for p in REPO.glob(pattern)
)


def test_there_are_scripts() -> None:
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_bash_syntax_and_strict_mode(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    if not script.name.startswith("common"):  # sourced helpers inherit the caller's mode
        assert "set -euo pipefail" in text, f"{script} must use set -euo pipefail"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_shellcheck(script: Path) -> None:
    proc = subprocess.run(["shellcheck", "-x", "-S", "warning", str(script)], capture_output=True, text=True,
                          cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stdout
