"""The distributed sample order, as pure functions of (sample count, shard size, seed, epoch, history).

An epoch is a list of segments, one per world size it ran under: `(world, consumed)` says that each of
`world` ranks consumed the first `consumed` samples of its list. A segment's lists come from the
samples not consumed by earlier segments of the epoch:
  1. the remaining samples, grouped by shard, shard order shuffled with rng(seed, epoch, segment);
  2. cut into `world` equal contiguous parts (so a rank reads mostly whole shards), the tail dropped or
     padded by wrapping around (equal steps on every rank);
  3. each part shuffled with rng(seed, epoch, segment, rank).
Resuming with the same world size continues the last segment (the exact uninterrupted order); with
another world size a new segment re-partitions what is left, so no sample is seen twice or skipped."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpc_aidc.errors import DataError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

STATE_VERSION = 1


@dataclass(frozen=True)
class OrderSpec:
    num_samples: int
    shard_samples: int
    seed: int = 0
    shuffle: bool = True
    drop_last: bool = False


@dataclass(frozen=True)
class Segment:
    world: int
    consumed: int  # samples consumed by each rank from the start of its list


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

    remaining = np.arange(spec.num_samples, dtype=np.int64)
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
    return {"version": STATE_VERSION, "num_samples": spec.num_samples, "shard_samples": spec.shard_samples,
            "seed": spec.seed, "shuffle": spec.shuffle, "drop_last": spec.drop_last, "epoch": epoch,
            "segments": [[s.world, s.consumed] for s in segments]}


def parse_state(state: dict[str, Any], spec: OrderSpec) -> tuple[OrderSpec, int, list[Segment]]:
    """The spec to resume with (seed and flags come from the state), the epoch and the segments."""
    try:
        if int(state["version"]) != STATE_VERSION:
            raise KeyError("version")
        n, shard = int(state["num_samples"]), int(state["shard_samples"])
        resumed = OrderSpec(n, shard, int(state["seed"]), bool(state["shuffle"]), bool(state["drop_last"]))
        segments = [Segment(int(w), int(c)) for w, c in state["segments"]]
        epoch = int(state["epoch"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"Expected a sampler state dict (version {STATE_VERSION}). Got one missing {exc}. "
                        "Resume from a checkpoint written by hpc-aidc's loader.") from None
    if (n, shard) != (spec.num_samples, spec.shard_samples):
        raise DataError(f"Expected the checkpoint's dataset ({n} samples, {shard} per shard). Got a dataset "
                        f"of {spec.num_samples} samples, {spec.shard_samples} per shard. Point data.path at "
                        "the dataset the run started with.")
    return resumed, epoch, segments
