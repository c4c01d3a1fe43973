"""Item scores → an action (allow / review / block) with reasons a reviewer can read."""

from __future__ import annotations

from dataclasses import dataclass, field

from .schema import Policy

ACTIONS = ("allow", "review", "block")


@dataclass
class Decision:
    action: str
    flagged: bool
    reasons: list[str] = field(default_factory=list)


def decide(policy: Policy, media_type: str | None, scores: dict[str, float | None]) -> Decision:
    action, reasons = "allow", []
    for c in policy.categories:
        score = scores.get(c.name)
        if score is None or media_type not in c.media:
            continue
        level = "block" if score >= c.block else "review" if score >= c.review else None
        if level is None:
            continue
        threshold = c.block if level == "block" else c.review
        reasons.append(f"{c.name} {score:.2f} >= {level} {threshold:.2f}")
        if ACTIONS.index(level) > ACTIONS.index(action):
            action = level
    return Decision(action, action != "allow", reasons)


def uncertain(policy: Policy, media_type: str | None, scores: dict[str, float | None]) -> list[str]:
    """Categories in their uncertain band [review, block): what a judge should look at."""
    wanted = set(policy.escalation.categories)
    return [c.name for c in policy.categories
            if (not wanted or c.name in wanted) and media_type in c.media
            and scores.get(c.name) is not None and c.review <= scores[c.name] < c.block]


def apply_verdict(decision: Decision, verdict: dict) -> Decision:
    """The judge's action replaces the models'; no usable verdict leaves the item for review."""
    action = verdict.get("action")
    if action not in ACTIONS:
        return Decision("review", True, [*decision.reasons, "judge: no usable verdict"])
    reason = str(verdict.get("reason") or "").strip()
    note = f"judge: {action}" + (f": {reason[:300]}" if reason else "")
    return Decision(action, action != "allow", [*decision.reasons, note])
