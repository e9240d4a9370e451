"""Whether root may trust a path: every link of its chain (each folder from / down, each symlink hop and
its target's chain) is owned by root and writable by nobody else.

A world-writable folder counts as safe only with the sticky bit (/tmp), and only above the path: there
nobody but root can rename or remove root's entries. A folder group-writable by a group other than
root's, a link not owned by root, and anything with an extended ACL (which may grant write to others
behind a harmless-looking mode) are unsafe."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

_ACL = "system.posix_acl_access"


@dataclass(frozen=True)
class Untrusted:
    path: str
    why: str

    def __str__(self) -> str:
        return f"{self.path} ({self.why})"


def _has_acl(path: Path) -> bool:
    try:
        return _ACL in os.listxattr(path, follow_symlinks=False)
    except OSError:
        return False


def _why(path: Path, st: os.stat_result, is_leaf: bool) -> str | None:
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):  # a link's mode means nothing (always 0777); its owner may replace it
        return f"a link owned by uid {st.st_uid}" if st.st_uid != 0 else None
    if st.st_uid != 0:
        return f"owned by uid {st.st_uid}"
    if mode & 0o020 and st.st_gid != 0:
        return f"writable by group {st.st_gid}"
    if mode & 0o002 and not (stat.S_ISDIR(st.st_mode) and mode & stat.S_ISVTX and not is_leaf):
        return "writable by everyone"
    if _has_acl(path):
        return "has an access ACL (see getfacl)"
    return None


def untrusted_links(path: str | os.PathLike[str], _depth: int = 0) -> list[Untrusted]:
    """Every link of `path`'s chain that someone other than root could change, first from /. A path that
    does not exist yet is judged by the folders above it (root will create the rest)."""
    if _depth > 20:
        return [Untrusted(str(path), "too many symbolic links")]
    problems: list[Untrusted] = []
    if ".." in Path(path).parts:
        # `..` after a link is resolved by the kernel, not by the text: judge where it really leads too
        problems += untrusted_links(os.path.realpath(path), _depth + 1)
    parts = Path(os.path.abspath(path)).parts
    current = Path("/")
    for i, part in enumerate(parts):
        current = current / part if i else current
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            break
        except OSError as exc:
            problems.append(Untrusted(str(current), exc.strerror or "unreadable"))
            break
        why = _why(current, st, i == len(parts) - 1)
        if why is not None:
            problems.append(Untrusted(str(current), why))
        if stat.S_ISLNK(st.st_mode):
            current = Path(os.path.realpath(current))
            problems += untrusted_links(current, _depth + 1)
    return _unique(problems)


def _unique(items: list[Untrusted]) -> list[Untrusted]:
    seen: set[str] = set()
    out: list[Untrusted] = []
    for item in items:
        if item.path not in seen:
            seen.add(item.path)
            out.append(item)
    return out
