"""Report periods and calendar buckets (day, ISO week, month) in local time, as sreport uses (pure
apart from the local time zone, which the caller's process sets)."""

from __future__ import annotations

import bisect
import re
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from hpc_aidc.errors import ConfigError

TIME_DIMENSIONS = ("day", "week", "month")


@dataclass(frozen=True)
class Period:
    """[start, end) in epoch seconds; `now` ends the jobs that still run (elapsed so far)."""

    start: int
    end: int
    now: int

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ConfigError(
                f"Expected --until after --since. Got since={iso(self.start)} until={iso(self.end)} instead. "
                "Swap them or widen the period."
            )

    @property
    def hours(self) -> float:
        return (self.end - self.start) / 3600.0


def iso(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(epoch))


_FORMS = "YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS], now or now-COUNT[seconds|minutes|hours|days|weeks]"

# sacct's relative times: now[{+|-}count[seconds(default)|minutes|hours|days|weeks]] (singular too).
_RELATIVE = re.compile(r"now\s*(?:([+-])\s*(\d+)\s*([a-z]*))?", re.IGNORECASE)
_UNITS = {"": 1, "second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 7 * 86400}


def _relative(value: str, text: str, now: int) -> int:
    match = _RELATIVE.fullmatch(value)
    if match is None:
        raise ConfigError(f"Expected a time as {_FORMS}. Got {text!r} instead. Example: --since now-30days.")
    sign, count, unit = match.groups()
    if sign is None:
        return now
    word = unit.lower()
    seconds = _UNITS.get(word[:-1] if word.endswith("s") else word)
    if seconds is None:
        raise ConfigError(f"Expected a unit from seconds, minutes, hours, days, weeks after {sign}{count}. "
                          f"Got {unit!r} instead. Example: --since now-30days.")
    delta = int(count) * seconds
    return now - delta if sign == "-" else now + delta


def parse_duration(text: str, option: str) -> int:
    """'1day', '6hours', '90minutes', '30' (seconds) -> seconds, as sacct's relative times count them."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-z]*)\s*", text, re.IGNORECASE)
    word = match.group(2).lower() if match else ""
    seconds = _UNITS.get(word[:-1] if word.endswith("s") else word) if match else None
    if match is None or seconds is None or int(match.group(1)) <= 0:
        raise ConfigError(f"Expected {option} as a positive COUNT[seconds|minutes|hours|days|weeks]. Got {text!r} "
                          f"instead. Example: {option} 1day.")
    return int(match.group(1)) * seconds


def parse_when(text: str, now: int) -> int:
    """'2026-11-01', '2026-11-01T08:00[:00]', 'now', 'now-30days', 'now+2hours' -> epoch seconds (local time)."""
    value = text.strip()
    if value[:3].lower() == "now":
        return _relative(value, text, now)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"Expected a time as {_FORMS}. Got {text!r} instead. Example: --since 2026-11-01.") from None
    if parsed.tzinfo is not None:
        return int(parsed.timestamp())
    return int(time.mktime(parsed.timetuple()))


def month_start(epoch: int) -> int:
    t = time.localtime(epoch)
    return int(time.mktime((t.tm_year, t.tm_mon, 1, 0, 0, 0, 0, 0, -1)))


def make_period(since: str | None, until: str | None, now: int) -> Period:
    """The period of a report: default from the first of this month until now."""
    start = parse_when(since, now) if since else month_start(now)
    end = parse_when(until, now) if until else now
    return Period(start, end, now)


def _local_epoch(d: date) -> int:
    return int(time.mktime((d.year, d.month, d.day, 0, 0, 0, 0, 0, -1)))


def _bucket_start(d: date, dimension: str) -> date:
    if dimension == "day":
        return d
    if dimension == "week":
        return d - timedelta(days=d.weekday())
    return d.replace(day=1)


def _next(d: date, dimension: str) -> date:
    if dimension == "day":
        return d + timedelta(days=1)
    if dimension == "week":
        return d + timedelta(days=7)
    return date(d.year + (d.month == 12), d.month % 12 + 1, 1)


def _label(d: date, dimension: str) -> str:
    if dimension == "week":
        year, week, _ = d.isocalendar()
        return f"{year}-W{week:02d}"
    return d.isoformat() if dimension == "day" else d.strftime("%Y-%m")


@dataclass(frozen=True)
class Buckets:
    """Calendar buckets covering a period: labels and [start, end) epochs."""

    labels: tuple[str, ...]
    starts: tuple[int, ...]
    ends: tuple[int, ...]

    def index(self, epoch: int) -> int:
        return max(0, bisect.bisect_right(self.starts, epoch) - 1)

    def split(self, a: int, b: int) -> list[tuple[int, int]]:
        """(bucket index, seconds) for the interval [a, b) within the buckets."""
        i = self.index(a)
        out: list[tuple[int, int]] = []
        while a < b and i < len(self.starts):
            cut = min(b, self.ends[i])
            if cut > a:
                out.append((i, cut - a))
            a = cut
            i += 1
        return out


def buckets(period: Period, dimension: str) -> Buckets:
    if dimension not in TIME_DIMENSIONS:
        raise ConfigError(f"Expected a time bucket from {TIME_DIMENSIONS}. Got {dimension!r} instead.")
    day = _bucket_start(datetime.fromtimestamp(period.start).date(), dimension)
    labels: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    while True:
        begin = _local_epoch(day)
        if begin >= period.end:
            break
        nxt = _next(day, dimension)
        labels.append(_label(day, dimension))
        starts.append(max(begin, period.start))
        ends.append(min(_local_epoch(nxt), period.end))
        day = nxt
    return Buckets(tuple(labels), tuple(starts), tuple(ends))
