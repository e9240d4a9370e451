"""The distributed sample order, as pure functions of (sample count, shard size, seed, epoch, history).

An epoch is a list of segments, one per world size it ran under: `(world, consumed)` says that each of
`world` ranks consumed the first `consumed` samples of its list. A segment's lists come from the
samples not consumed by earlier segments of the epoch:
  1. the remaining samples, grouped by shard, shard order shuffled with rng(seed, epoch, segment);
  2. cut into `world` equal contiguous parts (so a rank reads mostly whole shards), the tail dropped or
     padded by wrapping around (equal steps on every rank);
  3. each part shuffled with rng(seed, epoch, segment, rank).
Resuming with the same world size continues the last segment (the exact uninterrupted order); with
another world size a new segment re-partitions what is left, so no sample is seen twice or skipped.

With `holdout` > 0 a fixed fraction of the samples (`heldout_ids`: a function of the sample count alone,
so the same for every run and seed over the store) is left out of every epoch, for validation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpc_aidc.errors import DataError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

STATE_VERSION = 1
# The held-out samples depend on the store's size only: runs with other seeds validate on the same ones.
_HOLDOUT_SEED = 0x5EED_E7A1


@dataclass(frozen=True)
class OrderSpec:
    num_samples: int
    shard_samples: int
    seed: int = 0
    shuffle: bool = True
    drop_last: bool = False
    holdout: float = 0.0  # fraction of the samples held out of training (heldout_ids)


@dataclass(frozen=True)
class Segment:
    world: int
    consumed: int  # samples consumed by each rank from the start of its list


def heldout_ids(num_samples: int, holdout: float) -> npt.NDArray[np.int64]:
    """The sorted ids of the samples held out for validation: round(holdout * n) of them (at least one
    when holdout > 0), spread over the whole store."""
    import numpy as np

    count = heldout_count(num_samples, holdout)
    if count == 0:
        return np.empty(0, np.int64)
    rng = np.random.default_rng([_HOLDOUT_SEED, num_samples])
    return np.sort(rng.choice(num_samples, count, replace=False)).astype(np.int64)


def heldout_count(num_samples: int, holdout: float) -> int:
    if holdout <= 0 or num_samples == 0:
        return 0
    return min(num_samples - 1, max(1, round(holdout * num_samples)))


def validation_batches_per_rank(num_samples: int, holdout: float, dp: int, micro_batch: int, wanted: int) -> int:
    """Whole held-out micro-batches each data-parallel rank validates on (the same number on every rank):
    `wanted`, or fewer when the split is small; a split too small for one each is refused."""
    held = heldout_count(num_samples, holdout)
    count = min(wanted, held // dp // micro_batch)
    if count == 0:
        raise DataError(
            f"Expected at least {dp * micro_batch} held-out samples ({dp} data-parallel ranks x micro_batch "
            f"{micro_batch}). Got {held} ({holdout} of {num_samples}) instead. Raise eval.holdout or lower "
            "micro_batch."
        )
    return count


def training_ids(spec: OrderSpec) -> npt.NDArray[np.int64]:
    import numpy as np

    everything = np.arange(spec.num_samples, dtype=np.int64)
    if spec.holdout <= 0:
        return everything
    return np.setdiff1d(everything, heldout_ids(spec.num_samples, spec.holdout), assume_unique=True)


def segment_lists(spec: OrderSpec, remaining: npt.NDArray[np.int64], epoch: int, seg_no: int,
                  world: int) -> npt.NDArray[np.int64]:
    """The (world, n) sample lists of one segment over the `remaining` sample ids (sorted)."""
    import numpy as np

    shards = remaining // spec.shard_samples
    if spec.shuffle and len(remaining):
        uniq, inverse = np.unique(shards, return_inverse=True)
        place = np.empty(len(uniq), np.int64)
        place[np.random.default_rng([spec.seed, epoch, seg_no]).permutation(len(uniq))] = np.arange(len(uniq))
        flat = remaining[np.argsort(place[inverse], kind="stable")]
    else:
        flat = remaining
    n = len(flat) // world if spec.drop_last else -(-len(flat) // world)
    if len(flat) and n * world > len(flat):
        flat = np.resize(flat, n * world)  # pad by wrapping around: equal steps on every rank
    lists = flat[: n * world].reshape(world, n).copy()
    if spec.shuffle:
        for rank in range(world):
            lists[rank] = np.random.default_rng([spec.seed, epoch, seg_no, rank + 1]).permutation(lists[rank])
    return lists


def remaining_after(spec: OrderSpec, epoch: int, segments: Sequence[Segment]) -> npt.NDArray[np.int64]:
    import numpy as np

    remaining = training_ids(spec)
    for seg_no, seg in enumerate(segments):
        lists = segment_lists(spec, remaining, epoch, seg_no, seg.world)
        remaining = np.setdiff1d(remaining, lists[:, : seg.consumed].ravel(), assume_unique=False)
    return remaining


def plan_segment(spec: OrderSpec, epoch: int, segments: Sequence[Segment],
                 world: int) -> tuple[list[Segment], npt.NDArray[np.int64], int]:
    """(segments including the current one, the (world, n) lists of the current one, start offset)."""
    segs = list(segments)
    if segs and segs[-1].world == world:
        lists = segment_lists(spec, remaining_after(spec, epoch, segs[:-1]), epoch, len(segs) - 1, world)
        return segs, lists, min(segs[-1].consumed, lists.shape[1])
    lists = segment_lists(spec, remaining_after(spec, epoch, segs), epoch, len(segs), world)
    return [*segs, Segment(world, 0)], lists, 0


def make_state(spec: OrderSpec, epoch: int, segments: Sequence[Segment]) -> dict[str, Any]:
    state = {"version": STATE_VERSION, "num_samples": spec.num_samples, "shard_samples": spec.shard_samples,
             "seed": spec.seed, "shuffle": spec.shuffle, "drop_last": spec.drop_last, "epoch": epoch,
             "segments": [[s.world, s.consumed] for s in segments]}
    if spec.holdout > 0:  # states without a held-out split stay as they were
        state["holdout"] = spec.holdout
    return state


def parse_state(state: dict[str, Any], spec: OrderSpec) -> tuple[OrderSpec, int, list[Segment]]:
    """The spec to resume with (seed and flags come from the state), the epoch and the segments."""
    try:
        if int(state["version"]) != STATE_VERSION:
            raise KeyError("version")
        n, shard = int(state["num_samples"]), int(state["shard_samples"])
        holdout = float(state.get("holdout", 0.0))
        resumed = OrderSpec(n, shard, int(state["seed"]), bool(state["shuffle"]), bool(state["drop_last"]), holdout)
        segments = [Segment(int(w), int(c)) for w, c in state["segments"]]
        epoch = int(state["epoch"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"Expected a sampler state dict (version {STATE_VERSION}). Got one missing {exc}. "
                        "Resume from a checkpoint written by hpc-aidc's loader.") from None
    if (n, shard) != (spec.num_samples, spec.shard_samples):
        raise DataError(f"Expected the checkpoint's dataset ({n} samples, {shard} per shard). Got a dataset "
                        f"of {spec.num_samples} samples, {spec.shard_samples} per shard. Point data.path at "
                        "the dataset the run started with.")
    if holdout != spec.holdout:
        raise DataError(f"Expected the checkpoint's held-out fraction ({holdout}). Got eval.holdout = {spec.holdout} "
                        "instead (0 when [eval] is off). Resume with the config the run started with.")
    return resumed, epoch, segments
