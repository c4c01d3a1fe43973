"""Every config as one way in: a YAML file read, a command line's values laid on top, a pydantic
model validating the result, and the first mistake as one ``ConfigError`` line naming the file or
flag, the field and the reason. Job configs, policies, ``serve`` and ``route`` settings and
``tune``'s options all go through here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .errors import ConfigError

M = TypeVar("M", bound=BaseModel)
# Where a field's value came from, by its pydantic location: the flag that set it, or None for
# the file (then the message names the file and the field's path in it).
FlagOf = Callable[[tuple], "str | None"]


def usable_cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count): what
    defaults that follow the machine (decode workers, serving replicas) are sized by."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def read_yaml(path: str | Path, flag: str = "--config", what: str = "config file") -> dict:
    """The YAML mapping in ``path`` (an empty file is an empty mapping); ``flag`` is named when
    there is no such file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(flag, f"no {what} {str(path)!r}")
    return parse_yaml(p.read_text(errors="replace"), p.name, what)


def parse_yaml(text: str, name: str, what: str = "config file") -> dict:
    """``text`` as a YAML mapping; bad YAML names ``name`` and the line."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(name, f"{where}invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(name, f"the {what} must be a YAML mapping")
    return data


def layered(file: dict, options: dict, given: set[str]) -> dict:
    """A command line's ``options`` on top of a config file's fields: the file's values replace
    the command line's defaults, the names in ``given`` (set on the command line) win over both."""
    return {**options, **file, **{k: v for k, v in options.items() if k in given}}


def validate(model: type[M], data: dict, source: str = "config", flag_of: FlagOf = lambda loc: None,
             plain: bool = False) -> M:
    """``data`` as ``model``; its first error becomes one ConfigError (see ``config_error``)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, source, flag_of, plain) from None


def config_error(exc: ValidationError, source: str = "config", flag_of: FlagOf = lambda loc: None,
                 plain: bool = False) -> ConfigError:
    """Pydantic's first error as one line: ``--flag: reason`` when ``flag_of`` names the flag the
    value came from, else ``source: field.path: reason``.

    ``plain``: a policy's wording (``categories[2].name``, "unknown field"); the other configs
    keep pydantic's (``backends.0.url``, "Extra inputs are not permitted"), which their users'
    scripts and tests already match."""
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    message = err["msg"]
    if plain:
        message = "unknown field" if err["type"] == "extra_forbidden" else message.removeprefix("Value error, ")
    flag = flag_of(loc)
    if flag is not None:
        return ConfigError(flag, message)
    path = _path(loc, plain)
    return ConfigError(source, f"{path}: {message}" if path else message)


def default(model: type[BaseModel], field: str) -> Any:
    """``model``'s default for ``field``, so that a command-line option uses (and its --help
    shows) the config's own rather than a copy."""
    return model.model_fields[field].get_default(call_default_factory=False)


def job_flag(loc: tuple) -> str:
    """The command-line name of a job config's field: ``INPUT``/``OUT`` for the positionals,
    ``--max-pixels`` for ``max_pixels``; ``--config`` for the config as a whole."""
    name = str(loc[0]) if loc else "config"
    return name.upper() if name in ("input", "out") else "--" + name.replace("_", "-")


def flags_named(given: Sequence[str] | set[str]) -> FlagOf:
    """``flag_of`` for settings whose top-level fields are flags: those in ``given`` are named
    as ``--flag``, the rest are the file's."""
    return lambda loc: f"--{str(loc[0]).replace('_', '-')}" if loc and loc[0] in given else None


def _path(loc: Sequence, plain: bool) -> str:
    if not plain:
        return ".".join(str(p) for p in loc)
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
