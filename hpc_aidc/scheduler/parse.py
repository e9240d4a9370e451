"""Pure parsers for Slurm's text output (unit-tested on recorded real output in tests/recorded/)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# sacct's fields we read, in order. Printed fenced (scheduler.fence: a random delimiter per call, a job-id
# trailer), read back as lines of these fields joined by SACCT_DELIMITER, user text escaped.
SACCT_FIELDS = (
    "JobID", "JobIDRaw", "JobName", "User", "Account", "Partition", "QOS", "State", "ExitCode",
    "Elapsed", "Timelimit", "NNodes", "NodeList", "AllocTRES", "ReqTRES", "Submit", "Start", "End",
    "WorkDir", "AdminComment", "Comment",
)
SACCT_DELIMITER = "\x1f"


@dataclass(frozen=True)
class AccountingRecord:
    """One job allocation as sacct reports it."""

    job_id: str          # 12, 12_3 (array task) or 12_[0-3] (pending array)
    job_id_raw: str
    name: str
    user: str
    account: str
    partition: str
    qos: str
    state: str           # first word: "CANCELLED by 0" -> CANCELLED
    exit_code: str
    elapsed_s: int
    time_limit: str
    nnodes: int
    nodelist: str
    alloc_tres: dict[str, float]
    req_tres: dict[str, float]
    submit: datetime | None
    start: datetime | None
    end: datetime | None
    workdir: str
    admin_comment: str
    comment: str

    @property
    def gpus(self) -> int:
        tres = self.alloc_tres or self.req_tres
        return int(tres.get("gres/gpu", 0))

    @property
    def finished(self) -> bool:
        return self.state not in {"PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED", "CONFIGURING",
                                  "COMPLETING"}

    @property
    def complete(self) -> bool:
        """False for the placeholder row slurmdbd keeps ('allocation', no partition) until
        slurmctld's job record arrives, a moment after a short job ends."""
        return bool(self.partition)

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id, "name": self.name, "user": self.user, "account": self.account,
            "partition": self.partition, "qos": self.qos, "state": self.state, "exit_code": self.exit_code,
            "elapsed_s": self.elapsed_s, "time_limit": self.time_limit, "nodes": self.nnodes,
            "nodelist": self.nodelist, "gpus": self.gpus, "alloc_tres": self.alloc_tres,
            "submit": _iso(self.submit), "start": _iso(self.start), "end": _iso(self.end),
            "workdir": self.workdir,
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def parse_tres(text: str) -> dict[str, float]:
    """'billing=2,cpu=2,gres/gpu=4,mem=8000M,node=2' -> {'cpu': 2.0, 'gres/gpu': 4.0, 'mem': 8000.0 (MiB), ...}."""
    out: dict[str, float] = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        out[key] = _tres_value(value)
    return out


