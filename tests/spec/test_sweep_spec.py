"""`hpcai submit sweep`'s trials from --grid/--random (pure), and the per-trial table of `hpcai sweep show`."""

from __future__ import annotations

import pytest

from hpc_aidc.errors import SpecError
from hpc_aidc.render.sweep import TrialResult, sweep_csv, sweep_table, trial_rows
from hpc_aidc.spec.sweep import apply_overrides, describe, parse_axis, parse_sweep, trials
from hpc_aidc.spec.train import parse_train_config


def test_the_grid_is_the_product_first_axis_slowest() -> None:
    spec = parse_sweep(["optimizer.lr=[1e-3,3e-3]", "train.micro_batch=[4,8]"], max_concurrent=2)
    assert trials(spec) == [
        {"optimizer.lr": 1e-3, "train.micro_batch": 4}, {"optimizer.lr": 1e-3, "train.micro_batch": 8},
        {"optimizer.lr": 3e-3, "train.micro_batch": 4}, {"optimizer.lr": 3e-3, "train.micro_batch": 8},
    ]
    assert describe(trials(spec)[1]) == "optimizer.lr=0.001 train.micro_batch=8"
    assert [a.text() for a in spec.axes] == ["optimizer.lr=[0.001,0.003]", "train.micro_batch=[4,8]"]


def test_values_keep_their_toml_types() -> None:
    assert parse_axis('train.precision=["fp32", "bf16"]').values == ("fp32", "bf16")
    assert parse_axis("train.deterministic=[true,false]").values == (True, False)
    assert parse_axis("train.zero=2").values == (2,)  # one value: every trial gets it


def test_random_draws_distinct_grid_points_reproducibly() -> None:
    grid = ["optimizer.lr=[1e-4,3e-4,1e-3,3e-3]", "train.micro_batch=[4,8,16]"]
    drawn = trials(parse_sweep(grid, random_trials=5, seed=7))
    assert len(drawn) == 5 and len({describe(t) for t in drawn}) == 5
    assert drawn == trials(parse_sweep(grid, random_trials=5, seed=7))
    assert drawn != trials(parse_sweep(grid, random_trials=5, seed=8))
    everything = {describe(t) for t in trials(parse_sweep(grid))}
    assert {describe(t) for t in drawn} <= everything


def test_random_draws_from_distributions_within_their_bounds() -> None:
    spec = parse_sweep(["optimizer.lr=loguniform(1e-4,1e-2)", "train.micro_batch=randint(2,5)",
                        "optimizer.weight_decay=uniform(0,0.1)", "train.zero=[1,2]"], random_trials=20, seed=1)
    drawn = trials(spec)
    assert len(drawn) == 20 and drawn == trials(spec)
    assert all(1e-4 <= t["optimizer.lr"] <= 1e-2 and 2 <= t["train.micro_batch"] <= 5 for t in drawn)
    assert all(isinstance(t["train.micro_batch"], int) and 0 <= t["optimizer.weight_decay"] <= 0.1 for t in drawn)
    assert {t["train.zero"] for t in drawn} == {1, 2}


@pytest.mark.parametrize(("grid", "random", "needle"), [
    ([], None, "at least one --grid"),
    (["optimizer.lr"], None, "--grid KEY=[V1,V2,...]"),
    (["lr=[1e-3]"], None, "SECTION.KEY"),
    (["optimizer.lr=[]"], None, "at least one value"),
    (["optimizer.lr=[1e-3,"], None, "a TOML list of values"),
    (["optimizer.lr=[[1e-3]]"], None, "plain values"),
    (["optimizer.lr=[1e-3,0.001]"], None, "distinct values"),
    (["optimizer.lr=[1e-3]", "optimizer.lr=[2e-3]"], None, "each --grid key once"),
    (["optimizer.lr=normal(0,1)"], 2, "a distribution from"),
    (["optimizer.lr=loguniform(0,1)"], 2, "LOW > 0 in loguniform"),
    (["optimizer.lr=uniform(1,0)"], 2, "LOW < HIGH"),
    (["optimizer.lr=uniform(a,b)"], 2, "two numbers"),
    (["train.micro_batch=randint(1.5,4)"], 2, "integer bounds"),
    (["optimizer.lr=loguniform(1e-4,1e-2)"], None, "--random N with a distribution axis"),
    (["optimizer.lr=[1e-3,3e-3]"], 3, "--random at most the grid's 2 points"),
    (["optimizer.lr=[1e-3]"], 0, "--random N >= 1"),
])
def test_bad_sweeps_are_refused_in_one_line(grid: list[str], random: int | None, needle: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_sweep(grid, random_trials=random)
    assert needle in str(err.value) and str(err.value).startswith("Expected") and "\n" not in str(err.value)


def test_max_concurrent_must_be_positive() -> None:
    with pytest.raises(SpecError, match="--max-concurrent >= 1"):
        parse_sweep(["optimizer.lr=[1e-3]"], max_concurrent=0)


def test_overrides_set_the_document_without_changing_it() -> None:
    doc = {"train": {"max_steps": 10}, "optimizer": {"lr": 1.0}}
    out = apply_overrides(doc, {"optimizer.lr": 0.5, "eval.every": 5}, "base.toml")
    assert out == {"train": {"max_steps": 10}, "optimizer": {"lr": 0.5}, "eval": {"every": 5}}
    assert doc == {"train": {"max_steps": 10}, "optimizer": {"lr": 1.0}}
    config = parse_train_config(out)
    assert config.optimizer.lr == 0.5 and config.eval.every == 5


def _result(index: int, state: str, val: float | None, kwh: float | None = 0.5) -> TrialResult:
    events = [{"step": 1, "max_steps": 20, "loss": 5.0}, {"step": 20, "max_steps": 20, "loss": 3.0}]
    if val is not None:
        events.append({"event": "eval", "step": 20, "val_loss": val, "val_ppl": 2.0})
    return TrialResult(index=index, job_id=f"9_{index}", overrides={"optimizer.lr": 0.001 * (index + 1)},
                       state=state, summary={"tokens_per_s_training": 1000.0, "stopped": None},
                       events=tuple(events), gpu_hours=0.25, kwh=kwh)


def test_the_best_completed_trial_is_marked_and_a_failed_one_never_is() -> None:
    rows = trial_rows([_result(0, "COMPLETED", 2.5), _result(1, "FAILED", 1.0), _result(2, "COMPLETED", 2.0),
                       _result(3, "RUNNING", 0.5)])
    assert [r["best"] for r in rows] == [False, False, True, False]
    assert rows[1]["state"] == "FAILED"
    assert rows[2]["loss_drop_per_kwh"] == pytest.approx((5.0 - 2.0) / 0.5)
    assert rows[0]["final_val_loss"] == 2.5 and rows[0]["final_loss"] == 3.0
    table = sweep_table(rows).splitlines()
    assert len(table) == 5 and table[3].startswith("*") and "FAILED" in table[2]
    csv = sweep_csv(rows).splitlines()
    assert len(csv) == 5 and csv[0].startswith("trial,job_id,state,overrides")
    assert csv[3].split(",")[3] == "optimizer.lr=0.003"


def test_without_validation_the_training_loss_ranks_and_no_energy_leaves_blanks() -> None:
    rows = trial_rows([_result(0, "COMPLETED", None, kwh=None), _result(1, "PENDING", None, kwh=None)])
    assert rows[0]["best"] and rows[0]["best_val_loss"] is None and rows[0]["loss_drop_per_kwh"] is None
    assert rows[1]["best"] is False
