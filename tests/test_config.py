"""mmpipe.config: one way in for every config, and one line for every mistake."""

from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mmpipe.config import default, job_flag, layered, read_yaml, validate
from mmpipe.errors import ConfigError


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str

    @field_validator("name")
    @classmethod
    def _lowercase(cls, name: str) -> str:
        if name != name.lower():
            raise ValueError("must be lowercase")
        return name


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str = "in"
    batch_size: int = Field(16, ge=1)
    mode: Literal["fast", "exact"] = "fast"
    items: list[Item] = []


def test_yaml_mistakes_name_the_file_and_line(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("batch_size: 4\nmode: [fast\n")
    with pytest.raises(ConfigError, match=r"^job\.yaml: line \d+: invalid YAML: "):
        read_yaml(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match=r"^job\.yaml: the policy file must be a YAML mapping$"):
        read_yaml(path, "--policy", "policy file")
    with pytest.raises(ConfigError, match=r"^--policy: no policy file '.*missing\.yaml'$"):
        read_yaml(tmp_path / "missing.yaml", "--policy", "policy file")
    path.write_text("")
    assert read_yaml(path) == {}


def test_the_command_line_wins_only_where_it_was_given():
    options = {"batch_size": 16, "mode": "exact", "input": "x"}
    file = {"batch_size": 64, "mode": "fast"}
    assert layered(file, options, {"mode", "input"}) == {"batch_size": 64, "mode": "exact", "input": "x"}


def test_one_line_names_the_flag_or_the_file_and_field():
    with pytest.raises(ConfigError, match=r"^--batch-size: Input should be greater than or equal to 1$"):
        validate(Settings, {"batch_size": 0}, flag_of=job_flag)
    with pytest.raises(ConfigError, match=r"^INPUT: Input should be a valid string$"):
        validate(Settings, {"input": 3}, flag_of=job_flag)
    with pytest.raises(ConfigError, match=r"^best\.yaml: items\.1\.name: Value error, must be lowercase$"):
        validate(Settings, {"items": [{"name": "a"}, {"name": "B"}]}, "best.yaml")
    with pytest.raises(ConfigError, match=r"^best\.yaml: items\.0\.colour: Extra inputs are not permitted$"):
        validate(Settings, {"items": [{"name": "a", "colour": "red"}]}, "best.yaml")


def test_plain_wording_for_policies():
    with pytest.raises(ConfigError, match=r"^policy\.yaml: items\[1\]\.name: must be lowercase$"):
        validate(Settings, {"items": [{"name": "a"}, {"name": "B"}]}, "policy.yaml", plain=True)
    with pytest.raises(ConfigError, match=r"^policy\.yaml: items\[0\]\.colour: unknown field$"):
        validate(Settings, {"items": [{"name": "a", "colour": "red"}]}, "policy.yaml", plain=True)


def test_command_line_defaults_are_the_configs():
    assert default(Settings, "batch_size") == 16 and default(Settings, "mode") == "fast"
    assert validate(Settings, {}).batch_size == default(Settings, "batch_size")
