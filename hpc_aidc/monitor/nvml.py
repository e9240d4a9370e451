"""NVML at the edge: open the library, map the job's GPU tokens to devices, read the energy counter and
one sample per device. pynvml is imported inside `open_nvml`, never at module import.

$HPCAI_NVML_LIBRARY names a libnvidia-ml.so.1 to load first (a site whose driver lives off the default
path, or the dev cluster's fake); pynvml's own dlopen of "libnvidia-ml.so.1" then finds it loaded by its
soname. When it is set and cannot be loaded, NVML counts as unavailable rather than falling back."""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hpc_aidc.errors import EnergyError
from hpc_aidc.monitor.gpus import GpuToken

LIBRARY_ENV = "HPCAI_NVML_LIBRARY"
NAN = float("nan")


class NvmlUnavailable(EnergyError):
    """No NVML here (no library, no driver): energy is recorded as unavailable, never as 0."""


@dataclass(frozen=True)
class GpuDevice:
    """A physical GPU the sampler measures. MIG instances map to their parent, marked approximate,
    because NVML reports power and energy only for the whole GPU."""

    uuid: str
    index: int | None
    name: str
    pci: str
    has_counter: bool
    approximate: bool
    requested: tuple[str, ...]


@dataclass(frozen=True)
class GpuSample:
    power_w: float
    util_gpu: float
    util_mem: float
    mem_used_mib: float
    temp_c: float
    sm_mhz: float
    throttle: int


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Nvml:
    """An initialised NVML session; `close` shuts it down."""

    def __init__(self, module: Any) -> None:
        self._n = module
        self.driver = _text(module.nvmlSystemGetDriverVersion())
        try:
            self.nvml_version = _text(module.nvmlSystemGetNVMLVersion())
        except module.NVMLError:
            self.nvml_version = "unknown"
        # The test/dev-cluster stand-in reports a "fake" driver: every output built on it says simulated.
        self.simulated = "fake" in self.driver.lower()
        self._slots: dict[int, Any] | None = None

    def count(self) -> int:
        return int(self._n.nvmlDeviceGetCount())

    def handle(self, token: GpuToken) -> Any:
        """The NVML handle a token names. Indices are Slurm's (see slurm_order), not NVML's own."""
        n = self._n
        if token.kind == "index":
            slots = self.slurm_order()
            i = int(token.value)
            if i not in slots:
                raise EnergyError(
                    f"Expected GPU index {i} among this node's GPUs {sorted(slots)} (Slurm's numbering, as NVML "
                    "here sees them). Got no such GPU. Check the job's GPU list (SLURM_JOB_GPUS) against "
                    "`nvidia-smi -L`."
                )
            return slots[i]
        try:
            if token.kind == "pci":
                return n.nvmlDeviceGetHandleByPciBusId(token.value)
            return n.nvmlDeviceGetHandleByUUID(token.value)
        except n.NVMLError as exc:
            raise EnergyError(
                f"Expected GPU {token.value} ({token.kind}) to exist in NVML on this node. Got: {exc}. "
                "Check the job's GPU list (SLURM_JOB_GPUS) against `nvidia-smi -L`."
            ) from None

    def slurm_order(self) -> dict[int, Any]:
        """NVML handles by the index Slurm gives a node's GPUs (SLURM_JOB_GPUS, gres indices).

        Slurm numbers the GPUs after their device files (/dev/nvidiaN, gres.conf's File= or what
        AutoDetect finds), that is by the minor number N; NVML numbers them by PCI bus id. The two differ
        on nodes whose driver assigned minors out of bus order, and inside a job whose devices cgroup
        (ConstrainDevices) lets it open only its own GPUs NVML lists only those, numbered from 0: so index
        N is the GPU whose minor number is N (the N-th in NVML's order where the driver reports no minors). On a
        MIG node each GPU with MIG enabled stands for its MIG devices, in their order, and a GPU without
        MIG for itself: index i is the i-th of those slots, and a MIG slot's handle is its MIG device
        (measured through its parent, approximate)."""
        if self._slots is not None:
            return self._slots
        n = self._n
        physical = [n.nvmlDeviceGetHandleByIndex(i) for i in range(self.count())]
        minors = [m for m in (self._minor(h) for h in physical) if m is not None]
        by_minor = len(minors) == len(physical) and len(set(minors)) == len(minors)
        migs = [self._mig_devices(h) for h in physical]
        if by_minor and not any(migs):
            self._slots = dict(zip(minors, physical, strict=True))
            return self._slots
        if by_minor:
            order = sorted(range(len(physical)), key=minors.__getitem__)
            physical, migs = [physical[i] for i in order], [migs[i] for i in order]
        slots: list[Any] = []
        for h, mine in zip(physical, migs, strict=True):
            slots.extend(mine or [h])
        self._slots = dict(enumerate(slots))
        return self._slots

    def _minor(self, handle: Any) -> int | None:
        try:
            return int(self._n.nvmlDeviceGetMinorNumber(handle))
        except (self._n.NVMLError, AttributeError):
            return None

    def _mig_devices(self, handle: Any) -> list[Any]:
        """The MIG devices of a GPU in MIG mode, in NVML's order; [] when MIG is off or unsupported."""
        n = self._n
        try:
            current, _ = n.nvmlDeviceGetMigMode(handle)
            if not current:
                return []
            count = int(n.nvmlDeviceGetMaxMigDeviceCount(handle))
        except (n.NVMLError, AttributeError):
            return []
        found = []
        for i in range(count):
            try:
                found.append(n.nvmlDeviceGetMigDeviceHandleByIndex(handle, i))
            except n.NVMLError:
                continue  # an empty slot
        return found

    def _is_mig(self, handle: Any) -> bool:
        try:
            return bool(self._n.nvmlDeviceIsMigDeviceHandle(handle))
        except (self._n.NVMLError, AttributeError):
            return False

    def devices(self, tokens: Iterable[GpuToken] | None) -> list[tuple[GpuDevice, Any]]:
        """The physical GPUs behind the tokens (all GPUs when None), each once, in first-seen order;
        EnergyError for a token no GPU of this node matches."""
        found, unresolved = self.resolve(tokens)
        if unresolved:
            raise unresolved[0][1]
        return found

    def resolve(self, tokens: Iterable[GpuToken] | None) -> tuple[list[tuple[GpuDevice, Any]],
                                                                   list[tuple[str, EnergyError]]]:
        """Like `devices`, but tokens that match no GPU are returned with why, not raised: a sampler
        measures the GPUs it can find and records the others as unresolved."""
        unresolved: list[tuple[str, EnergyError]] = []
        if tokens is None:
            n = self._n
            tokens_or_handles: list[tuple[str, Any]] = [(str(i), n.nvmlDeviceGetHandleByIndex(i))
                                                        for i in range(self.count())]
        else:
            tokens_or_handles = []
            for token in tokens:
                try:
                    tokens_or_handles.append((token.value, self.handle(token)))
                except EnergyError as exc:
                    unresolved.append((token.value, exc))
        found: dict[str, tuple[GpuDevice, Any]] = {}
        for requested, handle in tokens_or_handles:
            approximate = False
            if self._is_mig(handle):
                handle = self._n.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle)
                approximate = True
            uuid = _text(self._n.nvmlDeviceGetUUID(handle))
            if uuid in found:
                old, h = found[uuid]
                found[uuid] = (GpuDevice(old.uuid, old.index, old.name, old.pci, old.has_counter,
                                         old.approximate or approximate, (*old.requested, requested)), h)
                continue
            found[uuid] = (self._describe(handle, uuid, approximate, requested), handle)
        return list(found.values()), unresolved

    def _describe(self, handle: Any, uuid: str, approximate: bool, requested: str) -> GpuDevice:
        n = self._n
        try:
            index: int | None = int(n.nvmlDeviceGetIndex(handle))
        except n.NVMLError:
            index = None
        return GpuDevice(
            uuid=uuid,
            index=index,
            name=_text(n.nvmlDeviceGetName(handle)),
            pci=_text(n.nvmlDeviceGetPciInfo(handle).busId),
            has_counter=self.counter_mj(handle) is not None,
            approximate=approximate,
            requested=(requested,),
        )

    def counter_mj(self, handle: Any) -> int | None:
        """The total energy counter in millijoules, or None where the GPU has none (pre-Volta)."""
        try:
            return int(self._n.nvmlDeviceGetTotalEnergyConsumption(handle))
        except self._n.NVMLError:
            return None

    def sample(self, handle: Any) -> GpuSample:
        n = self._n

        def read(fn: Any, *args: Any) -> Any:
            try:
                return fn(handle, *args)
            except n.NVMLError:
                return None

        power = read(n.nvmlDeviceGetPowerUsage)
        util = read(n.nvmlDeviceGetUtilizationRates)
        mem = read(n.nvmlDeviceGetMemoryInfo)
        temp = read(n.nvmlDeviceGetTemperature, n.NVML_TEMPERATURE_GPU)
        clock = read(n.nvmlDeviceGetClockInfo, n.NVML_CLOCK_SM)
        throttle = read(n.nvmlDeviceGetCurrentClocksEventReasons)
        return GpuSample(
            power_w=NAN if power is None else power / 1000.0,
            util_gpu=NAN if util is None else float(util.gpu),
            util_mem=NAN if util is None else float(util.memory),
            mem_used_mib=NAN if mem is None else mem.used / 1048576.0,
            temp_c=NAN if temp is None else float(temp),
            sm_mhz=NAN if clock is None else float(clock),
            throttle=0 if throttle is None else int(throttle) & 0xFFFFFFFF,
        )

    def health(self, handle: Any) -> dict[str, Any]:
        """Raw health facts for `hpcai doctor`; None where the GPU does not support a query."""
        n = self._n

        def read(fn_name: str, *args: Any) -> Any:
            fn = getattr(n, fn_name, None)
            if fn is None:
                return None
            try:
                return fn(handle, *args)
            except n.NVMLError:
                return None

        remapped = read("nvmlDeviceGetRemappedRows")
        retired = read("nvmlDeviceGetRetiredPages", n.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR)
        return {
            "ecc_uncorrected": read("nvmlDeviceGetTotalEccErrors", n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                                    n.NVML_VOLATILE_ECC),
            "ecc_corrected": read("nvmlDeviceGetTotalEccErrors", n.NVML_MEMORY_ERROR_TYPE_CORRECTED,
                                  n.NVML_VOLATILE_ECC),
            "retired_pages": None if retired is None else len(retired),
            "remapped_uncorrectable": None if remapped is None else int(remapped[1]),
            "remap_pending": None if remapped is None else bool(remapped[2]),
            "remap_failure": None if remapped is None else bool(remapped[3]),
        }

    def watch_xid(self, handles: Iterable[Any]) -> Any | None:
        """An NVML event set delivering critical Xid errors of these GPUs from now on; None where the driver
        offers none (NVML reports Xids only as events, never as a query of past ones)."""
        n = self._n
        kind = getattr(n, "nvmlEventTypeXidCriticalError", 0x8)
        try:
            events = n.nvmlEventSetCreate()
        except n.NVMLError:
            return None
        registered = 0
        for handle in handles:
            try:
                if n.nvmlDeviceGetSupportedEventTypes(handle) & kind:
                    n.nvmlDeviceRegisterEvents(handle, kind, events)
                    registered += 1
            except n.NVMLError:
                continue
        if not registered:
            self.free_events(events)
            return None
        return events

    def wait_xid(self, events: Any, timeout_s: float) -> list[tuple[str, int]]:
        """(GPU UUID, Xid) of the events delivered within `timeout_s` (0: only those already there)."""
        n = self._n
        found: list[tuple[str, int]] = []
        timeout_ms = max(0, int(timeout_s * 1000))
        while True:
            try:
                data = n.nvmlEventSetWait_v2(events, timeout_ms)
            except n.NVMLError:  # NVML_ERROR_TIMEOUT: nothing (more) within the time
                return found
            try:
                uuid = _text(n.nvmlDeviceGetUUID(data.device))
            except n.NVMLError:
                uuid = "?"
            found.append((uuid, int(data.eventData)))
            timeout_ms = 0

    def free_events(self, events: Any) -> None:
        with contextlib.suppress(self._n.NVMLError):
            self._n.nvmlEventSetFree(events)

    def close(self) -> None:
        with contextlib.suppress(self._n.NVMLError):
            self._n.nvmlShutdown()


