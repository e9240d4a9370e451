"""`hpcai submit`: the group of every kind of submission, assembled here (run and train from cli.submit,
infer, sweep and pipeline from their own modules) so that those modules never import each other in a circle:
they use cli.submit, and cli.submit uses none of them."""

from __future__ import annotations

from hpc_aidc.cli.infer import submit_infer
from hpc_aidc.cli.pipeline import submit_pipeline
from hpc_aidc.cli.submit import submit
from hpc_aidc.cli.sweep import submit_sweep

for _command in (submit_infer, submit_pipeline, submit_sweep):
    submit.add_command(_command)

__all__ = ["submit"]
