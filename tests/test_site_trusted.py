"""`load_trusted_site`: the admin's /etc/hpcai/site.toml is the only profile that decides access (who is
a site admin) and what root-run code trusts. A profile anyone but root could have written, a link, or one
in a folder others may write decides nothing; a user's HPCAI_* never changes an admin-only key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from site_fixture import site_doc

from hpc_aidc.errors import SiteProfileError
from hpc_aidc.report.access import trusted_admins
from hpc_aidc.site_profile import load_site, load_trusted_site, parse_site

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="making files owned by others needs root")
OTHER_UID = 4242  # any uid but root's


def _write_profile(folder: Path, admins: list[str]) -> Path:
    folder.mkdir(mode=0o755, exist_ok=True)
    os.chmod(folder, 0o755)
    path = folder / "site.toml"
    path.write_text(PROFILE.replace("@ADMINS@", ", ".join(f'"{a}"' for a in admins)))
    os.chmod(path, 0o644)
    return path


PROFILE = """
[cluster]
name = "t"
job_root = "/jobs"
energy_store = "/energy"
scratch = "/scratch"
admins = [@ADMINS@]
setup = ["module load cuda"]
energy_prolog = true

[partitions.gpu]
nodes = 4
gpus_per_node = 4
cpus_per_node = 8
"""


@pytest.fixture()
def profile(tmp_path: Path) -> Path:
    return _write_profile(tmp_path / "hpcai", ["carol"])


def test_root_owned_profile_is_trusted(profile: Path) -> None:
    assert load_trusted_site(profile).admins == ("carol",)
    assert trusted_admins(profile) == {"carol"}


def test_env_cannot_change_admin_only_keys(profile: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sneaky = {"HPCAI_ADMINS": "bob", "HPCAI_SETUP": "touch /tmp/pwned", "HPCAI_ENERGY_STORE": "/home/bob/e",
              "HPCAI_ENERGY_PROLOG": "0", "HPCAI_SITE": "/home/bob/site.toml", "HPCAI_JOB_ROOT": "/home/bob/j"}
    for key, value in sneaky.items():
        monkeypatch.setenv(key, value)
    site = load_trusted_site(profile)
    assert site.admins == ("carol",) and site.setup == ("module load cuda",) and site.energy_prolog is True
    assert site.energy_store == Path("/energy") and site.job_root == Path("/jobs")  # no HPCAI_* at all
    assert site.source == str(profile)
    # the user's own profile loader also ignores HPCAI_* for the admin-only keys
    mine = parse_site(site_doc(), environ=sneaky)
    assert mine.admins == ("root",) and mine.setup == ("module load cuda",)
    assert mine.energy_store == Path("/energy") and mine.energy_prolog is False
    assert mine.job_root == Path("/home/bob/j")  # an ordinary key still follows the user's env


def _refused(path: Path, needle: str) -> None:
    with pytest.raises(SiteProfileError, match=needle) as err:
        load_trusted_site(path)
    assert "\n" not in str(err.value)
    assert trusted_admins(path) == frozenset()  # nobody is a site admin then


def test_profile_not_owned_by_root_is_refused(profile: Path) -> None:
    os.chown(profile, OTHER_UID, OTHER_UID)
    _refused(profile, f"owner uid {OTHER_UID}")
    assert load_site(profile, environ={}).admins == ("carol",)  # --site would read it: never for access


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_profile_writable_by_others_is_refused(profile: Path, mode: int) -> None:
    os.chmod(profile, mode)
    _refused(profile, f"mode {mode:o}")


def test_symlink_is_refused_even_to_a_good_profile(profile: Path, tmp_path: Path) -> None:
    link_dir = tmp_path / "etc"
    link_dir.mkdir(mode=0o755)
    (link_dir / "site.toml").symlink_to(profile)
    _refused(link_dir / "site.toml", "symbolic link")


def test_folder_writable_by_others_is_refused(profile: Path) -> None:
    os.chmod(profile.parent, 0o777)
    _refused(profile, "writable by root alone")
    os.chmod(profile.parent, 0o755)
    os.chown(profile.parent, OTHER_UID, -1)
    _refused(profile, f"owner uid {OTHER_UID}")


def test_missing_fifo_and_folder_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "hpcai"
    folder.mkdir(mode=0o755)
    _refused(folder / "site.toml", "no such file")
    os.mkfifo(folder / "site.toml", 0o644)  # must not hang the reader
    _refused(folder / "site.toml", "regular file")
    _refused(tmp_path / "nowhere" / "site.toml", "directory")
    bad = _write_profile(tmp_path / "bad", [])
    bad.write_text("[cluster\n")
    _refused(bad, "valid TOML")
