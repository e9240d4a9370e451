"""Zarr v3 sharded datasets: pack, verify, stage, a fast shard reader and a resumable distributed loader.

Nothing heavy is imported here: numpy and zarr load inside functions; torch only in `dataset`.
Training code uses `hpc_aidc.data.dataset` (ShardedDataset, ShardedSampler, ResumableLoader, build_loader)."""
