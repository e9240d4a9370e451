"""The site profile: one TOML file that tells hpc-aidc about the cluster (partitions, GPU types, paths,
prices). Looked up from an explicit path, then $HPCAI_SITE, then /etc/hpcai/site.toml. Values in the
[cluster] table can be overridden per user with HPCAI_<KEY> environment variables (e.g. HPCAI_JOB_ROOT).
Parsing is pure: `parse_site` takes a dict; only `load_site` touches the filesystem."""

from __future__ import annotations

import errno
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpc_aidc.errors import SiteProfileError
from hpc_aidc.sitepolicy import SitePolicy, parse_policy
from hpc_aidc.slurmtime import parse_time_limit

DEFAULT_SITE_PATH = Path("/etc/hpcai/site.toml")
SITE_ENV = "HPCAI_SITE"
# Rendezvous ports of training jobs: below Linux's default ephemeral range (net.ipv4.ip_local_port_range,
# 32768-60999), where an outgoing connection may already hold the port a job derives from its id.
DEFAULT_RENDEZVOUS_PORTS = (20000, 32767)
LINUX_EPHEMERAL_PORTS = (32768, 60999)
# srun --cpu-bind / --gpu-bind values: Slurm's own syntax (words, lists, masks), nothing a shell could read.
_BIND = re.compile(r"^[A-Za-z0-9_.:,\-]+$")


