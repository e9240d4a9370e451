"""The training spec for GPU clusters (pure): the precision default, one rank per GPU, CPUs per task from
the site, DeepSpeed's fp32 reduction and accumulation fields, overlap and pinned offload, host memory
planned and requested, and the warning grace derived from the step and checkpoint times."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from site_fixture import make_site, site_doc

from hpc_aidc.errors import SpecError
from hpc_aidc.render.deepspeed_config import deepspeed_config
from hpc_aidc.site_profile import parse_site
from hpc_aidc.spec import grace as grace_mod
from hpc_aidc.spec.grace import DEFAULT_GRACE_S, derive_grace, estimate_times, needed_s, shape_key
from hpc_aidc.spec.memory import (
    GIB,
    activation_bytes,
    bucket_elements,
    estimate,
    host_gib_per_node,
    host_request,
)
from hpc_aidc.spec.resources import parse_resources
from hpc_aidc.spec.train import TrainConfig, check_world, parse_train_config, resolve_precision


def _config(train: dict[str, Any] | None = None, model: dict[str, Any] | None = None) -> TrainConfig:
    return parse_train_config({"model": model or {}, "train": train or {}})


def test_precision_defaults_to_bf16_where_the_gpus_do_it() -> None:
    auto = _config()
    assert auto.train.precision == "auto"
    assert resolve_precision(auto, ("fp32", "fp16", "bf16")).train.precision == "bf16"
    assert resolve_precision(auto, ("fp32", "fp16")).train.precision == "fp32"   # e.g. V100
    assert resolve_precision(auto, None).train.precision == "fp32"               # CPU jobs
    explicit = _config({"precision": "fp32"})
    assert resolve_precision(explicit, ("fp32", "bf16")) is explicit


def test_one_rank_per_gpu() -> None:
    c = resolve_precision(_config(), ("bf16",))
    check_world(c, 8, ("bf16",), ranks_per_node=4, gpus_per_node=4)
    with pytest.raises(SpecError, match=r"at most one training rank per GPU \(4 per node\). Got --ntasks-per-node 8"):
        check_world(c, 16, ("bf16",), ranks_per_node=8, gpus_per_node=4)
    check_world(c, 16, None, ranks_per_node=8, gpus_per_node=0)  # CPU ranks: any number


@pytest.mark.parametrize(("train", "model", "needle"), [
    ({"collective_timeout_s": 5}, {}, "train.collective_timeout_s >= 30"),
    ({}, {"checkpoint_interval": 0}, "model.checkpoint_interval >= 1"),
    ({"precision": "int8"}, {}, "--precision from ('auto', 'fp32', 'bf16', 'fp16')"),
    ({"tf32": "yes"}, {}, "train.tf32 to be a bool"),
])
def test_new_config_keys_are_checked(train: dict[str, Any], model: dict[str, Any], needle: str) -> None:
    with pytest.raises((SpecError, ValueError)) as err:
        _config(train, model)
    assert needle in str(err.value)
    with pytest.raises(SpecError, match=r"checkpoint.grace_s >= 0"):
        parse_train_config({"checkpoint": {"grace_s": -1}})


def test_cpus_per_task_default_to_the_node_share_of_each_gpu() -> None:
    site = make_site()  # gpu: 8 CPUs, 4 GPUs per node
    assert parse_resources(site, gpus_per_node=4).cpus_per_task == 2
    assert parse_resources(site, gpus_per_node=4, ntasks_per_node=2).cpus_per_task == 4  # 2 GPUs per task
    assert parse_resources(site, gpus_per_node=2, cpus_per_task=1).cpus_per_task == 1      # as asked
    assert parse_resources(site).cpus_per_task == 1                                        # a CPU job
    doc = site_doc()
    doc["partitions"]["gpu"]["cpus_per_gpu"] = 1  # the site's own figure (e.g. cores kept for the OS)
    assert parse_resources(parse_site(doc), gpus_per_node=4).cpus_per_task == 1


def test_deepspeed_fields_for_bf16_and_offload() -> None:
    bf16 = resolve_precision(_config({"zero": 2}), ("bf16",))
    ds = deepspeed_config(bf16, 8)
    assert ds["bf16"] == {"enabled": True} and ds["communication_data_type"] == "fp32"
    assert ds["data_types"] == {"grad_accum_dtype": "fp32"}
    zero = ds["zero_optimization"]
    assert zero["overlap_comm"] and zero["contiguous_gradients"]
    assert zero["reduce_bucket_size"] == zero["allgather_bucket_size"] == bucket_elements(bf16)
    assert bucket_elements(bf16) % 2 == 0 and bucket_elements(bf16) <= bf16.model.n_params
    z1 = deepspeed_config(dataclasses.replace(bf16, train=dataclasses.replace(bf16.train, zero=1)), 8)
    assert z1["zero_optimization"]["overlap_comm"] and z1["data_types"] == {"grad_accum_dtype": "fp32"}
    # ZeRO-0 with bf16: DeepSpeed has no fp32 accumulation without ZeRO (it refuses the mix)
    z0 = deepspeed_config(dataclasses.replace(bf16, train=dataclasses.replace(bf16.train, zero=0)), 8)
    assert "data_types" not in z0 and z0["communication_data_type"] == "fp32"
    fp32 = deepspeed_config(_config({"precision": "fp32"}), 2)
    assert "communication_data_type" not in fp32 and "data_types" not in fp32
    off = deepspeed_config(_config({"zero": 3, "offload": "optimizer+params"}), 8)["zero_optimization"]
    assert off["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert off["offload_param"] == {"device": "cpu", "pin_memory": True} and off["overlap_comm"]
    assert off["stage3_max_live_parameters"] <= _config().model.n_params


def test_planner_counts_buckets_runtime_and_recomputation() -> None:
    c = resolve_precision(parse_train_config({"model": {"preset": "1.3b"}, "train": {"micro_batch": 4}}), ("bf16",))
    e = estimate(c, 8, 2)
    assert e.buffers_gib > 0 and e.runtime_gib > 1
    assert e.total_gib > e.allocated_gib + e.runtime_gib  # fragmentation on top
    no_ckpt = dataclasses.replace(c, model=dataclasses.replace(c.model, activation_checkpointing=False))
    assert c.model.activation_checkpointing  # the 1.3b preset recomputes by default
    assert activation_bytes(no_ckpt) > 2 * activation_bytes(c)  # the logits stay either way
    # the loss in fp32: bf16 training still pays 12 bytes per logit when the backward pass starts (the
    # log-probabilities and their two gradients)
    tiny = parse_train_config({"train": {"precision": "bf16"}})
    logits = tiny.model.seq_len * tiny.train.micro_batch * tiny.model.vocab_size
    assert activation_bytes(tiny) > 12 * logits


# torch.cuda.max_memory_allocated of the GPU tier's planner run (350m, bf16, ZeRO-2, micro-batch 4, one rank
# on an H200; torch 2.11, DeepSpeed 0.19.8), and the band that test allows the estimate
MEASURED_350M_GIB = 16.03
PLAN_BAND = 1.35


def test_the_planner_brackets_what_the_gpu_tier_measured() -> None:
    """The estimate covers the measured peak without refusing what fits. The peak was the start of the
    backward pass: model states (14 bytes/param), the activations and the loss's fp32 log-probabilities
    with their two gradients; no gradients yet (ZeRO-2 allocates its fp32 partition at the first full
    reduce bucket), no buckets."""
    doc = {"model": {"preset": "350m"}, "train": {"max_steps": 6, "micro_batch": 4, "zero": 2, "precision": "bf16"},
           "checkpoint": {"every": 100}}
    e = estimate(parse_train_config(doc), 1)
    assert MEASURED_350M_GIB <= e.allocated_gib <= PLAN_BAND * MEASURED_350M_GIB
    assert e.peak == "A" and e.grads_gib == 0
    assert e.allocated_gib == pytest.approx(MEASURED_350M_GIB, rel=0.05)
    # more ranks: the optimizer states' share shrinks, nothing else at the peak
    two = estimate(parse_train_config(doc), 2)
    assert e.allocated_gib - two.allocated_gib == pytest.approx(e.optimizer_gib / 2)


def test_host_memory_plan_and_request() -> None:
    c = resolve_precision(parse_train_config({"model": {"preset": "7b"}, "train": {"micro_batch": 1}}), ("bf16",))
    z2 = estimate(c, 64, 2)
    need = host_gib_per_node(c, z2, 8, on_gpu=True)
    # every rank reads the whole bf16 module (7b: ~12.8 GiB) when it resumes, below ZeRO-3
    assert need > 8 * 2 * c.model.n_params / GIB
    z3 = estimate(c, 64, 3)
    assert host_gib_per_node(c, z3, 8, on_gpu=True) < need
    offload = estimate(c, 64, 3, "optimizer")
    assert host_gib_per_node(c, offload, 8, on_gpu=True) > host_gib_per_node(c, z3, 8, on_gpu=True)
    # --mem: the plan with headroom, at least the GPUs' share of the node, capped; whole node: --mem=0
    assert host_request(need, 2_000_000, 1.0).sbatch_value == "0"  # type: ignore[union-attr]
    half = host_request(10.0, 1_000_000, 0.5)
    assert half is not None and half.mem_mb == 500_000  # exactly the half (a per-GPU limit is that share)
    small = host_request(10.0, 1_000_000, 0.01)
    assert small is not None and small.mem_mb == 11776 and small.sbatch_value == "11776M"  # 10 GiB x 1.15
    assert host_request(10.0, 0, 0.5) is not None  # the profile does not say: nothing refused
    assert host_request(need, 100_000, 1.0) is None  # does not fit the node
    # CPU training keeps everything in host memory
    cpu = parse_train_config({"model": {"n_layer": 2}, "train": {"precision": "fp32"}})
    e = estimate(cpu, 2)
    assert host_gib_per_node(cpu, e, 1, on_gpu=False) > host_gib_per_node(cpu, e, 1, on_gpu=True) - 2 + e.allocated_gib


def test_grace_covers_two_steps_and_a_checkpoint() -> None:
    assert needed_s(10.0, 20.0) == 30 + 50  # 1.25 x (2 x 10 + 20) + 30
    tiny = _config({"precision": "fp32"})
    g = derive_grace(tiny, 2, 2, None, time_limit_min=60)
    assert g.seconds == DEFAULT_GRACE_S and not g.measured  # small models keep the default
    # a 7b job with long accumulation steps: two steps of ~minutes each
    big = resolve_precision(parse_train_config({"model": {"preset": "7b"}, "train": {"micro_batch": 1,
                                                                                      "grad_accum": 256}}), ("bf16",))
    step, write = estimate_times(big, 64, 8, 989.0)
    assert step > 60
    g = derive_grace(big, 64, 8, 989.0, time_limit_min=24 * 60)
    assert g.seconds == needed_s(step, write) > 2 * step
    # measured by the last run of this shape: that wins
    g = derive_grace(big, 64, 8, 989.0, time_limit_min=24 * 60, last=(400.0, 90.0))
    assert g.measured and g.seconds == needed_s(400.0, 90.0)
    # never more than half the time limit
    capped = derive_grace(big, 64, 8, 989.0, time_limit_min=10, last=(400.0, 90.0))
    assert capped.capped and capped.seconds == 300
    # an explicit grace is kept (submit warns when it is shorter than the last run needed)
    fixed = dataclasses.replace(big, checkpoint=dataclasses.replace(big.checkpoint, grace_s=90))
    assert derive_grace(fixed, 64, 8, 989.0, 600, last=(400.0, 90.0)).seconds == 90
    assert grace_mod.ASSUMED_MFU < 0.5  # conservative: a-priori steps are not underestimated


def test_shape_key_names_the_same_job_shape() -> None:
    c = _config({"precision": "bf16"})
    assert shape_key(c, 8, "h100") == shape_key(dataclasses.replace(c, train=dataclasses.replace(
        c.train, max_steps=5000)), 8, "h100")  # more steps: the same shape
    assert shape_key(c, 8, "h100") != shape_key(c, 16, "h100") != shape_key(c, 8, "a100")
