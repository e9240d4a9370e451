"""Reading Slurm's listings when users write part of them. Slurm checks only the length of a job name (and of a
comment, a work dir): `sacct --parsable2` and `squeue --format` print them raw, so a name holding a newline
and the field delimiter could split its own row, forge another user's row, or hide its own.

Every listing we parse is therefore fenced: its fields are delimited by a token drawn at random for that one
call (sacct's --delimiter, literal text between squeue's fields), which no user text could hold when it was
written, and each row ends with a field no user writes (the job id again: a trailer). `unfence` turns the
output back into the canonical form the parsers read (one line a row, fields joined by SEP, the trailer
dropped), escaping newlines and SEP inside user text; a row it cannot read (a truncated output, a first or
last field that is not a job id) is quarantined, never shifts another, and is said in one log line.
Cost (bench/fenced_parse): for a listing without such characters, one count over the whole text and a cut
and replace per row; otherwise row by row."""

from __future__ import annotations

import re
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass

SEP = "\x1f"  # the canonical field separator of the lines our parsers read (and of recorded outputs)
# A job id as sacct and squeue print it: 12, 12_3, 12_[0-3%2], 12+1 (het), 12.batch (steps)
_JOB_ID = re.compile(r"[0-9]+(?:_[0-9]+|_\[[0-9,%\-]+\]|\+[0-9]+)?(?:\.[A-Za-z0-9_+\-]+)?")


@dataclass(frozen=True)
class Fence:
    token: str

    @classmethod
    def new(cls) -> Fence:
        return cls(f"~{secrets.token_hex(12)}~")  # printable: safe in argv, never in Slurm's own fields

    def sacct_args(self, fields: Sequence[str], trailer: str = "JobIDRaw") -> list[str]:
        """sacct's options for `fields` (then the trailer) delimited by the fence."""
        return ["--noheader", "--parsable2", f"--delimiter={self.token}", f"--format={','.join([*fields, trailer])}"]

    def squeue_format(self, fields: Sequence[str], trailer: str = "%i") -> str:
        return self.token.join([*fields, trailer])


@dataclass(frozen=True)
class Unfenced:
    lines: list[str]          # canonical: one a row, fields joined by SEP, user text's newlines and SEP escaped
    quarantined: list[str]    # rows that could not be read, as printed (escaped)


def escape(text: str) -> str:
    """A user-written field as one safe field: its newlines, carriage returns and SEP escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace(SEP, "\\x1f")


def unfence(text: str, fence: Fence, nfields: int) -> Unfenced:
    """`nfields` counts the trailer. The first field of each row and its trailer must read as job ids."""
    token, want = fence.token, nfields - 1
    if SEP not in text and "\r" not in text and "\\" not in text:
        rows = text.split("\n")
        if rows and not rows[-1]:
            rows.pop()
        # Every row on a line of its own (no user text held a newline): the token, unguessable, occurs only
        # as sacct's delimiter, so the count alone proves it, and no field needs escaping.
        if text.count(token) == want * len(rows) and all(row[:1].isdigit() for row in rows):
            return Unfenced([row[:row.rfind(token)].replace(token, SEP) for row in rows], [])
    return _unfence_lines(text, fence, nfields)


def _unfence_lines(text: str, fence: Fence, nfields: int) -> Unfenced:
    """Row by row: rows a newline split are joined again, fields escaped, ids checked."""
    token, want = fence.token, nfields - 1
    lines: list[str] = []
    bad: list[str] = []
    pending: list[str] = []
    seen = 0
    for line in text.split("\n"):
        if not pending:
            if not line:
                continue
            count = line.count(token)
            if count == want and SEP not in line and "\r" not in line and "\\" not in line:
                head, tail = line[:line.find(token)], line[line.rfind(token) + len(token):]
                if _JOB_ID.fullmatch(head) and _JOB_ID.fullmatch(tail):
                    lines.append(line[:len(line) - len(tail) - len(token)].replace(token, SEP))
                else:
                    bad.append(escape(line))
                continue
        pending.append(line)
        seen += line.count(token)
        if seen < want:
            continue
        row = "\n".join(pending)
        pending, seen = [], 0
        fields = row.split(token)
        if len(fields) == nfields and _JOB_ID.fullmatch(fields[0]) and _JOB_ID.fullmatch(fields[-1]):
            lines.append(SEP.join(escape(f) for f in fields[:-1]))
        else:
            bad.append(escape(row))
    if pending:
        bad.append(escape("\n".join(pending)))
    return Unfenced(lines, bad)


def say_quarantined(unfenced: Unfenced, what: str) -> None:
    """One log line (stderr) per row that could not be read."""
    for row in unfenced.quarantined:
        print(f"hpcai: warning: skipped a row of {what} that could not be read: {row[:200]}", file=sys.stderr)
