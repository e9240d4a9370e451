"""The energy store on disk (edge): where a job's records live, who may read them, the node lock.

layout: the directory tree under the site's energy_store, its names and modes, who owns what;
record_dir: a directory opened by fd, read and written without following links (RecordDir);
root: the store root, checked when opened, and the jobs, runs and nodes found in it;
prepare: a run's directories, made by root (the prolog) or by a job's own sampler;
node_lock: the flock that makes one process the sampler of a run on a node."""