@dataclass(frozen=True)
class Partition:
    name: str
    nodes: int
    gpus_per_node: int
    gpu_type: str | None
    cpus_per_node: int
    mem_per_node_mb: int
    max_time_min: int | None
    # CPUs each GPU's task gets by default (None: the node's CPUs divided by its GPUs).
    cpus_per_gpu: int | None = None
    # srun --cpu-bind / --gpu-bind for training ranks (e.g. "cores", "closest"); None: Slurm's default.
    cpu_bind: str | None = None
    gpu_bind: str | None = None
    # Host memory of one training rank's process before model states (CUDA, torch, NCCL, DeepSpeed), for
    # the host memory plan; None: hpc-aidc's default (spec.memory).
    host_mb_per_rank: int | None = None

    @property
    def default_cpus_per_gpu(self) -> int:
        if self.cpus_per_gpu is not None:
            return self.cpus_per_gpu
        return max(1, self.cpus_per_node // self.gpus_per_node) if self.gpus_per_node else 1


@dataclass(frozen=True)
class GpuType:
    name: str
    precisions: tuple[str, ...]
    peak_bf16_tflops: float | None
    memory_gib: float | None
    # Dense peaks for the other precisions (fp16 defaults to the bf16 peak; tf32 is fp32 matmuls on
    # tensor cores, what fp32 training runs at with TF32 enabled).
    peak_fp16_tflops: float | None = None
    peak_tf32_tflops: float | None = None
    peak_fp32_tflops: float | None = None

    def peak_tflops(self, precision: str, tf32: bool = True) -> float | None:
        """The dense peak a model trained in `precision` can reach (None where the profile has none)."""
        if precision == "bf16":
            return self.peak_bf16_tflops
        if precision == "fp16":
            return self.peak_fp16_tflops or self.peak_bf16_tflops
        return (self.peak_tf32_tflops if tf32 else None) or self.peak_fp32_tflops

    @property
    def bf16(self) -> bool:
        return "bf16" in self.precisions


@dataclass(frozen=True)
class Prices:
    currency: str = "EUR"
    gpu_hour: float = 0.0
    kwh: float = 0.0
    pue: float = 1.0
    carbon_g_per_kwh: float = 0.0


@dataclass(frozen=True)
class SiteProfile:
    name: str
    partitions: Mapping[str, Partition]
    gpu_types: Mapping[str, GpuType]
    job_root: Path
    energy_store: Path
    scratch: Path
    default_partition: str | None = None
    default_account: str | None = None
    default_qos: str | None = None
    default_time_min: int = 60
    setup: tuple[str, ...] = ()
    # slurm.conf runs hpc-aidc's energy prolog: jobs need not start their own sampler (one job step less)
    energy_prolog: bool = False
    # Training rendezvous ports (inclusive); a job's port is derived from its id within this range.
    rendezvous_ports: tuple[int, int] = DEFAULT_RENDEZVOUS_PORTS
    env: Mapping[str, str] = field(default_factory=dict)
    admins: tuple[str, ...] = ()
    prices: Prices = Prices()
    # submission rules ([policy]): job_submit.lua and hpcai's own check before sbatch (hpc_aidc.sitepolicy)
    policy: SitePolicy = field(default_factory=SitePolicy)
    # the accounting store reports read (`hpcai report ingest` fills it); None: reports ask sacct
    report_store: Path | None = None
    # the Unix group that may read an account's part of the report store ("{account}" is the account, e.g.
    # "{account}-coord"); "" (the default): root's alone, and users' reports ask sacct (PrivateData holds)
    report_store_readers: str = ""
    # the submission audit log slurmctld's epilog appends to (slurm/audit); None: no audit
    audit_log: Path | None = None
    source: str = "<memory>"

    def partition(self, name: str | None) -> Partition:
        """The named partition, or the default one; a clear error for unknown names."""
        chosen = name or self.default_partition
        if chosen is None:
            raise SiteProfileError(
                f"Expected a partition (--partition), and the site profile {self.source} sets no "
                f"default_partition. Known partitions: {', '.join(sorted(self.partitions))}."
            )
        if chosen not in self.partitions:
            raise SiteProfileError(
                f"Expected a partition from the site profile ({', '.join(sorted(self.partitions))}). "
                f"Got {chosen!r} instead. Pick one of those or ask an admin to add it to {self.source}."
            )
        return self.partitions[chosen]


_CLUSTER_KEYS = {
    "name", "default_partition", "default_account", "default_qos", "default_time", "job_root",
    "energy_store", "scratch", "admins", "setup", "energy_prolog", "rendezvous_ports", "report_store",
    "report_store_readers", "audit_log",
}
# Keys a user's HPCAI_* environment must never change: who is an admin, where root writes energy records,
# whether the job measures itself, what runs in every batch script.
_ADMIN_ONLY_KEYS = {"admins", "setup", "energy_store", "energy_prolog", "report_store", "report_store_readers",
                    "audit_log"}
_PARTITION_KEYS = {"nodes", "gpus_per_node", "gpu_type", "cpus_per_node", "mem_per_node_mb", "max_time",
                   "cpus_per_gpu", "cpu_bind", "gpu_bind", "host_mb_per_rank"}
_PEAK_KEYS = ("peak_bf16_tflops", "peak_fp16_tflops", "peak_tf32_tflops", "peak_fp32_tflops")
_GPU_KEYS = {"precisions", "memory_gib", *_PEAK_KEYS}
_PRECISIONS = ("fp32", "fp16", "bf16")
_PRICE_KEYS = {"currency", "gpu_hour", "kwh", "pue", "carbon_g_per_kwh"}
_TOP_KEYS = {"cluster", "partitions", "gpu_types", "prices", "env", "policy"}


def _check_keys(table: Mapping[str, Any], valid: set[str], where: str, source: str) -> None:
    unknown = sorted(set(table) - valid)
    if unknown:
        raise SiteProfileError(
            f"Expected keys of [{where}] from {sorted(valid)}. Got unknown {unknown} instead "
            f"in {source}. Fix the spelling or remove them."
        )


def _typed(table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str, source: str) -> Any:
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise SiteProfileError(
            f"Expected {where}.{key} to be a {names}. Got {value!r} instead. Fix it in {source}."
        )
    return value


def _positive_int(table: Mapping[str, Any], key: str, where: str, source: str, minimum: int = 1) -> int:
    value: int = _typed(table, key, int, where, source)
    if value < minimum:
        raise SiteProfileError(
            f"Expected {where}.{key} >= {minimum}. Got {value} instead. Fix it in {source}."
        )
    return value


def _flag(table: Mapping[str, Any], key: str, where: str, source: str) -> bool:
    """A boolean key; the HPCAI_* override arrives as text (1/0, true/false, yes/no)."""
    value = table.get(key, False)
    if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "0", "false", "no"}:
        return value.strip().lower() in {"1", "true", "yes"}
    if not isinstance(value, bool):
        raise SiteProfileError(
            f"Expected {where}.{key} to be true or false. Got {value!r} instead. Fix it in {source}."
        )
    return value


