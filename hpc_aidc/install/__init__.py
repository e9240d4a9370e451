"""`hpcai admin install` / `uninstall`: hpc-aidc's Slurm-side scripts, settings and energy store laid down
under a root-owned prefix (plan: what goes where; trust: whether root may run from there; apply: doing
it and undoing it; interpreter: the Python root's scripts run)."""
