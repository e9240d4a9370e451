"""Pipeline files: structure checks (unknown keys, kinds and stage names, cycles, dependency types,
references to other stages' outputs), the submission order and the sbatch dependency strings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hpc_aidc.errors import ConfigError
from hpc_aidc.spec.pipeline import dependency_flag, load_pipeline, parse_pipeline, substitute

ALLOWED = {"run": {"command", "nodes", "account"}, "train": {"config", "data", "nodes"},
           "data-pack": {"inputs", "out"}, "infer": {"model", "input", "output"}, "report": {"args"}}


def parse(stages: dict[str, Any], **head: Any) -> Any:
    doc: dict[str, Any] = {"stage": stages}
    if head:
        doc["pipeline"] = head
    return parse_pipeline(doc, "p.toml", ALLOWED, default_name="p")


def three() -> dict[str, Any]:
    return {
        # declared out of order on purpose: the order comes from `after`
        "eval": {"kind": "run", "after": ["train"], "dependency": "afterany",
                 "command": ["python", "eval.py", "{stage.train.job_dir}"]},
        "train": {"kind": "train", "after": ["pack"], "config": "t.toml", "data": "{stage.pack.out}"},
        "pack": {"kind": "data-pack", "inputs": ["a.npy"], "out": "c.zarr"},
    }


def test_stages_come_in_dependency_order_with_their_options() -> None:
    p = parse(three())
    assert p.name == "p"
    assert [s.name for s in p.stages] == ["pack", "train", "eval"]
    train = p.stage("train")
    assert (train.kind, train.after, train.dependency, train.uses) == ("train", ("pack",), "afterok", ("pack",))
    assert dict(train.options) == {"config": "t.toml", "data": "{stage.pack.out}"}
    assert p.stage("eval").dependency == "afterany"
    assert p.ancestors("eval") == {"train", "pack"}


def test_ties_keep_the_file_order() -> None:
    p = parse({"b": {"kind": "run", "command": ["x"]}, "a": {"kind": "run", "command": ["y"]},
               "c": {"kind": "run", "after": ["a", "b"], "command": ["z"]}}, name="mine")
    assert [s.name for s in p.stages] == ["b", "a", "c"]
    assert p.name == "mine"


def test_dependency_strings() -> None:
    p = parse(three())
    assert dependency_flag(p.stage("pack"), {}) is None
    assert dependency_flag(p.stage("train"), {"pack": ["11"]}) == "afterok:11"
    assert dependency_flag(p.stage("eval"), {"train": ["12"]}) == "afterany:12"
    both = parse({"a": {"kind": "run", "command": ["x"]}, "b": {"kind": "data-pack", "inputs": ["i"], "out": "o"},
                  "c": {"kind": "run", "after": ["a", "b"], "command": ["z"]}})
    # a data pack is waited for through its finalize job; a stage complete from before is not waited for
    assert dependency_flag(both.stage("c"), {"a": ["5"], "b": ["7"]}) == "afterok:5:7"
    assert dependency_flag(both.stage("c"), {"b": ["7"]}) == "afterok:7"


def test_substitute_fills_in_outputs() -> None:
    outputs = {"train": "/jobs/alice/12", "pack": "/data/c.zarr"}
    assert substitute(["eval.py", "{stage.train.job_dir}/checkpoints"], outputs) == ["eval.py",
                                                                                      "/jobs/alice/12/checkpoints"]
    assert substitute("{stage.pack.out}", outputs) == "/data/c.zarr"
    assert substitute(4, outputs) == 4


@pytest.mark.parametrize(("stages", "head", "needles"), [
    ({"a": {"kind": "run", "command": ["x"], "gpus": 2}}, {}, ["'gpus'", "[stage.a] (kind run)", "nodes"]),
    ({"a": {"kind": "bake", "command": ["x"]}}, {}, ["kind", "'bake'", "data-pack, train, infer, run, report"]),
    ({"a": {"kind": "run", "command": ["x"], "after": ["nope"]}}, {}, ["'nope'", "not a stage"]),
    ({"a": {"kind": "run", "command": ["x"], "after": ["a"]}}, {}, ["other stages' names"]),
    ({"a": {"kind": "run", "command": ["x"], "after": ["b"]}, "b": {"kind": "run", "command": ["y"], "after": ["c"]},
      "c": {"kind": "run", "command": ["z"], "after": ["a"]}}, {}, ["cycle", "->"]),
    ({"a": {"kind": "run", "command": ["x"], "dependency": "afternotok"}}, {}, ["afterok", "afterany",
                                                                               "'afternotok'"]),
    ({"a": {"kind": "run", "command": ["{stage.b.job_dir}"]}, "b": {"kind": "run", "command": ["y"]}}, {},
     ["{stage.b.job_dir}", "does not run after"]),
    ({"a": {"kind": "run", "after": ["b"], "command": ["{stage.b.job_dir}"]},
      "b": {"kind": "data-pack", "inputs": ["i"], "out": "o"}}, {}, ["{stage.b.out}"]),
    ({"a": {"kind": "run", "command": ["x"]}}, {"name": "../up"}, ["pipeline name", "'../up'"]),
    ({"a": {"kind": "run", "command": ["x"]}}, {"title": "x"}, ["'title'", "[pipeline]"]),
    ({"bad name": {"kind": "run", "command": ["x"]}}, {}, ["stage name", "'bad name'"]),
    ({"a": {"kind": "run", "command": ["x"]}}, {"name": "123"}, ["starting with a letter", "'123'"]),
    ({}, {}, ["at least one [stage.NAME]"]),
])
def test_mistakes_are_one_line_errors(stages: dict[str, Any], head: dict[str, Any], needles: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        parse(stages, **head)
    message = str(err.value)
    assert "\n" not in message and message.startswith("Expected")
    for needle in needles:
        assert needle in message, (needle, message)


def test_unknown_top_level_table(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text('[stages.a]\nkind = "run"\n')
    with pytest.raises(ConfigError, match="'stages'"):
        load_pipeline(path, ALLOWED)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_pipeline(tmp_path / "missing.toml", ALLOWED)
    bad = tmp_path / "bad.toml"
    bad.write_text("[stage.a\n")
    with pytest.raises(ConfigError, match="valid TOML"):
        load_pipeline(bad, ALLOWED)
    good = tmp_path / "nightly.toml"
    good.write_text('[stage.a]\nkind = "run"\ncommand = ["true"]\n')
    assert load_pipeline(good, ALLOWED).name == "nightly"