def parse_port_range(value: object, where: str = "cluster.rendezvous_ports",
                     source: str = "<memory>") -> tuple[int, int]:
    """A port range as "LO-HI" text (also what HPCAI_RENDEZVOUS_PORTS holds) or a [LO, HI] list."""
    lo: object
    hi: object
    if isinstance(value, str):
        lo, _, hi = value.strip().partition("-")
        try:
            lo, hi = int(lo), int(hi)
        except ValueError:
            lo = hi = None
    elif isinstance(value, list | tuple) and len(value) == 2:
        lo, hi = value
    else:
        lo = hi = None
    if not (isinstance(lo, int) and isinstance(hi, int)) or isinstance(lo, bool) or isinstance(hi, bool) \
            or not 1024 <= lo < hi <= 65535:
        raise SiteProfileError(
            f"Expected {where} as \"LO-HI\" or [LO, HI] with 1024 <= LO < HI <= 65535. Got {value!r} instead. "
            f"Fix it in {source}; outside Linux's ephemeral ports {LINUX_EPHEMERAL_PORTS[0]}-"
            f"{LINUX_EPHEMERAL_PORTS[1]}, e.g. \"{DEFAULT_RENDEZVOUS_PORTS[0]}-{DEFAULT_RENDEZVOUS_PORTS[1]}\"."
        )
    return lo, hi


def _bind(table: Mapping[str, Any], key: str, where: str, source: str) -> str | None:
    if key not in table:
        return None
    value = table[key]
    if not isinstance(value, str) or not _BIND.match(value):
        raise SiteProfileError(
            f"Expected {where}.{key} to be an srun --{key.replace('_', '-')} value (e.g. \"cores\", \"closest\"). "
            f"Got {value!r} instead. Fix it in {source}."
        )
    return value


def _positive_number(table: Mapping[str, Any], key: str, where: str, source: str) -> float | None:
    if key not in table:
        return None
    value = _typed(table, key, (int, float), where, source)
    if value <= 0:
        raise SiteProfileError(f"Expected {where}.{key} > 0. Got {value} instead. Fix it in {source}.")
    return float(value)


