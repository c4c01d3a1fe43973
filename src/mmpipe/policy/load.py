"""Reading a policy file: every mistake is one line naming the file, the field and the reason."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from ..errors import ConfigError
from .schema import Policy

DEFAULT = "default.yaml"


def load_policy(path: str | Path | None = None, model: type[Policy] = Policy) -> Policy:
    """The policy in ``path``; None gives the default policy shipped with mmpipe. ``model``
    validates it: ``Policy`` reads every category's common fields only (names, thresholds), the
    stages' ``ModerationPolicy`` every field of every source."""
    if path is None:
        text = (resources.files(__package__) / DEFAULT).read_text()
        name = f"<default policy {DEFAULT}>"
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("--policy", f"no policy file {str(path)!r}")
        text, name = p.read_text(errors="replace"), p.name
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(name, f"{where}invalid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(name, "a policy is a YAML mapping with at least 'categories'")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(name, _first_error(exc)) from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown field"
    return f"{field}: {message}" if field else message