_MEM_UNITS = {"K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0**2, "P": 1024.0**3}


def _tres_value(value: str) -> float:
    if value and value[-1] in _MEM_UNITS:
        return float(value[:-1]) * _MEM_UNITS[value[-1]]
    return float(value) if value else 0.0


_ELAPSED = re.compile(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)(?:\.\d+)?$")


def parse_elapsed(text: str) -> int:
    """'1-02:03:04', '02:03:04', '03:04' -> seconds; '' or 'INVALID' -> 0."""
    m = _ELAPSED.match(text.strip())
    if not m:
        return 0
    days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def parse_timestamp(text: str) -> datetime | None:
    if not text or text in {"Unknown", "None", "N/A"}:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def parse_sacct(text: str) -> list[AccountingRecord]:
    """Rows of `sacct --noheader --parsable2 --delimiter=<US> --format=<SACCT_FIELDS>`."""
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        cols = line.split(SACCT_DELIMITER)
        if len(cols) != len(SACCT_FIELDS):
            continue  # a truncated line from a killed sacct must not shift columns
        row = dict(zip(SACCT_FIELDS, cols, strict=True))
        records.append(AccountingRecord(
            job_id=row["JobID"], job_id_raw=row["JobIDRaw"], name=row["JobName"], user=row["User"],
            account=row["Account"], partition=row["Partition"], qos=row["QOS"],
            state=row["State"].split(" ")[0], exit_code=row["ExitCode"],
            elapsed_s=parse_elapsed(row["Elapsed"]), time_limit=row["Timelimit"],
            nnodes=int(row["NNodes"] or 0), nodelist=row["NodeList"],
            alloc_tres=parse_tres(row["AllocTRES"]), req_tres=parse_tres(row["ReqTRES"]),
            submit=parse_timestamp(row["Submit"]), start=parse_timestamp(row["Start"]),
            end=parse_timestamp(row["End"]), workdir=row["WorkDir"], admin_comment=row["AdminComment"],
            comment=row["Comment"],
        ))
    return records


# What Slurm's clients print on stderr (exit 1) when slurmdbd does not answer, e.g. during maintenance
# (tests/recorded/sacct_slurmdbd_down.txt): the persistent connection to it fails.
_SLURMDBD_DOWN = ("Problem talking to the database", "failed to open persistent connection",
                  "Sending PersistInit msg")


def slurmdbd_unreachable(stderr: str) -> bool:
    """True when sacct/sacctmgr failed because slurmdbd is not reachable (not for bad arguments)."""
    return any(marker in stderr for marker in _SLURMDBD_DOWN)


def slurmdbd_down_message(stderr: str, needs: str) -> str:
    """The one-line error for a command that cannot do without slurmdbd (`needs`: what it reads)."""
    reason = next((line.rsplit(":", 1)[-1].strip() for line in stderr.splitlines()
                   if any(marker in line for marker in _SLURMDBD_DOWN)), "no answer")
    return (f"Expected slurmdbd (Slurm's accounting daemon) to answer. Got no connection ({reason}). {needs} "
            "needs accounting: try again once slurmdbd is back (e.g. after maintenance), or ask your admins.")


def parse_sbatch_job_id(text: str) -> str:
    """'Submitted batch job 42' (or '42;cluster' with --parsable) -> '42'."""
    m = re.search(r"(\d+)", text)
    if not m:
        raise ValueError(f"no job id in sbatch output {text!r}")
    return m.group(1)


@dataclass(frozen=True)
class SbatchVerdict:
    """slurmctld's answer to `sbatch --test-only`: where and when the job would start."""

    job_id: str
    when: str            # the start time as printed (SLURM_TIME_FORMAT may change its form)
    cpus: int
    nodes: str
    partition: str

    @property
    def start(self) -> datetime | None:
        return parse_timestamp(self.when)

    def line(self) -> str:
        """The verdict as 22.05 and 24.11 word it (26.05's stray 'a' dropped)."""
        return (f"Job {self.job_id} to start at {self.when} using {self.cpus} processors on nodes {self.nodes} "
                f"in partition {self.partition}")


# `sbatch: Job 11 to start at 2026-12-07T15:21:09 using 1 processors on nodes n2 in partition debug` (22.05,
# 24.11); 26.05 prints `... to start at T a using ...` (a stray "a" in its format string).
_TEST_ONLY = re.compile(r"Job (\d+) to start at (.+?)(?: a)? using (\d+) processors on nodes (\S+) "
                        r"in partition (\S+)")


def parse_test_only(text: str) -> SbatchVerdict | None:
    """The verdict line among `sbatch --test-only`'s output (stderr); None when there is none."""
    m = _TEST_ONLY.search(text)
    if not m:
        return None
    return _verdict(m)


def _verdict(m: re.Match[str]) -> SbatchVerdict:
    return SbatchVerdict(m.group(1), m.group(2), int(m.group(3)), m.group(4), m.group(5))


def clean_test_only(text: str) -> str:
    """`sbatch --test-only`'s output with its verdict worded the same on every version (other lines kept)."""
    return _TEST_ONLY.sub(lambda m: _verdict(m).line(), text)


def parse_key_values(line: str) -> dict[str, str]:
    """One `scontrol show ... -o` record: 'A=1 B=x y C=3' -> {'A': '1', 'B': 'x y', 'C': '3'}.

    Values may contain spaces (e.g. Reason=...), so a token without '=' continues the previous value."""
    out: dict[str, str] = {}
    key = None
    for token in line.split():
        name, sep, value = token.partition("=")
        if sep and re.match(r"^[A-Za-z][\w/:.]*$", name):
            key = name
            out[key] = value
        elif key is not None:
            out[key] += " " + token
    return out


def parse_gres(text: str) -> list[tuple[str, str | None, int]]:
    """'gpu:h100:4(S:0),gpu:a100:2' -> [('gpu', 'h100', 4), ('gpu', 'a100', 2)]. Each item may carry the
    TRES prefix squeue and scontrol print: 'gres:gpu:1' (22.05) or 'gres/gpu:1' (24.11 and later)."""
    out: list[tuple[str, str | None, int]] = []
    for item in filter(None, re.split(r",(?![^(]*\))", text)):
        if item in {"(null)", "N/A"}:
            continue
        item = re.sub(r"^gres[:/]", "", item)
        parts = re.sub(r"\(.*\)$", "", item).split(":")
        if len(parts) == 3:
            out.append((parts[0], parts[1], int(parts[2])))
        elif len(parts) == 2:
            if parts[1].isdigit():
                out.append((parts[0], None, int(parts[1])))
            else:
                out.append((parts[0], parts[1], 1))
        elif len(parts) == 1:
            out.append((parts[0], None, 1))
    return out


# squeue's view of queued and running jobs (slurmctld), read fenced (scheduler.fence) like sacct's.
SQUEUE_FIELDS = ("%i", "%A", "%j", "%u", "%a", "%P", "%q", "%T", "%M", "%l", "%D", "%N", "%b", "%V", "%S")


def parse_squeue(text: str) -> list[AccountingRecord]:
    records = []
    for line in text.splitlines():
        cols = line.split(SACCT_DELIMITER)
        if len(cols) != len(SQUEUE_FIELDS):
            continue
        (job_id, raw, name, user, account, partition, qos, state, used, limit, nodes, nodelist, gres,
         submit, start) = cols
        nnodes = int(nodes) if nodes.isdigit() else 0
        per_node = sum(count for kind, _, count in parse_gres(gres) if kind == "gpu")
        tres = {"node": float(nnodes), "gres/gpu": float(per_node * nnodes)} if per_node else {"node": float(nnodes)}
        records.append(AccountingRecord(
            job_id=job_id, job_id_raw=raw, name=name, user=user, account=account, partition=partition, qos=qos,
            state=state, exit_code="", elapsed_s=parse_elapsed(used), time_limit=limit, nnodes=nnodes,
            nodelist=nodelist, alloc_tres=tres if state == "RUNNING" else {}, req_tres=tres,
            submit=parse_timestamp(submit), start=parse_timestamp(start), end=None, workdir="",
            admin_comment="", comment="",
        ))
    return records
