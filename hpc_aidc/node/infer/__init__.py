"""Batch inference inside an allocation: `run` (the array task: `python -m hpc_aidc.node.infer.run`),
`model` (model sources and engines), `plan` (the run's plan and output layout, shared with the login side),
`out` (the writers), `status` (progress from the task files)."""
