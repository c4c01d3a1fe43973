"""An LLM judge behind any OpenAI-compatible ``/v1/chat/completions`` (vLLM, a hosted API…).

Robust the way a batch job needs it to be: a timeout per call, retries on connection errors,
timeouts, 429 and 5xx with exponential backoff and full jitter (or longer when the server sends
Retry-After), a cap on requests in flight, and answers checked before they are trusted: parsed as
JSON, with looping answers rejected and counted. Nothing here raises for a bad server or a bad
answer: it comes back as a Verdict with no action, and the policy leaves the item for review.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..net import http_base_url
from ..retry import RETRY_STATUSES, backoff_delay, retry_after_seconds
from .loops import is_degenerate

ACTIONS = ("allow", "review", "block")
MAX_RETRY_AFTER_S = 60.0
RAW_CHARS = 2000


DEFAULT_PROMPT = ("You are a content moderator. Look at the image(s) and text and decide whether "
                  "they violate the policy categories named. Answer only with JSON: "
                  '{"action": "allow" | "review" | "block", "categories": [...], "reason": "..."}')


class JudgeSettings(BaseModel):
    """How to call a judge; the policy's ``escalation`` section is these plus when to call it."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    url: str = "http://127.0.0.1:8000/v1"  # base URL of an OpenAI-compatible server
    model: str = "judge"
    prompt: str = DEFAULT_PROMPT  # the system prompt
    timeout_s: float = Field(30.0, gt=0)
    max_retries: int = Field(3, ge=0)
    backoff_base_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(8.0, ge=0)
    concurrency: int = Field(4, ge=1)
    max_frames: int = Field(4, ge=0)
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        return http_base_url(url)


class JudgeConfig(JudgeSettings):
    api_key: str | None = None


@dataclass
class JudgeRequest:
    text: str | None
    images: list[bytes] = field(default_factory=list)  # JPEG bytes
    context: dict = field(default_factory=dict)  # categories and scores the judge should know


@dataclass
class Verdict:
    action: str | None  # allow | review | block; None when status is not "ok"
    reason: str = ""
    categories: list[str] = field(default_factory=list)
    raw: str = ""  # the answer text, cut to RAW_CHARS
    status: str = "ok"  # ok | degenerate | unparseable | failed
    attempts: int = 0  # HTTP requests made
    latency_s: float = 0.0
    error: str | None = None  # why status is not "ok"


class _HTTPStatus(Exception):
    def __init__(self, status: int, detail: str, retry_after: float | None):
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.retry_after = retry_after


class _BadResponse(Exception):
    """A 200 that is not a chat completion: a misconfigured URL, so asking again would not help."""


