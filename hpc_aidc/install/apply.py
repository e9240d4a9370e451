"""Carry out an install plan as root, and roll it back.

Every folder and file is changed through an fd opened without following links (a link where the plan
puts a file or folder is refused, never followed). What was there before is kept in a manifest,
PREFIX/.hpcai-install.json (root 0600), with a copy of each file the install replaced, so `uninstall`
removes what the install made, restores what it replaced, and leaves what someone changed since."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from hpc_aidc.errors import ConfigError
from hpc_aidc.fsutil import DIR_FLAGS, atomic_write_at
from hpc_aidc.install.plan import Entry

MANIFEST = ".hpcai-install.json"
BACKUPS = ".hpcai-install-backup"


@dataclass(frozen=True)
class Change:
    action: str   # create, update, chmod, unchanged (install); remove, restore, keep (uninstall)
    path: str
    detail: str = ""

    def line(self) -> str:
        return f"{self.action:<9} {self.path}{'  ' + self.detail if self.detail else ''}"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _lstat(path: PurePosixPath) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _open_dir(path: PurePosixPath) -> int:
    try:
        return os.open(path, DIR_FLAGS)
    except OSError as exc:
        raise ConfigError(f"Expected a real folder at {path}. Got {exc.strerror}. Remove what is there "
                          "(a link or a file) and run the install again.") from None


def _read_manifest(prefix: PurePosixPath) -> dict[str, dict[str, Any]]:
    path = prefix / MANIFEST
    st = _lstat(path)
    if st is None:
        return {}
    if not stat.S_ISREG(st.st_mode) or st.st_uid != 0:
        raise ConfigError(f"Expected {path} to be root's own file. Got something else. Remove it by hand.")
    with open(path, "rb") as f:
        entries = json.load(f)["entries"]
    return {e["path"]: e for e in entries}


def _write_manifest(prefix: PurePosixPath, records: Iterable[dict[str, Any]]) -> None:
    fd = _open_dir(prefix)
    try:
        body = json.dumps({"version": 1, "entries": list(records)}, indent=1).encode()
        atomic_write_at(fd, MANIFEST, body, mode=0o600, owner=(0, 0))
    finally:
        os.close(fd)


def _backup(prefix: PurePosixPath, data: bytes) -> str:
    folder = prefix / BACKUPS
    if _lstat(folder) is None:
        os.mkdir(folder, 0o700)
    fd = _open_dir(folder)
    try:
        name = _sha(data)
        atomic_write_at(fd, name, data, mode=0o600, owner=(0, 0))
    finally:
        os.close(fd)
    return name


def _read_file(parent_fd: int, name: str) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"Expected a plain file {name}. Got something else. Remove it and install again.")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _ensure_ancestors(path: PurePosixPath, records: dict[str, dict[str, Any]], dry_run: bool,
                      changes: list[Change], made: set[PurePosixPath]) -> None:
    """Folders above the plan that do not exist yet (e.g. /opt for /opt/hpcai): made root 0755."""
    for parent in reversed(path.parents):
        if parent not in made and _lstat(parent) is None:
            made.add(parent)
            changes.append(Change("create", str(parent), "dir 0755 0:0"))
            if not dry_run:
                os.mkdir(parent, 0o755)
                records[str(parent)] = {"path": str(parent), "dir": True, "created": True, "keep": False}


def apply_plan(prefix: PurePosixPath, plan: Sequence[Entry], dry_run: bool) -> list[Change]:
    """Make the plan true on disk (or, with dry_run, say what that would change)."""
    records = _read_manifest(prefix) if _lstat(prefix) is not None else {}
    changes: list[Change] = []
    made: set[PurePosixPath] = set()  # what a dry run would have made by now
    _ensure_ancestors(prefix, records, dry_run, changes, made)
    for entry in plan:
        _ensure_ancestors(entry.path, records, dry_run, changes, made)
        changes.append(_apply_entry(prefix, entry, records, dry_run))
        made.add(entry.path)
    if not dry_run:
        _write_manifest(prefix, records.values())
    return changes


def _apply_entry(prefix: PurePosixPath, entry: Entry, records: dict[str, dict[str, Any]], dry_run: bool) -> Change:
    key = str(entry.path)
    st = _lstat(entry.path)
    record = records.get(key, {"path": key, "dir": entry.is_dir, "keep": entry.keep, "created": st is None})
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise ConfigError(f"Expected a {'folder' if entry.is_dir else 'file'} at {key}. Got a symbolic link. "
                          "Remove it (root never follows links here) and install again.")
    if st is not None and stat.S_ISDIR(st.st_mode) != entry.is_dir:
        raise ConfigError(f"Expected a {'folder' if entry.is_dir else 'file'} at {key}. Got a "
                          f"{'folder' if stat.S_ISDIR(st.st_mode) else 'file'}. Move it away and install again.")
    want = (entry.uid, entry.gid, entry.mode)
    if st is not None and "before" not in record and not record.get("created"):
        record["before"] = [st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)]
    action, detail = "unchanged", ""
    if st is None:
        action, detail = "create", entry.describe().split(" ", 2)[1] + f" {entry.uid}:{entry.gid}"
    if dry_run:
        if st is not None:
            have = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
            if have != want:
                action = "chmod"
                detail = f"{have[2]:04o} {have[0]}:{have[1]} -> {entry.mode:04o} {entry.uid}:{entry.gid}"
            if entry.content is not None and not entry.keep:
                parent_fd = _open_dir(entry.path.parent)
                try:
                    if _read_file(parent_fd, entry.path.name) != entry.content:
                        action = "update"
                finally:
                    os.close(parent_fd)
        return Change(action, key, detail)
    if entry.is_dir:
        if st is None:
            os.mkdir(entry.path, 0o700)
        fd = _open_dir(entry.path)
        try:
            action = _fix_owner_mode(fd, want, action)
        finally:
            os.close(fd)
    else:
        action = _apply_file(prefix, entry, st, record, action)
    if entry.content is not None:
        record["sha256"] = _sha(entry.content) if not entry.keep else None
    records[key] = record
    return Change(action, key, detail if action == "create" else "")


def _fix_owner_mode(fd: int, want: tuple[int, int, int], action: str) -> str:
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) != want[:2]:
        os.fchown(fd, want[0], want[1])
        action = "chmod" if action == "unchanged" else action
    if stat.S_IMODE(os.fstat(fd).st_mode) != want[2]:
        os.fchmod(fd, want[2])
        action = "chmod" if action == "unchanged" else action
    return action


def _apply_file(prefix: PurePosixPath, entry: Entry, st: os.stat_result | None, record: dict[str, Any],
                action: str) -> str:
    assert entry.content is not None
    parent_fd = _open_dir(entry.path.parent)
    try:
        if st is None or (not entry.keep and _read_file(parent_fd, entry.path.name) != entry.content):
            if st is not None:
                if not record.get("created") and "backup" not in record:
                    record["backup"] = _backup(prefix, _read_file(parent_fd, entry.path.name))
                action = "update"
            atomic_write_at(parent_fd, entry.path.name, entry.content, mode=entry.mode,
                            owner=(entry.uid, entry.gid))
            return action
        fd = os.open(entry.path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent_fd)
        try:
            return _fix_owner_mode(fd, (entry.uid, entry.gid, entry.mode), action)
        finally:
            os.close(fd)
    finally:
        os.close(parent_fd)


def uninstall(prefix: PurePosixPath, dry_run: bool) -> list[Change]:
    """Undo the install under `prefix`: its files go (unless changed since), replaced files come back,
    folders it made go when empty, folders it changed get their owner and mode back."""
    if _lstat(prefix / MANIFEST) is None:
        raise ConfigError(f"Expected an install manifest at {prefix / MANIFEST}. Got none. Pass the --prefix "
                          "that `hpcai admin install` used.")
    records = _read_manifest(prefix)
    changes: list[Change] = []
    leftovers = [str(prefix / MANIFEST), str(prefix / BACKUPS)]
    for record in reversed(list(records.values())):
        changes.append(_undo(prefix, record, dry_run, leftovers))
    return changes


def _undo(prefix: PurePosixPath, record: dict[str, Any], dry_run: bool, leftovers: list[str]) -> Change:
    path = PurePosixPath(record["path"])
    st = _lstat(path)
    if st is None:
        return Change("unchanged", str(path), "already gone")
    if stat.S_ISLNK(st.st_mode):
        return Change("keep", str(path), "a link now: left alone")
    if record["dir"]:
        if path == prefix and not dry_run:
            for name in leftovers:
                _remove_leftover(PurePosixPath(name))
        if record.get("created"):
            if dry_run:
                return Change("remove", str(path))
            try:
                os.rmdir(path)
            except OSError:
                return Change("keep", str(path), "not empty")
            return Change("remove", str(path))
        return _restore_mode(path, record, dry_run)
    parent_fd = _open_dir(path.parent)
    try:
        data = _read_file(parent_fd, path.name)
        if record.get("keep"):
            if record.get("created") and not data:
                if not dry_run:
                    os.unlink(path.name, dir_fd=parent_fd)
                return Change("remove", str(path))
            return Change("keep", str(path), "holds data")
        if record.get("sha256") != _sha(data):
            return Change("keep", str(path), "changed since the install")
        if record.get("backup"):
            if not dry_run:
                before = record.get("before", [0, 0, 0o644])
                with open(prefix / BACKUPS / record["backup"], "rb") as f:
                    atomic_write_at(parent_fd, path.name, f.read(), mode=before[2], owner=(before[0], before[1]))
            return Change("restore", str(path))
        if not dry_run:
            os.unlink(path.name, dir_fd=parent_fd)
        return Change("remove", str(path))
    finally:
        os.close(parent_fd)


def _restore_mode(path: PurePosixPath, record: dict[str, Any], dry_run: bool) -> Change:
    before = record.get("before")
    if not before:
        return Change("unchanged", str(path))
    st = os.lstat(path)
    if [st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)] == before:
        return Change("unchanged", str(path))
    if not dry_run:
        fd = _open_dir(path)
        try:
            os.fchown(fd, before[0], before[1])
            os.fchmod(fd, before[2])
        finally:
            os.close(fd)
    return Change("restore", str(path), f"{before[2]:04o} {before[0]}:{before[1]}")


def _remove_leftover(path: PurePosixPath) -> None:
    st = _lstat(path)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode):
        for name in os.listdir(path):
            with contextlib.suppress(OSError):
                os.unlink(path / name)
        with contextlib.suppress(OSError):
            os.rmdir(path)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)
