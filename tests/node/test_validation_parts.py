"""The pieces of validation that need no cluster: the held-out split (fixed, never trained on, through
resumes and world-size changes), the best checkpoint kept apart from the rotating ones, and how status
shows validation and a stop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hpc_aidc.data.dataset import ShardedSampler
from hpc_aidc.data.sampler import heldout_ids
from hpc_aidc.errors import DataError
from hpc_aidc.formats.checkpoint_layout import BEST, latest_tag, read_best, tag_for
from hpc_aidc.node.checkpoint import publish, publish_best
from hpc_aidc.render.progress import training_progress, validation_line

N, SHARD = 1000, 64


def _trained(world: int, holdout: float, epoch: int = 0) -> list[int]:
    seen: list[int] = []
    for rank in range(world):
        s = ShardedSampler(num_samples=N, shard_samples=SHARD, rank=rank, world_size=world, seed=3, holdout=holdout)
        s.set_epoch(epoch)
        seen.extend(s)
    return seen


def test_the_held_out_split_is_fixed_and_spread_over_the_store() -> None:
    ids = heldout_ids(N, 0.05)
    assert len(ids) == 50 and np.array_equal(ids, np.unique(ids))
    assert np.array_equal(ids, heldout_ids(N, 0.05))  # a function of the store's size alone
    assert len(set((ids // SHARD).tolist())) > 5  # not one shard's worth
    assert len(heldout_ids(N, 1e-9)) == 1 and len(heldout_ids(N, 0.0)) == 0


@pytest.mark.parametrize("world", [1, 2, 3])
def test_training_never_reads_a_held_out_sample(world: int) -> None:
    held = set(heldout_ids(N, 0.05).tolist())
    for epoch in (0, 1):
        seen = set(_trained(world, 0.05, epoch))
        assert not seen & held
        assert seen | held == set(range(N))  # everything else is trained on
    assert set(_trained(world, 0.0)) == set(range(N))


def test_a_resume_keeps_the_split_and_refuses_another() -> None:
    s = ShardedSampler(num_samples=N, shard_samples=SHARD, rank=0, world_size=2, seed=3, holdout=0.05)
    order = iter(s)
    first = [next(order) for _ in range(100)]
    state = s.state_dict()
    assert state["holdout"] == 0.05
    resumed = ShardedSampler(num_samples=N, shard_samples=SHARD, rank=0, world_size=2, seed=3, holdout=0.05)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert not set(first) & set(rest) and not set(rest) & set(heldout_ids(N, 0.05).tolist())
    other = ShardedSampler(num_samples=N, shard_samples=SHARD, rank=0, world_size=2, seed=3)
    assert "holdout" not in other.state_dict()  # states without a split are as before
    with pytest.raises(DataError, match="held-out fraction"):
        other.load_state_dict(state)


def test_the_best_checkpoint_survives_rotation(tmp_path: Path) -> None:
    best_dir = tmp_path / BEST
    for step in (10, 20):
        (best_dir / tag_for(step)).mkdir(parents=True)
        publish_best(best_dir, tag_for(step), {"step": step, "val_loss": 5.0 - step / 10})
    assert read_best(tmp_path) == {"step": 20, "val_loss": 3.0, "tag": tag_for(20)}
    assert sorted(p.name for p in best_dir.iterdir() if p.is_dir()) == [tag_for(20)]  # the older best is gone
    assert latest_tag(best_dir) == tag_for(20)  # DeepSpeed's tools read checkpoints/best as it is
    for step in (30, 40, 50):  # rotating checkpoints, keep_last = 1: best/ is not theirs to prune
        (tmp_path / tag_for(step)).mkdir()
        publish(tmp_path, tag_for(step), keep_last=1)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [BEST, tag_for(50)]
    assert read_best(tmp_path) is not None


def test_a_best_record_without_its_complete_checkpoint_is_ignored(tmp_path: Path) -> None:
    best_dir = tmp_path / BEST
    best_dir.mkdir()
    (best_dir / "best.json").write_text(json.dumps({"step": 5, "val_loss": 1.0, "tag": tag_for(5)}))
    assert read_best(tmp_path) is None
    (best_dir / "best.json").write_text("{not json")
    assert read_best(tmp_path) is None


def test_status_shows_the_last_and_best_validation_and_a_stop() -> None:
    records = [
        {"event": "start", "step": 0, "restarts": 0},
        {"step": 10, "max_steps": 100, "loss": 3.0, "step_time_s": 0.1, "tokens_per_s": 10.0},
        {"event": "eval", "step": 10, "val_loss": 2.5, "val_ppl": 12.18},
        {"event": "eval", "step": 20, "val_loss": 2.7, "val_ppl": 14.88},
        {"step": 20, "max_steps": 100, "loss": 2.0, "step_time_s": 0.1, "tokens_per_s": 10.0},
        {"event": "stop", "step": 20, "reason": "target_loss 2.8 reached at step 20 (validation loss 2.7000)"},
    ]
    progress = training_progress(records)
    assert progress is not None
    assert (progress["val_loss"], progress["val_step"], progress["best_val_loss"], progress["best_step"]) == (
        2.7, 20, 2.5, 10)
    assert progress["stopped"].startswith("target_loss 2.8 reached at step 20") and progress["eta_s"] == 0.0
    assert validation_line(progress) == "loss 2.7000 (perplexity 14.88) at step 20; best 2.5000 at step 10"
    plain = training_progress(records[:2])
    assert plain is not None and validation_line(plain) is None and plain["stopped"] is None


def test_every_rank_validates_on_as_many_whole_batches() -> None:
    from hpc_aidc.data.sampler import validation_batches_per_rank

    assert validation_batches_per_rank(1000, 0.05, dp=2, micro_batch=8, wanted=8) == 3  # 50 // 2 // 8
    assert validation_batches_per_rank(1000, 0.05, dp=1, micro_batch=8, wanted=2) == 2
    with pytest.raises(DataError, match="at least 32 held-out samples"):
        validation_batches_per_rank(1000, 0.02, dp=4, micro_batch=8, wanted=8)