def open_nvml(environ: Mapping[str, str] | None = None) -> Nvml:
    """Initialise NVML or raise NvmlUnavailable with the reason."""
    env = os.environ if environ is None else environ
    library = env.get(LIBRARY_ENV)
    if library:
        try:
            # RTLD_GLOBAL is not needed: glibc matches the later dlopen by the library's soname.
            ctypes.CDLL(library)
        except OSError as exc:
            raise NvmlUnavailable(
                f"Expected an NVML library at ${LIBRARY_ENV}={library}. Got: {exc}. "
                "Fix the path in the site profile's [env] or unset it."
            ) from None
    try:
        import pynvml
    except ImportError:
        raise NvmlUnavailable(
            "Expected the nvidia-ml-py package. Got no module pynvml. Install hpc-aidc[energy]."
        ) from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise NvmlUnavailable(
            f"Expected NVML to initialise. Got: {exc}. Energy is recorded as unavailable on this node."
        ) from None
    return Nvml(pynvml)


def finite(value: float) -> bool:
    return not math.isnan(value) and not math.isinf(value)


# Variables that tell a process where NVML (or the dev cluster's simulated NVML) is. A site sets them in
# its profile's [env] so that prolog/epilog, which run with a minimal environment, find them too.
NVML_ENV_KEYS = (LIBRARY_ENV, "HPCAI_FAKE_NVML_SCENARIO")


def nvml_env(site_env: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """The NVML variables from the site profile that the process environment does not set already."""
    return {k: site_env[k] for k in NVML_ENV_KEYS if k in site_env and k not in environ}
