from pathlib import Path

import pytest

from hpc_aidc.errors import ConfigError, SpecError
from hpc_aidc.render.deepspeed_config import deepspeed_config
from hpc_aidc.spec.memory import estimate, suggest
from hpc_aidc.spec.train import PRESETS, check_world, global_batch, load_train_config, parse_train_config

EXAMPLE = Path(__file__).resolve().parents[2] / "examples/tiny.toml"


def test_example_config_and_flag_overrides() -> None:
    c = load_train_config(EXAMPLE, {"zero": 3, "max_steps": 7})
    assert (c.train.zero, c.train.max_steps, c.model.n_layer) == (3, 7, PRESETS["tiny"]["n_layer"])


@pytest.mark.parametrize(("doc", "needle"), [
    ({"trian": {}}, "unknown ['trian']"),
    ({"train": {"stpes": 3}}, "unknown ['stpes']"),
    ({"train": {"max_steps": "ten"}}, "train.max_steps to be a int"),
    ({"model": {"preset": "huge"}}, "model.preset from"),
    ({"model": {"n_layer": 3}, "train": {"pipeline_stages": 2, "zero": 1}}, "divide model.n_layer (3)"),
    ({"train": {"pipeline_stages": 2, "zero": 2}}, "--zero 0 or 1 with pipeline"),
    ({"train": {"offload": "optimizer+params", "zero": 2}}, "--zero 3 with --offload optimizer+params"),
    ({"train": {"offload": "optimizer", "zero": 0}}, "Offload is a ZeRO feature"),
    ({"train": {"offload": "disk"}}, "--offload from"),
    ({"train": {"zero": 4}}, "--zero from"),
    ({"train": {"precision": "fp8"}}, "--precision from"),
    ({"train": {"micro_batch": 0}}, "micro_batch >= 1"),
    ({"model": {"d_model": 100, "n_head": 3}}, "divisible by model.n_head"),
    ({"data": {"kind": "zarr"}}, "data.path"),
])
def test_bad_configs_say_what_is_valid(doc: dict[str, dict[str, object]], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_train_config(doc)
    assert needle in str(err.value)


def test_unknown_keys_list_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="'grad_accum'"):
        parse_train_config({"train": {"grad_acum": 2}})


def test_world_checks() -> None:
    c = parse_train_config({"train": {"pipeline_stages": 2, "zero": 1, "grad_accum": 1}})
    with pytest.raises(SpecError, match="multiple of --pipeline-stages"):
        check_world(c, 3, None)
    with pytest.raises(SpecError, match="--grad-accum >= --pipeline-stages"):
        check_world(c, 2, None)
    with pytest.raises(SpecError, match="precision these GPUs support"):
        check_world(parse_train_config({"train": {"precision": "bf16"}}), 2, ("fp32", "fp16"))


def test_deepspeed_config_composes_the_batch() -> None:
    c = parse_train_config({"train": {"micro_batch": 4, "grad_accum": 2, "zero": 3, "offload": "optimizer+params"}})
    ds = deepspeed_config(c, 8)
    assert ds["train_batch_size"] == 4 * 2 * 8 == global_batch(c, 8)
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["optimizer"]["params"]["torch_adam"] is False  # offload needs DeepSpeed's CPU Adam
    assert deepspeed_config(parse_train_config({}), 2)["optimizer"]["params"]["torch_adam"] is True


def test_memory_follows_the_zero_paper() -> None:
    c = parse_train_config({"model": {"preset": "7b"}, "train": {"precision": "bf16", "micro_batch": 1}})
    psi = c.model.n_params
    e0, e1, e2, e3 = (estimate(c, 64, z) for z in range(4))
    gib = 1024**3
    # model states: bf16 parameters and fp32 master weights + Adam's moments, (2 + 12) psi; the optimizer's
    # partitioned from ZeRO-1 on, the parameters from ZeRO-3
    assert e0.params_gib + e0.optimizer_gib == pytest.approx(14 * psi / gib)
    assert e1.optimizer_gib == pytest.approx(12 * psi / 64 / gib)
    assert e3.params_gib == pytest.approx(2 * psi / 64 / gib)
    # gradients at the peak: ZeRO-0's step holds the bf16 gradients and an fp32 copy of each (2 + 4); ZeRO-1's
    # BF16 optimizer accumulates all of them in fp32, never partitioned, beside the bf16 ones (4 + 2); ZeRO-2
    # and ZeRO-3 at most the fp32 partition
    assert e0.peak == "C" and e0.grads_gib == pytest.approx(6 * psi / gib)
    assert e1.grads_gib == pytest.approx(6 * psi / gib)
    assert e2.grads_gib <= 4 * psi / 64 / gib + 1e-9 and e3.grads_gib == pytest.approx(4 * psi / 64 / gib)
    assert e0.total_gib > e1.total_gib > e2.total_gib > e3.total_gib
    off = estimate(c, 64, 3, "optimizer+params")
    assert off.params_gib == 0 and off.optimizer_gib == 0 and off.cpu_gib > 0
    nodes, stage, _ = suggest(c, 8, 80.0, 16) or (0, 0, "")
    assert nodes and estimate(c, nodes * 8, stage).fits(80.0)


def test_yaml_config_equals_the_toml_one(tmp_path: Path) -> None:
    assert load_train_config(EXAMPLE.with_suffix(".yaml"), {"zero": 3}) == load_train_config(EXAMPLE, {"zero": 3})
    (tmp_path / "bad.yml").write_text("train: {max_steps: [1,\n")
    with pytest.raises(ConfigError, match=r"Expected valid YAML in .*bad\.yml\. Got: "):
        load_train_config(tmp_path / "bad.yml")
    (tmp_path / "list.yaml").write_text("- model\n- train\n")
    with pytest.raises(ConfigError, match="Expected a mapping of tables"):
        load_train_config(tmp_path / "list.yaml")
    (tmp_path / "typo.yaml").write_text("trian:\n  zero: 1\n")
    with pytest.raises(ConfigError, match=r"unknown \['trian'\]"):
        load_train_config(tmp_path / "typo.yaml")
