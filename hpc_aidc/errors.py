"""The typed error tree. Every user-facing failure is an HpcAidcError whose message is one line that
says what was expected, what was found, and what to do; the CLI prints it and exits with code 2."""

from __future__ import annotations


class HpcAidcError(Exception):
    """Root of every error hpc-aidc raises on purpose."""

    exit_code = 2


class ConfigError(HpcAidcError, ValueError):
    """A config file, flag or site profile value is invalid."""


class SiteProfileError(ConfigError):
    """The site profile is missing or invalid."""


class SpecError(ConfigError):
    """A job request does not fit the site (partition, GRES, limits, counts, times)."""


class PolicyError(SpecError):
    """A job breaks the site's submission policy ([policy] in the site profile); `code` is the rule's
    code in the rejection catalogue (HPCAI-P00N), the same code job_submit.lua gives."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class AccessError(HpcAidcError, PermissionError):
    """The user may not do this (no association with the account, another project's data)."""


class SlurmError(HpcAidcError, RuntimeError):
    """A Slurm command failed or Slurm is not reachable."""


class JobNotFoundError(SlurmError, LookupError):
    """Slurm has no job with the given id."""


class DataError(HpcAidcError, ValueError):
    """A dataset is malformed, corrupted or incomplete."""


class EnergyError(HpcAidcError, RuntimeError):
    """Energy measurement or records failed."""


def expected(what: str, got: object, hint: str) -> str:
    """The house style for messages: 'Expected X. Got Y instead. Hint.'"""
    return f"Expected {what}. Got {got!r} instead. {hint}"
