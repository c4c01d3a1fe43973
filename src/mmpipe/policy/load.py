"""Reading a policy file: every mistake is one line naming the file, the field and the reason."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..config import parse_yaml, read_yaml, validate
from .schema import Policy

DEFAULT = "default.yaml"


def load_policy(path: str | Path | None = None, model: type[Policy] = Policy) -> Policy:
    """The policy in ``path``; None gives the default policy shipped with mmpipe. ``model``
    validates it: ``Policy`` reads every category's common fields only (names, thresholds), the
    stages' ``ModerationPolicy`` every field of every source."""
    if path is None:
        name = f"<default policy {DEFAULT}>"
        data = parse_yaml((resources.files(__package__) / DEFAULT).read_text(), name, "policy")
    else:
        name = Path(path).name
        data = read_yaml(path, "--policy", "policy file")
    return validate(model, data, name, plain=True)