class Judge:
    def __init__(self, config: JudgeConfig):
        self.config = config
        self.endpoint = config.url + "/chat/completions"
        self.counters: Counter[str] = Counter()  # verdict statuses; written under _lock
        self._lock = threading.Lock()
        self._json_mode = True  # dropped for good once a server refuses response_format

    def judge_many(self, requests: list[JudgeRequest]) -> list[Verdict]:
        """One verdict per request, in order, with at most ``concurrency`` requests in flight."""
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=min(self.config.concurrency, len(requests))) as pool:
            return list(pool.map(lambda r: self.judge(r.text, r.images, r.context), requests))

    def judge(self, text: str | None, images: Sequence[bytes] = (), context: dict | None = None) -> Verdict:
        start = time.monotonic()
        answer, attempts, error = self._ask(self._body(text, images, context or {}))
        if answer is None:
            verdict = Verdict(None, status="failed", attempts=attempts, error=error)
        else:
            verdict = parse_answer(answer)
            verdict.attempts = attempts
        verdict.latency_s = round(time.monotonic() - start, 3)
        with self._lock:
            self.counters[verdict.status] += 1
        return verdict

    def _body(self, text: str | None, images: Sequence[bytes], context: dict) -> dict:
        cfg = self.config
        prompt = text or "(no text)"
        if context:
            prompt += "\n\nContext from the automatic classifiers: " + json.dumps(context, ensure_ascii=False)
        urls = ["data:image/jpeg;base64," + base64.b64encode(img).decode() for img in images[:cfg.max_frames]]
        content = [{"type": "text", "text": prompt}] + [
            {"type": "image_url", "image_url": {"url": url}} for url in urls]
        return {"model": cfg.model, "max_tokens": cfg.max_tokens, "temperature": cfg.temperature,
                "messages": [{"role": "system", "content": cfg.prompt}, {"role": "user", "content": content}],
                "response_format": {"type": "json_object"}}

    def _ask(self, body: dict) -> tuple[str | None, int, str | None]:
        """The answer text (None when it failed), the HTTP requests made and the last error."""
        cfg = self.config
        json_mode = self._json_mode
        attempts = retries = 0
        while True:
            attempts += 1
            try:
                sent = body if json_mode else {k: v for k, v in body.items() if k != "response_format"}
                answer = self._post(sent)
                if not json_mode:
                    self._json_mode = False
                return answer, attempts, None
            except _HTTPStatus as exc:
                if exc.status == 400 and json_mode:
                    # Servers without JSON mode answer 400; ask once more without it, at once.
                    json_mode = False
                    continue
                if exc.status not in RETRY_STATUSES:
                    return None, attempts, str(exc)
                # Honour Retry-After, but a server cannot park a worker for longer than a minute.
                error, wait_at_least = str(exc), min(exc.retry_after or 0.0, MAX_RETRY_AFTER_S)
            except _BadResponse as exc:
                return None, attempts, str(exc)
            except (OSError, http.client.HTTPException) as exc:  # URLError and timeouts are OSErrors
                error, wait_at_least = _describe(exc), 0.0
            if retries == cfg.max_retries:
                return None, attempts, f"gave up after {attempts} attempts: {error}"
            time.sleep(backoff_delay(retries, cfg.backoff_base_s, cfg.backoff_max_s, wait_at_least))
            retries += 1

    def _post(self, body: dict) -> str:
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        req = urllib.request.Request(self.endpoint, data=json.dumps(body).encode(), headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.config.timeout_s) as resp:
                data = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode(errors="replace")
            retry_after = retry_after_seconds(exc.headers.get("Retry-After"))
            raise _HTTPStatus(exc.code, detail, retry_after) from None
        try:
            return str(json.loads(data)["choices"][0]["message"]["content"] or "")
        except (ValueError, KeyError, IndexError, TypeError):
            raise _BadResponse(f"not a chat completion: {data[:200]!r}") from None


def _describe(exc: Exception) -> str:
    reason = getattr(exc, "reason", exc)  # URLError wraps the socket error
    kind = "timeout" if isinstance(reason, TimeoutError) else "connection error"
    return f"{kind}: {str(reason) or type(reason).__name__}"


_FENCED = re.compile(r"```(?:json)?\s*(\{.*?\})\s*```", re.S)


def parse_answer(answer: str) -> Verdict:
    """The verdict in a judge's answer: plain JSON, a ```json block, or JSON after some prose."""
    raw = answer[:RAW_CHARS]
    if is_degenerate(answer):
        return Verdict(None, raw=raw, status="degenerate",
                       error="looping answer rejected by the repeated n-gram filter")
    data = _json_object(answer)
    action = str(data.get("action", "")).strip().lower() if data else ""
    if action not in ACTIONS:
        return Verdict(None, raw=raw, status="unparseable",
                       error="answer is not a JSON object with action allow, review or block")
    categories = data.get("categories")
    return Verdict(action, reason=str(data.get("reason") or "")[:1000],
                   categories=[str(c) for c in categories] if isinstance(categories, list) else [],
                   raw=raw)


def _json_object(answer: str) -> dict | None:
    fenced = [m.group(1) for m in _FENCED.finditer(answer)]
    start, end = answer.find("{"), answer.rfind("}")
    prose_first = [answer[start:end + 1]] if 0 <= start < end else []
    for candidate in (answer.strip(), *fenced, *prose_first):
        try:
            data = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(data, dict):
            return data
    return None
