import pytest

from hpc_aidc.errors import SpecError
from hpc_aidc.slurmtime import format_time_limit, parse_time_limit


@pytest.mark.parametrize(("text", "minutes"), [
    ("30", 30), ("90:30", 91), ("01:00:00", 60), ("1-00:00:00", 1440), ("2-12", 3600), ("0:59", 1),
    ("1-02:03", 1563), (" 45 ", 45),
])
def test_parses_slurm_time_forms(text: str, minutes: int) -> None:
    assert parse_time_limit(text) == minutes


@pytest.mark.parametrize("text", ["", "abc", "00:00:00", "0", "1:61:00", "10:00:75", "-5", "1h", "1-"])
def test_rejects_malformed_or_zero(text: str) -> None:
    with pytest.raises(SpecError, match="Expected"):
        parse_time_limit(text)


def test_format_round_trips() -> None:
    for minutes in (1, 59, 60, 1439, 1440, 2 * 1440 + 61):
        assert parse_time_limit(format_time_limit(minutes)) == minutes
