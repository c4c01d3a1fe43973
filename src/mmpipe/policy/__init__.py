"""Moderation policies: what to score, the thresholds, and how scores become decisions."""

from .aggregate import aggregate
from .decide import Decision, apply_verdict, decide, uncertain
from .load import load_policy
from .schema import Category, Policy
from .words import WordMatcher, normalise

__all__ = ["Category", "Decision", "Policy", "WordMatcher", "aggregate", "apply_verdict",
           "decide", "load_policy", "normalise", "uncertain"]
