"""Configs load through pydantic as strictly as they are typed, and every error names its key, and the
file when the value came from the file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from rl.trainer import RLConfig
from runkit.config import ConfigError, build, load_config
from sft.trainer import SFTConfig
from tests.helpers import ROOT


@dataclass
class Inner:
    count: int = 1
    rate: float = 0.5
    enabled: bool = False
    name: str = "x"
    mode: Literal["fast", "slow"] = "fast"
    weights: dict[str, float] = field(default_factory=dict)
    either: int | str = 0

    def __post_init__(self):
        if self.count < 0:
            raise ValueError(f"count must be >= 0, got {self.count}")


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    items: list[Inner] = field(default_factory=list)
    limit: int | None = None

    def __post_init__(self):
        if self.limit == 7:
            raise ValueError("limit 7 is unlucky")


@dataclass
class Required:
    path: str


def message(schema, path=None, overrides=None) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(schema, path, overrides)
    return str(err.value)


def write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_values_fill_nested_dataclasses(tmp_path):
    path = write(tmp_path, "inner: {count: 3, rate: 2, enabled: true, mode: slow}\nitems: [{name: a}, {}]\n")
    cfg = load_config(Outer, path, ["inner.weights={a: 1}", "limit=4"])
    assert cfg.inner == Inner(count=3, rate=2.0, enabled=True, mode="slow", weights={"a": 1.0})
    assert type(cfg.inner.rate) is float and type(cfg.inner.weights["a"]) is float
    assert [i.name for i in cfg.items] == ["a", "x"] and cfg.limit == 4
    assert load_config(Outer) == Outer()


def test_unknown_top_level_key_names_the_file_and_the_valid_keys(tmp_path):
    path = write(tmp_path, "inner: {}\nlimmit: 3\n")
    expected = (
        f"{path}: unknown config key 'limmit'; did you mean 'limit'? valid keys here: inner, items, limit"
    )
    assert message(Outer, path) == expected


def test_unknown_nested_key_names_its_dotted_path_and_the_file(tmp_path):
    path = write(tmp_path, "inner: {count: 2, cuont: 3}\n")
    keys = "count, either, enabled, mode, name, rate, weights"
    assert (
        message(Outer, path)
        == f"{path}: unknown config key 'inner.cuont'; did you mean 'inner.count'? valid keys here: {keys}"
    )
    path = write(tmp_path, "items: [{}, {nme: a}]\n")
    assert (
        message(Outer, path)
        == f"{path}: unknown config key 'items[1].nme'; did you mean 'items[1].name'? valid keys here: {keys}"
    )


def test_unknown_key_in_a_real_config_file(tmp_path):
    path = write(tmp_path, "rollout:\n  sampling: {n: 4, topp: 0.9}\n")
    got = message(RLConfig, path)
    assert got.startswith(
        f"{path}: unknown config key 'rollout.sampling.topp'; did you mean 'rollout.sampling.top_p'? "
        "valid keys here: "
    )
    assert "max_tokens, n, temperature, thinking_budget, top_p" in got


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("inner.count=zero", "inner.count: expected an integer, got 'zero'"),
        ("inner.count=2.0", "inner.count: expected an integer, got 2.0"),
        ("inner.count=true", "inner.count: expected an integer, got True"),
        ("inner.enabled='yes'", "inner.enabled: expected true or false, got 'yes'"),  # unquoted: YAML's true
        ("inner.enabled=1", "inner.enabled: expected true or false, got 1"),
        ("inner.name=3", "inner.name: expected text, got 3"),
        ("inner.mode=medium", "inner.mode: 'medium' is not one of 'fast' or 'slow'"),
        ("inner.rate=fast", "inner.rate: expected a number, got 'fast'"),
        ("inner.rate=true", "inner.rate: expected a number, got True"),
        ("inner.weights={a: x}", "inner.weights.a: expected a number, got 'x'"),
        ("inner.either=[1]", "inner.either: expected an integer or text, got [1]"),
        ("inner=3", "inner: expected a mapping, got 3"),
        ("items=3", "items: expected a list, got 3"),
        ("limit=zero", "limit: expected an integer, got 'zero'"),
    ],
)
def test_a_bad_override_names_the_override_key_and_not_the_file(tmp_path, override, expected):
    assert message(Outer, write(tmp_path, "inner: {count: 2}\n"), [override]) == expected


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("resources.learner_ranks=zero", "resources.learner_ranks: expected an integer, got 'zero'"),
        ("learner.zero_stage=4", "learner.zero_stage: 4 is not one of 0, 1, 2 or 3"),
        ("trainer.reset_optimizer='yes'", "trainer.reset_optimizer: expected true or false, got 'yes'"),
        ("model=3", "model: expected text, got 3"),
        ("trainer.max_restarts=-1", "trainer: max_restarts must be >= 0, got -1"),
        ("rewards.cpu_time_s=0", "rewards: cpu_time_s must be >= 1, got 0"),
    ],
)
def test_real_rl_config_overrides(override, expected):
    assert message(RLConfig, ROOT / "configs/tiny/rl.yaml", [override]) == expected


def test_a_bad_value_in_the_file_names_the_file(tmp_path):
    path = write(tmp_path, "trainer: {iterations: three}\n")
    assert message(RLConfig, path) == f"{path}: trainer.iterations: expected an integer, got 'three'"
    # the same file with an override elsewhere: the error is still the file's
    got = message(RLConfig, path, ["trainer.seed=1", "learner.lr=1e-4"])
    assert got == f"{path}: trainer.iterations: expected an integer, got 'three'"


def test_text_like_1e_3_is_a_float(tmp_path):
    path = write(tmp_path, "inner: {rate: 1e-3}\n")
    assert yaml.safe_load(path.read_text())["inner"]["rate"] == "1e-3"  # PyYAML (YAML 1.1) reads text
    assert load_config(Outer, path).inner.rate == 0.001
    assert load_config(Outer, None, ["inner.rate=2e-5"]).inner.rate == 2e-5
    assert build(Outer, {"inner": {"rate": "1e-3"}}).inner.rate == 0.001
    assert load_config(RLConfig, ROOT / "configs/tiny/rl.yaml", ["learner.lr=3e-4"]).learner.lr == 3e-4


def test_post_init_errors_name_their_section(tmp_path):
    path = write(tmp_path, "inner: {count: -1}\n")
    assert message(Outer, path) == f"{path}: inner: count must be >= 0, got -1"
    assert message(Outer, None, ["items=[{}, {count: -2}]"]) == "items[1]: count must be >= 0, got -2"
    assert message(Outer, None, ["limit=7"]) == "Outer: limit 7 is unlucky"  # the whole config's own check
    assert message(Outer, write(tmp_path, "limit: 7\n")) == f"{path}: Outer: limit 7 is unlucky"


def test_sft_schedule_errors_name_the_phase(tmp_path):
    sft = ROOT / "configs/tiny/sft.yaml"
    assert len(load_config(SFTConfig, sft).schedule) == 2
    path = write(tmp_path, "schedule:\n  - {epochs: 1}\n  - {epochz: 2}\n")
    got = message(SFTConfig, path)
    assert got.startswith(
        f"{path}: unknown config key 'schedule[1].epochz'; did you mean 'schedule[1].epochs'? "
        "valid keys here: decay, epochs"
    )
    bad = message(SFTConfig, sft, ["schedule=[{epochs: 1}, {epochs: many}]"])
    assert bad == "schedule[1].epochs: expected a number, got 'many'"
    assert message(SFTConfig, sft, ["schedule=[{epochs: 1}, {epochs: 0}]"]) == (
        "schedule[1]: epochs must be > 0, got 0.0"
    )
    assert message(SFTConfig, sft, ["schedule=[{decay: steep}]"]) == (
        "schedule[0].decay: 'steep' is not one of 'cosine', 'linear' or 'constant'"
    )


def test_every_error_gets_a_line_the_first_naming_its_key(tmp_path):
    path = write(tmp_path, "inner: {count: x, enabled: 1, cuont: 2}\n")
    lines = message(Outer, path).splitlines()
    assert lines[0] == f"{path}: inner.count: expected an integer, got 'x'"
    assert lines[1] == f"{path}: inner.enabled: expected true or false, got 1"
    assert lines[2].startswith(f"{path}: unknown config key 'inner.cuont'")
    assert len(lines) == 3


def test_required_field_and_non_mapping_input():
    with pytest.raises(ConfigError) as err:
        build(Required, {})
    assert str(err.value) == "path: required, but not set"
    with pytest.raises(ConfigError) as err:
        build(Outer, 3)
    assert str(err.value) == "Outer: expected a mapping, got 3"
    assert build(Required, {"path": "p"}).path == "p"


@pytest.mark.parametrize(
    ("name", "schema"),
    [
        ("configs/tiny/rl.yaml", RLConfig),
        ("configs/tiny/sft.yaml", SFTConfig),
        ("configs/longtail/sft.yaml", SFTConfig),
        ("configs/kimi-vl-a3b/rl-1x8.yaml", RLConfig),
        ("configs/kimi-vl-a3b/rl-4x8.yaml", RLConfig),
    ],
)
def test_shipped_configs_load(name, schema):
    cfg = load_config(schema, ROOT / name)
    assert isinstance(cfg, schema) and isinstance(cfg.learner.lr, float)
