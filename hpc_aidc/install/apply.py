"""Carry out an install plan as root, and roll it back.

Every folder and file is reached through directory fds opened without following links: the folders
above the plan (vetted by the trust check, so their links are root's) are resolved once, and everything
below them is walked one name at a time with O_NOFOLLOW, made with mkdirat, written with the one atomic
write and re-owned with fchown/fchmod on its own fd. A link where the plan puts a folder or file is
refused, never followed, and no existing folder is handed to another owner than it has.

What was there before is kept in a manifest, PREFIX/.hpcai-install.json (root 0600), written even when a
run stops half-way, with a copy of each file the install replaced: `uninstall` removes what the install
made (files changed since stay), restores what it replaced and the owner and mode of what it re-owned."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from hpc_aidc.errors import ConfigError
from hpc_aidc.fsutil import DIR_FLAGS, atomic_write_at
from hpc_aidc.install.plan import Entry

MANIFEST = ".hpcai-install.json"
BACKUPS = ".hpcai-install-backup"
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class Change:
    action: str   # create, update, chmod, unchanged (install); remove, restore, keep (uninstall)
    path: str
    detail: str = ""

    def line(self) -> str:
        return f"{self.action:<9} {self.path}{'  ' + self.detail if self.detail else ''}"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _lstat_at(parent_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _lstat(path: PurePosixPath) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _refuse_link(path: PurePosixPath, what: str = "folder") -> ConfigError:
    return ConfigError(f"Expected a {what} at {path}. Got a symbolic link or something else. Remove it (root never "
                       "follows links here) and run the command again.")


class _Dirs:
    """Open directory fds by path: roots resolved once, the rest walked name by name without links."""

    def __init__(self, roots: Sequence[PurePosixPath]) -> None:
        self.roots = sorted(set(roots), key=lambda p: len(p.parts), reverse=True)
        self.fds: dict[PurePosixPath, int] = {}

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def open(self, path: PurePosixPath) -> int:
        if path in self.fds:
            return self.fds[path]
        root = next((r for r in self.roots if r == path or r in path.parents), None)
        if root is None:
            raise ConfigError(f"Expected {path} below a folder the install checked. Got none. This is a bug: "
                              "report it.")
        if path == root:
            try:
                fd = os.open(os.path.realpath(root), DIR_FLAGS)
            except OSError as exc:
                raise ConfigError(f"Expected a folder at {root}. Got {exc.strerror}. Create it first.") from None
        else:
            parent_fd = self.open(path.parent)
            try:
                fd = os.open(path.name, DIR_FLAGS, dir_fd=parent_fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _refuse_link(path) from None
                raise ConfigError(f"Expected to open the folder {path}. Got {exc.strerror}. Check it and run "
                                  "the command again.") from None
        self.fds[path] = fd
        return fd


@contextlib.contextmanager
def _dirs(roots: Sequence[PurePosixPath]) -> Iterator[_Dirs]:
    dirs = _Dirs(roots)
    try:
        yield dirs
    finally:
        dirs.close()


def existing_root(path: PurePosixPath) -> PurePosixPath:
    """The deepest folder above `path` that exists: where the walk starts (the trust check vetted it)."""
    for parent in path.parents:
        if _lstat(parent) is not None:
            return parent
    return PurePosixPath("/")


def _read_at(parent_fd: int, name: str, path: PurePosixPath) -> bytes:
    fd = os.open(name, _READ_FLAGS, dir_fd=parent_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _refuse_link(path, "plain file")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_manifest(prefix: PurePosixPath) -> tuple[list[str], dict[str, dict[str, Any]]]:
    path = prefix / MANIFEST
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return [], {}
    except PermissionError:
        raise ConfigError(f"Expected to read {path}. Got permission denied. Run as root (a dry run of an existing "
                          "install needs root too).") from None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != 0:
        raise ConfigError(f"Expected {path} to be root's own file. Got something else. Remove it by hand.")
    try:
        with open(path, "rb") as f:
            body = json.load(f)
        return list(body.get("roots", [])), {e["path"]: e for e in body["entries"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"Expected the install manifest {path} to be readable JSON. Got {exc}. Restore it, or "
                          "remove it and what it lists by hand.") from None


def _write_manifest(dirs: _Dirs, prefix: PurePosixPath, roots: Sequence[PurePosixPath],
                    records: dict[str, dict[str, Any]]) -> None:
    body = json.dumps({"version": 1, "roots": sorted({str(r) for r in roots}), "entries": list(records.values())},
                      indent=1).encode()
    atomic_write_at(dirs.open(prefix), MANIFEST, body, mode=0o600, owner=(0, 0))


def _backup(dirs: _Dirs, prefix: PurePosixPath, data: bytes) -> str:
    prefix_fd = dirs.open(prefix)
    if _lstat_at(prefix_fd, BACKUPS) is None:
        os.mkdir(BACKUPS, 0o700, dir_fd=prefix_fd)
    name = _sha(data)
    atomic_write_at(dirs.open(prefix / BACKUPS), name, data, mode=0o600, owner=(0, 0))
    return name


def _mkdir(dirs: _Dirs, path: PurePosixPath, want: tuple[int, int, int]) -> None:
    os.mkdir(path.name, 0o700, dir_fd=dirs.open(path.parent))
    fd = dirs.open(path)
    os.fchown(fd, want[0], want[1])
    os.fchmod(fd, want[2])  # not the umask's idea of it


def apply_plan(prefix: PurePosixPath, plan: Sequence[Entry], dry_run: bool) -> list[Change]:
    """Make the plan true on disk (or, with dry_run, say what that would change)."""
    in_plan = {e.path for e in plan}
    roots = [existing_root(e.path) for e in plan if e.path.parent not in in_plan]
    old_roots, records = _read_manifest(prefix)
    roots += [PurePosixPath(r) for r in old_roots]
    changes: list[Change] = []
    made: set[PurePosixPath] = set()  # what this run made (a dry run: would have made)
    with _dirs(roots) as dirs:
        try:
            for entry in plan:
                for parent in reversed(entry.path.parents):
                    if parent not in made and parent not in in_plan and _lstat(parent) is None:
                        made.add(parent)
                        changes.append(Change("create", str(parent), "dir 0755 0:0"))
                        if not dry_run:
                            records[str(parent)] = {"path": str(parent), "dir": True, "created": True, "keep": False}
                            _mkdir(dirs, parent, (0, 0, 0o755))
                changes.append(_apply_entry(dirs, prefix, entry, records, made, dry_run))
        finally:
            if not dry_run and (prefix in made or _lstat(prefix) is not None):
                _write_manifest(dirs, prefix, roots, records)
    return changes


def _apply_entry(dirs: _Dirs, prefix: PurePosixPath, entry: Entry, records: dict[str, dict[str, Any]],
                 made: set[PurePosixPath], dry_run: bool) -> Change:
    key = str(entry.path)
    want = (entry.uid, entry.gid, entry.mode)
    if entry.path.parent in made and dry_run:
        made.add(entry.path)
        return Change("create", key, f"{entry.mode:04o} {entry.uid}:{entry.gid}")
    parent_fd = dirs.open(entry.path.parent)
    st = _lstat_at(parent_fd, entry.path.name)
    if st is not None and (stat.S_ISLNK(st.st_mode) or stat.S_ISDIR(st.st_mode) != entry.is_dir
                           or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode))):
        raise _refuse_link(entry.path, "folder" if entry.is_dir else "plain file")
    if st is not None and entry.is_dir and st.st_uid != entry.uid:
        # Never hand an existing folder to another account (an audit folder at /var/log would give it to
        # SlurmUser), nor adopt one somebody else made (they may keep links or files in it).
        raise ConfigError(f"Expected {key} to be uid {entry.uid}'s or not to exist yet. Got uid {st.st_uid}'s "
                          "folder. Move it away (or give it that owner yourself) and run the command again.")
    if st is None:
        made.add(entry.path)
        if dry_run:
            return Change("create", key, f"{entry.mode:04o} {entry.uid}:{entry.gid}")
        records[key] = {"path": key, "dir": entry.is_dir, "keep": entry.keep, "created": True}
        if entry.is_dir:
            _mkdir(dirs, entry.path, want)
        else:
            assert entry.content is not None
            records[key]["sha256"] = None if entry.keep else _sha(entry.content)
            atomic_write_at(parent_fd, entry.path.name, entry.content, mode=entry.mode, owner=(entry.uid, entry.gid))
        return Change("create", key, f"{entry.mode:04o} {entry.uid}:{entry.gid}")
    have = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
    record = records.setdefault(key, {"path": key, "dir": entry.is_dir, "keep": entry.keep, "created": False,
                                      "before": list(have)})
    stale = False
    if entry.content is not None and not entry.keep:
        stale = _read_at(parent_fd, entry.path.name, entry.path) != entry.content
    if dry_run:
        if stale:
            return Change("update", key)
        return Change("chmod", key, f"{have[2]:04o} {have[0]}:{have[1]} -> {entry.mode:04o} {entry.uid}:{entry.gid}") \
            if have != want else Change("unchanged", key)
    if stale:
        assert entry.content is not None
        if not record.get("created") and "backup" not in record:
            record["backup"] = _backup(dirs, prefix, _read_at(parent_fd, entry.path.name, entry.path))
        record["sha256"] = _sha(entry.content)
        atomic_write_at(parent_fd, entry.path.name, entry.content, mode=entry.mode, owner=(entry.uid, entry.gid))
        return Change("update", key)
    if entry.content is not None and not entry.keep:
        record["sha256"] = _sha(entry.content)
    if have == want:
        return Change("unchanged", key)
    fd = dirs.open(entry.path) if entry.is_dir else os.open(entry.path.name, _READ_FLAGS, dir_fd=parent_fd)
    try:
        st = os.fstat(fd)
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            raise _refuse_link(entry.path, "plain file")
        os.fchown(fd, entry.uid, entry.gid)
        os.fchmod(fd, entry.mode)
    finally:
        if not entry.is_dir:
            os.close(fd)
    return Change("chmod", key, f"{have[2]:04o} {have[0]}:{have[1]} -> {entry.mode:04o} {entry.uid}:{entry.gid}")


def record_tree(prefix: PurePosixPath, path: PurePosixPath) -> None:
    """Add a folder the install made outside the plan (PREFIX/venv) to the manifest: uninstall removes it."""
    roots, records = _read_manifest(prefix)
    records[str(path)] = {"path": str(path), "dir": True, "tree": True, "created": True, "keep": False}
    with _dirs([PurePosixPath(r) for r in roots] or [existing_root(prefix)]) as dirs:
        _write_manifest(dirs, prefix, [PurePosixPath(r) for r in roots], records)


def uninstall(prefix: PurePosixPath, dry_run: bool) -> list[Change]:
    """Undo the install under `prefix`: its files go (unless changed since), replaced files come back,
    folders it made go when empty, folders and files it re-owned get their owner and mode back."""
    roots, records = _read_manifest(prefix)
    if not records:
        raise ConfigError(f"Expected an install manifest at {prefix / MANIFEST}. Got none. Pass the --prefix "
                          "that `hpcai admin install` used.")
    changes: list[Change] = []
    with _dirs([PurePosixPath(r) for r in roots]) as dirs:
        backups: dict[str, bytes] = {}
        for record in records.values():
            if record.get("backup"):
                backups[record["backup"]] = _read_at(dirs.open(prefix / BACKUPS), record["backup"],
                                                     prefix / BACKUPS / record["backup"])
        for record in reversed(list(records.values())):
            path = PurePosixPath(record["path"])
            if path == prefix and not dry_run:
                _remove_leftovers(dirs, prefix)
            try:
                changes.append(_undo(dirs, record, backups, dry_run))
            except ConfigError as exc:
                changes.append(Change("keep", str(path), str(exc)))
    return changes


def _undo(dirs: _Dirs, record: dict[str, Any], backups: dict[str, bytes], dry_run: bool) -> Change:
    path = PurePosixPath(record["path"])
    parent_fd = dirs.open(path.parent)
    st = _lstat_at(parent_fd, path.name)
    if st is None:
        return Change("unchanged", str(path), "already gone")
    if stat.S_ISLNK(st.st_mode):
        return Change("keep", str(path), "a link now: left alone")
    if record["dir"]:
        if record.get("created"):
            if dry_run:
                return Change("remove", str(path))
            if record.get("tree"):
                shutil.rmtree(path.name, dir_fd=parent_fd)  # fd-based on Linux: never follows links
                return Change("remove", str(path))
            try:
                os.rmdir(path.name, dir_fd=parent_fd)
            except OSError:
                return Change("keep", str(path), "not empty")
            return Change("remove", str(path))
        return _restore_owner_mode(dirs, path, record, dry_run)
    data = _read_at(parent_fd, path.name, path)
    if record.get("keep"):
        if record.get("created") and not data:
            if not dry_run:
                os.unlink(path.name, dir_fd=parent_fd)
            return Change("remove", str(path))
        if not record.get("created"):
            return _restore_owner_mode(dirs, path, record, dry_run)
        return Change("keep", str(path), "holds data")
    if record.get("sha256") != _sha(data):
        return Change("keep", str(path), "changed since the install")
    before = record.get("before") or [0, 0, 0o644]
    if record.get("backup"):
        if not dry_run:
            atomic_write_at(parent_fd, path.name, backups[record["backup"]], mode=before[2],
                            owner=(before[0], before[1]))
        return Change("restore", str(path))
    if not record.get("created"):
        return _restore_owner_mode(dirs, path, record, dry_run)
    if not dry_run:
        os.unlink(path.name, dir_fd=parent_fd)
    return Change("remove", str(path))


def _restore_owner_mode(dirs: _Dirs, path: PurePosixPath, record: dict[str, Any], dry_run: bool) -> Change:
    before = record.get("before")
    if not before:
        return Change("unchanged", str(path))
    parent_fd = dirs.open(path.parent)
    fd = os.open(path.name, _READ_FLAGS | (os.O_DIRECTORY if record["dir"] else 0), dir_fd=parent_fd)
    try:
        st = os.fstat(fd)
        if [st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)] == before:
            return Change("unchanged", str(path))
        if not dry_run:
            os.fchown(fd, before[0], before[1])
            os.fchmod(fd, before[2])
    finally:
        os.close(fd)
    return Change("restore", str(path), f"{before[2]:04o} {before[0]}:{before[1]}")


def _remove_leftovers(dirs: _Dirs, prefix: PurePosixPath) -> None:
    prefix_fd = dirs.open(prefix)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(MANIFEST, dir_fd=prefix_fd)
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        shutil.rmtree(BACKUPS, dir_fd=prefix_fd)
