"""Turns a generation's events into Chat Completions chunks (`chat.completion.chunk`, sent as `data:` lines
ending with `data: [DONE]`), and chunks into one `chat.completion`.

The answer sent whole is assembled from the very chunks the stream would send, so the two cannot disagree.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable
from typing import Any

from daemon.chat.errors import RequestError
from daemon.chat.events import (
    BlockDelta,
    BlockStart,
    BlockStop,
    Failed,
    Finished,
    GenerationEvent,
    Started,
    Usage,
)
from daemon.openai.errors import error_body

Chunk = dict[str, Any]

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}
# An SSE comment, sent in silences to keep the connection alive; clients skip it.
PING = b": ping\n\n"
DONE = b"data: [DONE]\n\n"


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def usage(counts: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": counts.prompt_tokens,
        "completion_tokens": counts.output_tokens,
        "total_tokens": counts.prompt_tokens + counts.output_tokens,
        "prompt_tokens_details": {"cached_tokens": counts.cached_tokens},
    }


class CompletionStream:
    """The chunks of one completion, in order; one instance per request. With `include_usage`, every chunk
    has a `usage` (null) and a last chunk with no choices carries the counts."""

    def __init__(self, model: str, *, include_usage: bool = False):
        self.model = model
        self.completion_id = new_id("chatcmpl-")
        self.created = int(time.time())
        self.include_usage = include_usage
        self._started = False
        self._kind: str | None = None
        self._calls = 0  # tool calls begun so far: the next one's index

    def chunk(self, choices: list[dict[str, Any]], counts: Usage | None = None) -> Chunk:
        chunk: Chunk = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = usage(counts) if counts is not None else None
        return chunk

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> Chunk:
        return self.chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}])

    def chunks(self, event: GenerationEvent) -> list[Chunk]:
        """The chunks for one generation event; the first carries the role. A failure is an error object
        in OpenAI's envelope rather than a chunk."""
        if isinstance(event, Failed):
            status = 529 if event.overloaded else 500
            return [error_body(RequestError(status, event.message, should_retry=event.retry))]
        opening = [] if self._started else [self.delta({"role": "assistant", "content": ""})]
        self._started = True
        return opening + self._chunks(event)

    def _chunks(self, event: GenerationEvent) -> list[Chunk]:
        match event:
            case Started():
                return []
            case BlockStart(kind=kind, tool_name=name):
                self._kind = kind
                if kind != "tool_use":
                    return []
                call = {
                    "index": self._calls,
                    "id": new_id("call_"),
                    "type": "function",
                    "function": {"name": name, "arguments": ""},
                }
                self._calls += 1
                return [self.delta({"tool_calls": [call]})]
            case BlockDelta(text=text):
                if self._kind == "text":
                    return [self.delta({"content": text})]
                if self._kind == "thinking":
                    return [self.delta({"reasoning_content": text})]
                assert self._kind == "tool_use", "a delta outside a content block"
                piece = {"index": self._calls - 1, "function": {"arguments": text}}
                return [self.delta({"tool_calls": [piece]})]
            case BlockStop():
                self._kind = None
                return []
            case Finished(stop_reason=reason, usage=counts):
                last = [self.delta({}, FINISH_REASONS[reason])]
                return last + ([self.chunk([], counts)] if self.include_usage else [])
        raise TypeError(f"not a generation event: {event!r}")

    def sse(self, event: GenerationEvent) -> bytes:
        """The `data:` lines for one generation event; after the last one (an answer's end, or a failure),
        `data: [DONE]`."""
        lines = b"".join(encode_sse(chunk) for chunk in self.chunks(event))
        return lines + DONE if isinstance(event, Finished | Failed) else lines

    @property
    def ping(self) -> bytes:
        return PING


def encode_sse(chunk: Chunk) -> bytes:
    return b"data: " + json.dumps(chunk, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def assemble(chunks: Iterable[Chunk]) -> dict[str, Any]:
    """The `chat.completion` a sequence of chunks describes, as the SDKs accumulate a stream (the usage
    comes from the last chunk of a stream made with `include_usage`)."""
    head: Chunk = {}
    counts = None
    text: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    arguments: list[list[str]] = []
    finish_reason = None
    for chunk in chunks:
        head = head or chunk
        counts = chunk.get("usage") or counts
        for choice in chunk["choices"]:
            delta = choice["delta"]
            finish_reason = choice["finish_reason"] or finish_reason
            text.append(delta.get("content", ""))
            reasoning.append(delta.get("reasoning_content", ""))
            for piece in delta.get("tool_calls", ()):
                if "id" in piece:
                    calls.append({"id": piece["id"], "type": "function", "function": dict(piece["function"])})
                    arguments.append([])
                arguments[piece["index"]].append(piece["function"]["arguments"])
    for call, pieces in zip(calls, arguments, strict=True):
        call["function"]["arguments"] = "".join(pieces)
    content = "".join(text)
    # A turn of calls alone has no content, as OpenAI sends it.
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content or (None if calls else ""),
        "refusal": None,
    }
    if any(reasoning):
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    return {
        "id": head["id"],
        "object": "chat.completion",
        "created": head["created"],
        "model": head["model"],
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": counts,
    }