def parse_site(data: Mapping[str, Any], source: str = "<memory>",
               environ: Mapping[str, str] | None = None) -> SiteProfile:
    """Validate a decoded site TOML document and apply HPCAI_* overrides from `environ`."""
    _check_keys(data, _TOP_KEYS, "top level", source)
    cluster = dict(data.get("cluster", {}))
    _check_keys(cluster, _CLUSTER_KEYS, "cluster", source)
    for key in _CLUSTER_KEYS - _ADMIN_ONLY_KEYS:
        override = (environ or {}).get(f"HPCAI_{key.upper()}")
        if override:
            cluster[key] = override
    for key in ("job_root", "energy_store", "scratch"):
        if key not in cluster:
            raise SiteProfileError(f"Expected [cluster].{key} in the site profile {source}. Add it.")
        _typed(cluster, key, str, "cluster", source)

    partitions: dict[str, Partition] = {}
    for name, table in dict(data.get("partitions", {})).items():
        where = f"partitions.{name}"
        _check_keys(table, _PARTITION_KEYS, where, source)
        for key in ("nodes", "gpus_per_node", "cpus_per_node"):
            if key not in table:
                raise SiteProfileError(f"Expected {where}.{key} in the site profile {source}. Add it.")
        max_time = table.get("max_time")
        gpus_per_node = _positive_int(table, "gpus_per_node", where, source, minimum=0)
        cpus_per_node = _positive_int(table, "cpus_per_node", where, source)
        cpus_per_gpu = _positive_int(table, "cpus_per_gpu", where, source) if "cpus_per_gpu" in table else None
        if cpus_per_gpu is not None and cpus_per_gpu * gpus_per_node > cpus_per_node:
            raise SiteProfileError(
                f"Expected {where}.cpus_per_gpu x gpus_per_node <= cpus_per_node ({cpus_per_node}). Got "
                f"{cpus_per_gpu} x {gpus_per_node} = {cpus_per_gpu * gpus_per_node} instead. Fix it in {source}."
            )
        partitions[name] = Partition(
            name=name,
            nodes=_positive_int(table, "nodes", where, source),
            gpus_per_node=gpus_per_node,
            gpu_type=table.get("gpu_type"),
            cpus_per_node=cpus_per_node,
            mem_per_node_mb=_positive_int(table, "mem_per_node_mb", where, source, minimum=0)
            if "mem_per_node_mb" in table else 0,
            max_time_min=None if max_time is None else parse_time_limit(str(max_time)),
            cpus_per_gpu=cpus_per_gpu,
            cpu_bind=_bind(table, "cpu_bind", where, source),
            gpu_bind=_bind(table, "gpu_bind", where, source),
            host_mb_per_rank=_positive_int(table, "host_mb_per_rank", where, source)
            if "host_mb_per_rank" in table else None,
        )
    if not partitions:
        raise SiteProfileError(f"Expected at least one [partitions.NAME] table in {source}. Add one.")

    gpu_types: dict[str, GpuType] = {}
    for name, table in dict(data.get("gpu_types", {})).items():
        where = f"gpu_types.{name}"
        _check_keys(table, _GPU_KEYS, where, source)
        precisions = table.get("precisions", ["fp32"])
        if not isinstance(precisions, list) or not precisions or any(p not in _PRECISIONS for p in precisions):
            raise SiteProfileError(
                f"Expected {where}.precisions as a list from {list(_PRECISIONS)} (bf16 where the GPUs compute it: "
                f"training then defaults to bf16 there). Got {precisions!r} instead. Fix it in {source}."
            )
        peaks = {key: _positive_number(table, key, where, source) for key in _PEAK_KEYS}
        gpu_types[name] = GpuType(
            name=name,
            precisions=tuple(precisions),
            peak_bf16_tflops=peaks["peak_bf16_tflops"],
            memory_gib=_positive_number(table, "memory_gib", where, source),
            peak_fp16_tflops=peaks["peak_fp16_tflops"],
            peak_tf32_tflops=peaks["peak_tf32_tflops"],
            peak_fp32_tflops=peaks["peak_fp32_tflops"],
        )
    for part in partitions.values():
        if part.gpu_type is not None and part.gpu_type not in gpu_types:
            raise SiteProfileError(
                f"Expected partitions.{part.name}.gpu_type to name a [gpu_types.X] table "
                f"({', '.join(sorted(gpu_types)) or 'none defined'}). Got {part.gpu_type!r} instead. "
                f"Add [gpu_types.{part.gpu_type}] to {source}."
            )

    prices_table = dict(data.get("prices", {}))
    _check_keys(prices_table, _PRICE_KEYS, "prices", source)
    defaults = Prices()
    prices = Prices(
        currency=str(prices_table.get("currency", defaults.currency)),
        gpu_hour=float(prices_table.get("gpu_hour", defaults.gpu_hour)),
        kwh=float(prices_table.get("kwh", defaults.kwh)),
        pue=float(prices_table.get("pue", defaults.pue)),
        carbon_g_per_kwh=float(prices_table.get("carbon_g_per_kwh", defaults.carbon_g_per_kwh)),
    )

    default_partition = cluster.get("default_partition")
    if default_partition is not None and default_partition not in partitions:
        raise SiteProfileError(
            f"Expected cluster.default_partition to be one of {sorted(partitions)}. "
            f"Got {default_partition!r} instead. Fix it in {source}."
        )
    env = {str(k): str(v) for k, v in dict(data.get("env", {})).items()}
    return SiteProfile(
        name=str(cluster.get("name", "cluster")),
        partitions=partitions,
        gpu_types=gpu_types,
        job_root=Path(cluster["job_root"]),
        energy_store=Path(cluster["energy_store"]),
        report_store=Path(_typed(cluster, "report_store", str, "cluster", source))
        if "report_store" in cluster else None,
        report_store_readers=_typed(cluster, "report_store_readers", str, "cluster", source)
        if "report_store_readers" in cluster else "",
        audit_log=Path(_typed(cluster, "audit_log", str, "cluster", source)) if "audit_log" in cluster else None,
        scratch=Path(cluster["scratch"]),
        default_partition=default_partition,
        default_account=cluster.get("default_account"),
        default_qos=cluster.get("default_qos"),
        default_time_min=parse_time_limit(str(cluster.get("default_time", "01:00:00"))),
        setup=tuple(str(line) for line in cluster.get("setup", ())),
        energy_prolog=_flag(cluster, "energy_prolog", "cluster", source),
        rendezvous_ports=parse_port_range(cluster["rendezvous_ports"], source=source)
        if "rendezvous_ports" in cluster else DEFAULT_RENDEZVOUS_PORTS,
        env=env,
        admins=tuple(str(a) for a in cluster.get("admins", ())),
        prices=prices,
        policy=parse_policy(data.get("policy"), source, partitions, gpu_types),
        source=source,
    )


