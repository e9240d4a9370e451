"""[eval] and the target loss in the training config: parsed into frozen dataclasses, refused with one
clear line when wrong."""

from __future__ import annotations

import dataclasses

import pytest

from hpc_aidc.errors import ConfigError, SpecError
from hpc_aidc.spec.train import EvalConfig, parse_train_config


def test_eval_and_target_loss_parse() -> None:
    c = parse_train_config({"eval": {"every": 10, "batches": 4, "holdout": 0.05}, "train": {"target_loss": 2}})
    assert c.eval == EvalConfig(every=10, batches=4, holdout=0.05)
    assert c.train.target_loss == 2.0 and isinstance(c.train.target_loss, float)  # an int is taken as a float
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.eval.every = 3  # type: ignore[misc]
    assert c.to_dict()["eval"] == {"every": 10, "batches": 4, "holdout": 0.05}


def test_validation_is_off_by_default_and_the_flag_overrides_the_file() -> None:
    c = parse_train_config({"train": {"target_loss": 3.0}}, overrides={"target_loss": 1.5})
    assert c.eval.every == 0 and c.train.target_loss == 1.5


@pytest.mark.parametrize(("doc", "needle"), [
    ({"eval": {"every": -1}}, "eval.every >= 0"),
    ({"eval": {"every": 5, "batches": 0}}, "eval.batches >= 1"),
    ({"eval": {"holdout": 0.0}}, "eval.holdout between 0 and 1"),
    ({"eval": {"holdout": 1.0}}, "eval.holdout between 0 and 1"),
    ({"eval": {"evry": 5}}, "unknown ['evry']"),
    ({"eval": {"every": "5"}}, "eval.every to be a int"),
    ({"eval": {"every": True}}, "eval.every to be a int"),
    ({"train": {"target_loss": -0.5}}, "--target-loss (train.target_loss) >= 0"),
    ({"train": {"target_loss": "low"}}, "train.target_loss to be a float"),
])
def test_bad_eval_settings_are_refused(doc: dict[str, dict[str, object]], needle: str) -> None:
    with pytest.raises((ConfigError, SpecError)) as err:
        parse_train_config(doc, source="c.toml")
    message = str(err.value)
    assert needle in message and "\n" not in message
    assert message.startswith("Expected")
