"""The access helpers that need no cluster: the trusted admins list, the PrivateData note, and who the
current user is (one place, from the uid)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest
from conftest import RECORDED

from hpc_aidc import ids
from hpc_aidc.report import access
from hpc_aidc.report.access import Viewer, parse_private_data, private_jobs_note, trusted_admins
from hpc_aidc.report.aggregate import Filters

ALICE = Viewer("alice", False, frozenset({"physics"}))
PRIVATE = frozenset({"accounts", "jobs", "usage", "users"})


def test_no_trusted_profile_means_no_site_admins(tmp_path: Path) -> None:
    assert trusted_admins(tmp_path / "missing.toml") == frozenset()
    user_owned = tmp_path / "site.toml"
    user_owned.write_text('[cluster]\nadmins = ["bob"]\n')
    os.chmod(user_owned, 0o666)
    assert trusted_admins(user_owned) == frozenset()


def test_private_jobs_note_for_plain_members_only() -> None:
    note = private_jobs_note(ALICE, Filters(frozenset({"physics"})), PRIVATE)
    assert note is not None and "\n" not in note and "physics" in note and "PrivateData=jobs" in note
    assert private_jobs_note(ALICE, Filters(), PRIVATE) == note  # default: every visible account
    assert private_jobs_note(ALICE, Filters(), frozenset({"usage"})) is None
    assert private_jobs_note(Viewer("root", True, frozenset()), Filters(), PRIVATE) is None
    coordinator = Viewer("bob", False, frozenset({"climate"}), frozenset({"physics"}))
    assert private_jobs_note(coordinator, Filters(frozenset({"physics"})), PRIVATE) is None
    both = private_jobs_note(coordinator, Filters(), PRIVATE)
    assert both is not None and "climate" in both and "physics" not in both


def test_private_data_parsed_from_scontrol_config() -> None:
    assert parse_private_data((RECORDED / "scontrol_config.txt").read_text()) == {"usage"}
    assert parse_private_data("PrivateData             = accounts,jobs,usage,users\n") == PRIVATE
    assert parse_private_data("PrivateData             = none\n") == frozenset()
    assert parse_private_data("") == frozenset()


def test_one_current_user_from_the_uid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "bob")
    monkeypatch.setenv("LOGNAME", "bob")
    assert ids.current_user() == pwd.getpwuid(os.getuid()).pw_name
    assert not hasattr(access, "current_user")  # one "who is the current user": hpc_aidc.ids