def find_site_path(explicit: str | os.PathLike[str] | None = None,
                   environ: Mapping[str, str] | None = None) -> Path:
    """Where the site profile is: explicit path, then $HPCAI_SITE, then /etc/hpcai/site.toml."""
    env = os.environ if environ is None else environ
    if explicit:
        return Path(explicit)
    if env.get(SITE_ENV):
        return Path(env[SITE_ENV])
    return DEFAULT_SITE_PATH


def load_site(explicit: str | os.PathLike[str] | None = None,
              environ: Mapping[str, str] | None = None) -> SiteProfile:
    env = os.environ if environ is None else environ
    path = find_site_path(explicit, env)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SiteProfileError(
            f"Expected a site profile at {path} (from --site, ${SITE_ENV} or {DEFAULT_SITE_PATH}). "
            "Got no such file. Point --site or HPCAI_SITE at your cluster's profile, or run "
            "`hpcai devcluster up` for the dev cluster."
        ) from None
    except OSError as exc:
        raise SiteProfileError(f"Expected a readable site profile at {path}. Got {exc.strerror}.") from None
    try:
        data = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SiteProfileError(f"Expected valid TOML in the site profile {path}. Got: {exc}.") from None
    return parse_site(data, source=str(path), environ=env)


def load_trusted_site(path: Path = DEFAULT_SITE_PATH) -> SiteProfile:
    """The admin's site profile, for access decisions and for code that runs as root: only the file at
    `path` (never --site or $HPCAI_SITE), a regular file (not a link) owned by root and writable by
    nobody else, in a directory owned by root and writable by nobody else, with no HPCAI_* overrides.
    A profile that anyone but root could have written or swapped decides nothing (SiteProfileError)."""
    hint = f"Ask an admin to run `chown root:root {path.parent} {path}; chmod 755 {path.parent}; chmod 644 {path}`."
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise SiteProfileError(f"Expected the admin's site profile directory {path.parent}. Got {exc.strerror}. "
                               "Ask an admin to install the site profile.") from None
    try:
        dst = os.fstat(dir_fd)
        if dst.st_uid != 0 or dst.st_mode & 0o022:
            raise SiteProfileError(
                f"Expected {path.parent} owned by root and writable by root alone. Got owner uid {dst.st_uid}, "
                f"mode {stat.S_IMODE(dst.st_mode):o}. {hint}")
        # O_NONBLOCK: a FIFO planted under the name must not hang us (regular files ignore it).
        fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        raise SiteProfileError(
            f"Expected the admin's site profile at {path}. Got no such file. Ask an admin to install it "
            "(`hpcai devcluster up` does on the dev cluster)."
        ) from None
    except OSError as exc:
        got = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise SiteProfileError(f"Expected a regular file as the site profile {path}. Got {got}. {hint}") from None
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if st.st_uid != 0 or st.st_mode & 0o022 or not stat.S_ISREG(st.st_mode):
            raise SiteProfileError(
                f"Expected {path} to be a regular file owned by root and writable by root alone. Got owner "
                f"uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}. {hint}"
            )
        raw = fh.read()
    try:
        data = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SiteProfileError(f"Expected valid TOML in the site profile {path}. Got: {exc}.") from None
    return parse_site(data, source=str(path), environ={})
