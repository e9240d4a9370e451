"""What every submission, of every kind, carries to sbatch: the request the site's submission policy checks
(the same rules and codes as its job_submit.lua, so a refusal comes at once with slurmctld's own words), the
energy sampler line where no prolog starts one, and the audit tag slurmctld's epilog records. Every
planner builds its JobRequest's policy with `policy_for` and its sbatch parameters with `job_parameters`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hpc_aidc.site_profile import SiteProfile
from hpc_aidc.spec.policy import PolicyRequest, request_from_resources
from hpc_aidc.spec.resources import Resources


def policy_for(resources: Resources, user: str, *, time_given: bool) -> PolicyRequest:
    return request_from_resources(resources, user, time_given=time_given)


def energy_setup(site: SiteProfile) -> list[str]:
    """The batch script's own energy sampler (one per node), for sites whose prolog does not start one."""
    if site.energy_prolog:
        return []
    from hpc_aidc.monitor.launch import batch_script_line

    return [batch_script_line()]


def job_parameters(site: SiteProfile, resources: Resources, *, audit_tag: str, extra_setup: Sequence[str] = (),
                   **render_kwargs: Any) -> dict[str, Any]:
    """submitit's sbatch parameters for a job: the energy line first in its setup, and its audit tag as the
    comment (which hpcai command wrote the script; never trusted for identity)."""
    from hpc_aidc.render.sbatch import submitit_parameters

    params = submitit_parameters(resources, site, extra_setup=[*energy_setup(site), *extra_setup], **render_kwargs)
    params["comment"] = audit_tag
    return params
