"""Explains slow turns: when a prompt reuses much less of the prefix cache than a recent related prompt
suggests it could, say which part of the request first differed."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import deque
from dataclasses import asdict

from daemon.chat.request import ChatRequest

log = logging.getLogger(__name__)

Part = tuple[str, str]  # (what a person would call it, digest of its content)


def request_parts(request: ChatRequest) -> list[Part]:
    """The request's parts in prompt order: system blocks, tools, messages."""
    parts = [(f"system block {k}", _digest(text)) for k, text in enumerate(request.system)]
    parts += [(f'tool "{tool.name}"', _digest(asdict(tool))) for tool in request.tools]
    parts += [(f"message {i}", _digest(asdict(message))) for i, message in enumerate(request.messages)]
    return parts


class ReuseMonitor:
    """Remembers the parts of recent prompts; used from the engine thread only."""

    def __init__(self, remember: int = 32):
        self._recent: deque[list[Part]] = deque(maxlen=remember)

    def check(self, parts: list[Part], reused: int, prompt_tokens: int) -> str | None:
        """Why a request that resembles a recent one reused little of it (`system block 3 changed`,
        `evicted`), also logged under its request id; None when it did not miss."""
        related = max(self._recent, key=lambda old: _alike(old, parts), default=None)
        self._recent.append(parts)
        if related is None or prompt_tokens < 256 or reused >= prompt_tokens // 2:
            return None
        if _alike(related, parts) < len(related) // 2:
            return None  # little in common: a new conversation, not a miss
        shared = _shared(related, parts)
        if shared < len(related):
            changed = parts[shared][0] if shared < len(parts) else "its end"
            log.info(
                "reused %d of %d prompt tokens from the cache; it first differs from a recent request at %s",
                reused,
                prompt_tokens,
                changed,
            )
            return f"{changed} changed"
        log.info(
            "reused %d of %d prompt tokens although it extends a recent request: that prefix was "
            "evicted from the prompt cache (raise prompt_cache_bytes to keep more)",
            reused,
            prompt_tokens,
        )
        return "evicted"


def _alike(a: list[Part], b: list[Part]) -> int:
    """How many parts two requests have in common, in the same places."""
    return sum(x == y for x, y in zip(a, b, strict=False))


def _shared(a: list[Part], b: list[Part]) -> int:
    """How many leading parts two requests have in common."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def _digest(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
