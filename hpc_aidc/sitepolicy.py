"""The site's submission policy: the `[policy]` table of the site profile (parsing only, pure).

One set of rules, enforced twice from the same profile: by slurmctld through the job_submit.lua that
`hpcai admin policy` renders (hpc_aidc.render.job_submit_lua), and by hpcai itself before it calls sbatch
(hpc_aidc.spec.policy), so users see the same message, with the same code, before they submit.

    [policy]
    exempt_users = ["root"]       # never checked (maintenance jobs); root and SlurmUser are usual
    require_account = true        # -A/--account must be given
    require_time = true           # --time must be given: true (every partition) or a list of partitions
    gpu_only_partitions = ["gpu"] # GPU partitions that refuse CPU-only jobs
    [policy.qos.normal]
    max_gpus_per_job = 32
    [policy.gpu_types.h100]
    max_cpus_per_gpu = 12
    max_mem_per_gpu_mb = 120000

CPU-only partitions (gpus_per_node = 0) always refuse GPU jobs, and a request no node of its partition
can hold is refused, whenever a [policy] table is present."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from hpc_aidc.errors import SiteProfileError

_POLICY_KEYS = {"exempt_users", "require_account", "require_time", "gpu_only_partitions", "qos", "gpu_types"}
_QOS_KEYS = {"max_gpus_per_job"}
_GPU_KEYS = {"max_cpus_per_gpu", "max_mem_per_gpu_mb"}


@dataclass(frozen=True)
class GpuCaps:
    max_cpus_per_gpu: int | None = None
    max_mem_per_gpu_mb: int | None = None


@dataclass(frozen=True)
class SitePolicy:
    enabled: bool = False  # the profile has a [policy] table
    exempt_users: tuple[str, ...] = ()
    require_account: bool = False
    # partitions where --time is required; ("*",) for all of them
    require_time: tuple[str, ...] = ()
    gpu_only_partitions: tuple[str, ...] = ()
    qos_max_gpus: Mapping[str, int] = field(default_factory=dict)
    gpu_caps: Mapping[str, GpuCaps] = field(default_factory=dict)

    def time_required(self, partition: str) -> bool:
        return "*" in self.require_time or partition in self.require_time


def _fail(what: str, got: object, source: str) -> SiteProfileError:
    return SiteProfileError(f"Expected {what}. Got {got!r} instead. Fix it in {source}.")


def _unknown(table: Mapping[str, Any], valid: set[str], where: str, source: str) -> None:
    unknown = sorted(set(table) - valid)
    if unknown:
        raise SiteProfileError(f"Expected keys of [{where}] from {sorted(valid)}. Got unknown {unknown} instead "
                               f"in {source}. Fix the spelling or remove them.")


def _names(value: Any, where: str, source: str, known: Collection[str] | None = None) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(f"{where} to be a list of names", value, source)
    if known is not None:
        for name in value:
            if name not in known:
                raise _fail(f"{where} to name partitions of the profile ({', '.join(sorted(known))})", name,
                            source)
    return tuple(value)


def _bool(table: Mapping[str, Any], key: str, source: str) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise _fail(f"policy.{key} to be true or false", value, source)
    return value


def _cap(table: Mapping[str, Any], key: str, where: str, source: str) -> int | None:
    if key not in table:
        return None
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(f"{where}.{key} to be a whole number >= 1", value, source)
    return value


def parse_policy(table: Mapping[str, Any] | None, source: str, partitions: Collection[str],
                 gpu_types: Collection[str]) -> SitePolicy:
    """Validate the [policy] table; no table means no rules (client side) and nothing to render."""
    if table is None:
        return SitePolicy()
    if not isinstance(table, Mapping):
        raise _fail("[policy] to be a table", table, source)
    _unknown(table, _POLICY_KEYS, "policy", source)
    require_time = table.get("require_time", False)
    if isinstance(require_time, bool):
        timed: tuple[str, ...] = ("*",) if require_time else ()
    else:
        timed = _names(require_time, "policy.require_time (true, false or a list of partitions)", source,
                       partitions)
    qos: dict[str, int] = {}
    for name, caps in dict(table.get("qos", {})).items():
        where = f"policy.qos.{name}"
        if not isinstance(caps, Mapping):
            raise _fail(f"[{where}] to be a table", caps, source)
        _unknown(caps, _QOS_KEYS, where, source)
        cap = _cap(caps, "max_gpus_per_job", where, source)
        if cap is not None:
            qos[str(name)] = cap
    gpus: dict[str, GpuCaps] = {}
    for name, caps in dict(table.get("gpu_types", {})).items():
        where = f"policy.gpu_types.{name}"
        if name not in gpu_types:
            raise _fail(f"[{where}] to name a [gpu_types.X] table ({', '.join(sorted(gpu_types)) or 'none'})",
                        name, source)
        if not isinstance(caps, Mapping):
            raise _fail(f"[{where}] to be a table", caps, source)
        _unknown(caps, _GPU_KEYS, where, source)
        gpus[str(name)] = GpuCaps(_cap(caps, "max_cpus_per_gpu", where, source),
                                  _cap(caps, "max_mem_per_gpu_mb", where, source))
    return SitePolicy(
        enabled=True,
        exempt_users=_names(table.get("exempt_users", []), "policy.exempt_users", source),
        require_account=_bool(table, "require_account", source),
        require_time=timed,
        gpu_only_partitions=_names(table.get("gpu_only_partitions", []), "policy.gpu_only_partitions", source,
                                   partitions),
        qos_max_gpus=qos,
        gpu_caps=gpus,
    )
