"""`hpcai doctor`: this node's GPUs through NVML, with a verdict per GPU. Usable as a prolog check:
exit 0 when every GPU is ok or only worth a look (warn), 1 when one fails, 2 when NVML is unavailable."""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any

import click

from hpc_aidc.cli.common import echo_json, json_option, site_from
from hpc_aidc.errors import HpcAidcError


@click.command()
@json_option
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check this node's GPUs: driver, ECC, retired/remapped memory, temperature, throttling."""
    from hpc_aidc.monitor.health import throttle_reasons, verdict
    from hpc_aidc.monitor.nvml import nvml_env, open_nvml

    with contextlib.suppress(HpcAidcError):  # doctor works without a site profile (a fresh node)
        os.environ.update(nvml_env(site_from(ctx).env, os.environ))
    nvml = open_nvml()
    try:
        gpus: list[dict[str, Any]] = []
        for dev, handle in nvml.devices(None):
            sample = nvml.sample(handle)
            facts = {**nvml.health(handle), "temp_c": None if math.isnan(sample.temp_c) else sample.temp_c,
                     "throttle": sample.throttle, "power_w": sample.power_w}
            v = verdict(facts)
            gpus.append({"index": dev.index, "uuid": dev.uuid, "name": dev.name, "pci": dev.pci,
                         "status": v.status, "reasons": list(v.reasons),
                         "throttle_reasons": throttle_reasons(sample.throttle), **facts})
        report = {"driver": nvml.driver, "nvml": nvml.nvml_version, "simulated": nvml.simulated,
                  "gpus": gpus, "healthy": all(g["status"] != "fail" for g in gpus)}
    finally:
        nvml.close()
    if as_json:
        echo_json(report)
    else:
        sim = "  [SIMULATED: fake NVML, not real hardware]" if nvml.simulated else ""
        click.echo(f"driver {report['driver']}  NVML {report['nvml']}  GPUs {len(gpus)}{sim}")
        for g in gpus:
            temp = "-" if g["temp_c"] is None else f"{g['temp_c']:.0f}C"
            click.echo(f"GPU {g['index']}  {g['name']}  {g['pci']}  {temp}  {g['status'].upper()}"
                       + (f"  ({'; '.join(g['reasons'])})" if g["reasons"] else ""))
    if not report["healthy"]:
        failed = [str(g["index"]) for g in gpus if g["status"] == "fail"]
        raise Unhealthy(f"unhealthy GPU(s): {', '.join(failed)}; drain this node or replace them")


class Unhealthy(click.ClickException):
    """Exit 1, not 2: the node answered and is not fit for jobs (prolog checks test for it)."""

    exit_code = 1
