"""The files hpc-aidc ships beside its code, as package data under hpc_aidc/share/: the sbatch templates
(`templates`), the report website (`report_site`), the Slurm-side scripts and the dev cluster (`slurm`)
and the monitoring files (`monitoring`).

They are found through importlib.resources, so a wheel installed into any prefix finds them; in a source
checkout hpc_aidc/share/* are links to the top-level folders of the same names that admins read."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Literal

from hpc_aidc.errors import ConfigError

Asset = Literal["templates", "report_site", "slurm", "monitoring"]


def asset_path(asset: Asset, *parts: str) -> Path:
    """The real path of a packaged file or folder (wheels install package data as plain files)."""
    path = Path(str(files("hpc_aidc").joinpath("share", asset, *parts)))
    if not path.exists():
        raise ConfigError(f"Expected hpc-aidc's packaged files at {path}. Got nothing there. Reinstall hpc-aidc "
                          "from its wheel or sdist (they carry hpc_aidc/share/).")
    return path
