"""mmpipe: multimodal inference at scale.

The library API is what the CLI calls: ``mmpipe.embed(input, out, **options)`` and
``mmpipe.moderate(input, out, **options)``; ``mmpipe.tune(model, task, **options)`` finds their
fastest configuration.
"""

from .errors import ConfigError, MmpipeError, ModelLoadError, OutputDirError
from .jobs.embed import EmbedConfig, embed
from .jobs.moderate import ModerateConfig, moderate
from .jobs.runner import JobResult
from .sinks import OutputDir
from .tune.run import TuneResult, tune


def read_output(out_dir) -> "pyarrow.Table":  # noqa: F821
    """Every committed row of a job's output folder as one Arrow table."""
    return OutputDir(out_dir).read_table()


__version__ = "0.1.0"
__all__ = ["ConfigError", "EmbedConfig", "JobResult", "MmpipeError", "ModelLoadError",
           "ModerateConfig", "OutputDirError", "TuneResult", "embed", "moderate", "read_output", "tune"]
