"""The admin's sbatch templates (templates/sbatch/*.sbatch.j2) rendered from the site profile (pure).

Jinja2 with StrictUndefined: a template that names a value the context lacks fails to render instead of
writing an empty string into a batch script. Values reach the scripts through two filters only: `shq`
(shlex.quote, for shell lines) and `sbatch_value` (for #SBATCH lines, which sbatch splits on whitespace:
anything with whitespace or control characters is refused)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hpc_aidc.errors import ConfigError
from hpc_aidc.render.sbatch import SIGNAL_DELAY_S
from hpc_aidc.site_profile import Partition, SiteProfile
from hpc_aidc.slurmtime import format_time_limit

SUFFIX = ".sbatch.j2"
_SBATCH_VALUE = re.compile(r"^[^\s\x00-\x1f\x7f]+$")


@dataclass(frozen=True)
class TemplateOptions:
    """What the admin chooses when rendering (the rest comes from the profile)."""

    python: str                      # the interpreter with hpc-aidc (and the user stack) on the nodes
    account: str | None = None       # default: the profile's default_account
    qos: str | None = None           # default: the profile's default_qos
    nodes: int | None = None         # nodes of the multi-node templates (default: 2, or the partition's)
    gpus_per_node: int | None = None  # GPUs per node of the training templates (default: the partition's)
    energy_line: str | None = None   # the job's own sampler, where the prolog does not start one


def sbatch_value(value: object) -> str:
    text = str(value)
    if not _SBATCH_VALUE.match(text):
        raise ConfigError(f"Expected an #SBATCH value without spaces or control characters. Got {text!r} "
                          "instead. Fix the site profile or the template.")
    return text


def _gpu_partition(site: SiteProfile) -> Partition:
    default = site.partitions.get(site.default_partition or "")
    if default is not None and default.gpus_per_node:
        return default
    gpu = [p for p in site.partitions.values() if p.gpus_per_node]
    return gpu[0] if gpu else (default or next(iter(site.partitions.values())))


def _cpu_partition(site: SiteProfile) -> Partition:
    """A CPU-only partition, else one that takes CPU jobs (not in policy.gpu_only_partitions)."""
    cpu = [p for p in site.partitions.values() if not p.gpus_per_node]
    takes_cpu = [p for p in site.partitions.values() if p.name not in site.policy.gpu_only_partitions]
    default = site.partitions.get(site.default_partition or "")
    if cpu:
        return cpu[0]
    if default is not None and default in takes_cpu:
        return default
    return takes_cpu[0] if takes_cpu else default or _gpu_partition(site)


def _time(site: SiteProfile, part: Partition) -> str:
    """The profile's default time, within the partition's limit (a longer one would never start)."""
    minutes = site.default_time_min if part.max_time_min is None else min(site.default_time_min, part.max_time_min)
    return format_time_limit(minutes)


def _interactive_partition(site: SiteProfile) -> Partition:
    """The GPU partition with the shortest time limit (a debug/interactive one), else the GPU default."""
    gpu = [p for p in site.partitions.values() if p.gpus_per_node]
    if not gpu:
        return _gpu_partition(site)
    return min(gpu, key=lambda p: (p.max_time_min or 10**9, p.name))


def template_context(site: SiteProfile, options: TemplateOptions) -> dict[str, Any]:
    gpu = _gpu_partition(site)
    cpu = _cpu_partition(site)
    interactive = _interactive_partition(site)
    gpus = gpu.gpus_per_node if options.gpus_per_node is None else options.gpus_per_node
    if gpus > gpu.gpus_per_node:
        raise ConfigError(f"Expected --gpus-per-node of at most {gpu.gpus_per_node} (partition {gpu.name}). "
                          f"Got {gpus} instead. Lower it.")
    caps = site.policy.gpu_caps.get(gpu.gpu_type or "")
    per_gpu = max(1, gpu.cpus_per_node // gpu.gpus_per_node) if gpu.gpus_per_node else 1
    if caps is not None and caps.max_cpus_per_gpu is not None:
        per_gpu = min(per_gpu, caps.max_cpus_per_gpu)
    nodes = min(2, gpu.nodes) if options.nodes is None else options.nodes
    if not 1 <= nodes <= gpu.nodes:
        raise ConfigError(f"Expected --nodes between 1 and {gpu.nodes} (partition {gpu.name}). Got {nodes} "
                          "instead.")
    return {
        "site_name": site.name,
        "site_source": site.source,
        "account": options.account or site.default_account,
        "require_account": site.policy.require_account,
        "qos": options.qos or site.default_qos,
        "default_time": format_time_limit(site.default_time_min),
        "gpu_time": _time(site, gpu),
        "cpu_time": _time(site, cpu),
        "gpu_partition": _with_gpus(gpu, gpus),
        "cpu_partition": cpu,
        "interactive_partition": interactive,
        "setup_lines": list(site.setup),
        "env": sorted(site.env.items()),
        "python": options.python,
        "energy_line": None if site.energy_prolog else options.energy_line,
        "rendezvous_ports": tuple(getattr(site, "rendezvous_ports", (20000, 32767))),
        "signal_delay_s": SIGNAL_DELAY_S,
        "train_nodes": nodes,
        "train_cpus_per_task": per_gpu,
        "infer_tasks": 3,
        "infer_cpus_per_task": per_gpu,
        "pack_tasks": 2,
        "pack_cpus_per_task": 1,
        "preprocess_cpus": min(4, cpu.cpus_per_node),
        "interactive_time": _time(site, interactive),
        "interactive_cpus": per_gpu if interactive.gpus_per_node else 1,
    }


def _with_gpus(part: Partition, gpus: int) -> Partition:
    import dataclasses

    return dataclasses.replace(part, gpus_per_node=gpus)


def render_templates(sources: Mapping[str, str], context: Mapping[str, Any]) -> dict[str, str]:
    """{"train.sbatch": text, ...} for every `*.sbatch.j2` in `sources` (file name -> template text);
    other files (e.g. `_common.j2`) are only importable."""
    import jinja2

    # Comments are {{# ... #}}: bash's ${#array[@]} would open a Jinja comment with the default {# ... #}.
    env = jinja2.Environment(loader=jinja2.DictLoader(dict(sources)), undefined=jinja2.StrictUndefined,
                             autoescape=False, keep_trailing_newline=True, comment_start_string="{{#",
                             comment_end_string="#}}")
    env.filters["shq"] = lambda v: shlex.quote(str(v))
    env.filters["sbatch_value"] = sbatch_value
    out: dict[str, str] = {}
    for name in sorted(sources):
        if not name.endswith(SUFFIX) or name.startswith("_"):
            continue
        try:
            text = env.get_template(name).render(**context)
        except jinja2.TemplateError as exc:
            raise ConfigError(f"Expected template {name} to render. Got {type(exc).__name__}: {exc}. "
                              "Fix the template (every value it uses must come from the site profile).") from None
        out[name[: -len(".j2")]] = text.rstrip("\n") + "\n"
    if not out:
        raise ConfigError(f"Expected *{SUFFIX} templates. Got none in {sorted(sources)}. Point --templates at "
                          "templates/sbatch.")
    return out
