"""Errors that stop a job before it starts. Per-item problems are error rows, not exceptions."""


class MmpipeError(Exception):
    """A problem the user can fix; the CLI prints it as one line and exits 2."""


class ConfigError(MmpipeError):
    """A bad option or config value; ``field`` names it the way the user wrote it."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")

    @property
    def key(self) -> str:
        """The field as a config file names it: ``--max-pixels`` → ``max_pixels``, ``INPUT`` → ``input``."""
        return self.field.lstrip("-").replace("-", "_").lower()


class ModelLoadError(MmpipeError):
    """A model spec that cannot be loaded (missing checkpoint, unreachable hub, pickle weights)."""


class OutputDirError(MmpipeError):
    """An output directory that cannot be resumed safely (other model, missing shards)."""
