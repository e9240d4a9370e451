#!/usr/bin/env bash
# Slurm EpilogSlurmctld of the hpc-aidc admin kit (slurm.conf names one program; this runs both parts):
# the submission audit first, while slurmctld still holds the job's batch script, then the energy summary.
# Each part logs its own problems and exits 0: nothing here may hold up or fail the end of a job.
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
"$here/audit/epilog_slurmctld.sh" || true
exec "$here/energy/epilog_slurmctld.sh"
