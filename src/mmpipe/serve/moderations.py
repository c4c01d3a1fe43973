"""``POST /v1/moderations`` in the OpenAI schema, answered by the moderation job's stages.

``input`` is a string, a list of strings (one result each), or a list of parts
(``{"type": "text", "text": …}`` / ``{"type": "image_url", "image_url": {"url": …}}``) that
together make one result, scored as the worst of its parts.
"""

from __future__ import annotations

import uuid
from typing import Any

from ..policy import Policy
from ..records import Item
from ..stages.checks import ModerationOptions
from ..stages.moderation_plan import effective_policy, load_policy_clip, moderation_stages
from .batcher import DynamicBatcher
from .config import ServeConfig
from .errors import RequestError
from .inputs import InputLimits, failed_items, part_item
from .served import ServedModel, served_model

MODEL_ID = "mmpipe-moderation"
# OpenAI's names, so that clients written for OpenAI work unchanged.
ALIASES = (MODEL_ID, "omni-moderation-latest", "text-moderation-latest")
INPUT_TYPE = {"text": "text", "image": "image", "video": "image"}


def moderation_model(config: ServeConfig) -> tuple[ServedModel, Policy]:
    """The moderation job's stages for the configured policy, without the judge: an online
    answer cannot wait for an LLM, and the scores already say what the policy flags."""
    m = config.moderation
    policy = effective_policy(m.policy, escalate=False)
    opts = ModerationOptions(max_pixels=config.max_pixels, model_threads=m.model_threads,
                             nsfw_precision=m.nsfw_precision)
    stages = [s for s in moderation_stages(policy, opts, load_policy_clip(policy, m.clip_model))
              if s.name != "judge"]
    return served_model(MODEL_ID, stages), policy


async def parse_input(body: dict, limits: InputLimits) -> list[list[Item]]:
    """One list of items per result the response will hold."""
    value = body.get("input")
    if isinstance(value, str):
        return [[Item(id="input", text=value)]]
    if not isinstance(value, list) or not value:
        raise RequestError("input must be a string, a list of strings or a list of content parts",
                           param="input")
    if all(isinstance(v, str) for v in value):
        return [[Item(id=f"input[{i}]", text=v)] for i, v in enumerate(value)]
    # Parts (strings among them count as text parts) make one result together.
    return [[await part_item(part, f"input[{i}]", limits) for i, part in enumerate(value)]]


async def moderate_request(body: dict, batcher: DynamicBatcher, policy: Policy, model: str,
                           limits: InputLimits) -> dict:
    if model not in ALIASES:
        raise RequestError(f"model {model!r} does not exist; try {MODEL_ID!r}",
                           param="model", status=404, code="model_not_found")
    groups = await parse_input(body, limits)
    flat = [item for group in groups for item in group]
    records = await batcher.submit(flat)
    failed_items(flat, records)
    results, start = [], 0
    for group in groups:
        results.append(_result(policy, records[start:start + len(group)]))
        start += len(group)
    return {"id": f"modr-{uuid.uuid4().hex}", "model": model, "results": results}


def _result(policy: Policy, records: list) -> dict[str, Any]:
    scores, applied = {}, {}
    for c in policy.categories:
        values = [(r.moderation.outcome.scores.get(c.name), INPUT_TYPE[r.moderation.media_type])
                  for r in records]
        used = [(v, t) for v, t in values if v is not None]
        scores[c.name] = max((v for v, _ in used), default=0.0)
        applied[c.name] = sorted({t for _, t in used})
    flags = {c.name: bool(applied[c.name]) and scores[c.name] >= c.review for c in policy.categories}
    return {"flagged": any(flags.values()), "categories": flags,
            "category_scores": {k: round(float(v), 6) for k, v in scores.items()},
            "category_applied_input_types": applied}
