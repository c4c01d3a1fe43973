"""Escalation of uncertain items to an LLM judge behind an OpenAI-compatible API."""

from .client import Judge, JudgeConfig, JudgeRequest, Verdict
from .loops import is_degenerate

__all__ = ["Judge", "JudgeConfig", "JudgeRequest", "Verdict", "is_degenerate"]
