"""Variables hpcai hands its jobs through sbatch's environment (not the script, so a dry run stays
reproducible): set on the login node, read inside the allocation."""

# The submit directory's git state and the command, as JSON (scheduler/submit_context.py -> node/environment.py).
SUBMIT_CONTEXT_ENV = "HPCAI_SUBMIT_CONTEXT"
# The site's rendezvous port range, LO-HI (the job derives its port from its id within it).
PORTS_ENV = "HPCAI_RENDEZVOUS_PORTS"
