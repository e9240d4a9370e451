from pathlib import Path

import torch

from hpc_aidc.formats.checkpoint_layout import latest_tag, tag_for
from hpc_aidc.node.checkpoint import publish
from hpc_aidc.node.synthetic import micro_batch_start, synthetic_tokens


def test_synthetic_samples_depend_only_on_their_index() -> None:
    whole = synthetic_tokens(7, 0, 32, 16, 256)
    assert torch.equal(whole[10:20], synthetic_tokens(7, 10, 10, 16, 256))
    assert not torch.equal(whole, synthetic_tokens(8, 0, 32, 16, 256))
    assert int(whole.max()) < 256


def test_two_ranks_cover_what_one_rank_with_double_accumulation_sees() -> None:
    def samples(dp: int, accum: int) -> set[int]:
        return {micro_batch_start(3, m, r, 4, accum, dp) + i for m in range(accum) for r in range(dp) for i in range(4)}

    assert samples(2, 1) == samples(1, 2) == set(range(24, 32))


def test_latest_moves_only_when_a_checkpoint_is_complete(tmp_path: Path) -> None:
    assert latest_tag(tmp_path) is None
    for step in (10, 20, 30):
        (tmp_path / tag_for(step)).mkdir()
        publish(tmp_path, tag_for(step), keep_last=2)
    (tmp_path / tag_for(40)).mkdir()  # a save interrupted before its barrier
    assert latest_tag(tmp_path) == tag_for(30)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [tag_for(20), tag_for(30), tag_for(40)]
