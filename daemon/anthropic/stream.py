"""Turns a generation's events into Anthropic's stream events, and stream events into one Message.

The non-streaming answer is assembled from the very events the stream would send, so the two can never
disagree. Usage follows the API: the prompt is split into tokens read from and written to the cache only
when the request asked for caching (`cache_control`); otherwise it is all `input_tokens`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Iterable
from typing import Any

from daemon.anthropic.errors import envelope
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

Event = dict[str, Any]

_DELTA_TYPES = {"text": "text_delta", "thinking": "thinking_delta", "tool_use": "input_json_delta"}
_DELTA_FIELDS = {"text": "text", "thinking": "thinking", "tool_use": "partial_json"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def thinking_signature(thinking: str) -> str:
    """An opaque signature a client echoes back with the thinking block; a digest of its text."""
    return base64.b64encode(hashlib.sha256(thinking.encode()).digest()).decode()


class MessageStream:
    """The stream events of one response, in order; one instance per request."""

    def __init__(self, model: str, *, omit_thinking: bool = False, cache_fields: bool = False):
        self.model = model
        self.message_id = new_id("msg")
        self.omit_thinking = omit_thinking
        self.cache_fields = cache_fields
        self.started = False
        self._index = -1
        self._kind: str | None = None
        self._thinking: list[str] = []

    def usage(self, usage: Usage) -> Event:
        """Anthropic's four counts; the three input ones always add up to the prompt."""
        read, written = (usage.cached_tokens, usage.stored_tokens) if self.cache_fields else (0, 0)
        return {
            "input_tokens": usage.prompt_tokens - read - written,
            "output_tokens": usage.output_tokens,
            "cache_read_input_tokens": read,
            "cache_creation_input_tokens": written,
        }

    def message_start(self, usage: Usage) -> Event:
        self.started = True
        message = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self.usage(usage),
        }
        return {"type": "message_start", "message": message}

    def events(self, event: GenerationEvent) -> list[Event]:
        """The stream events for one generation event; `Started` is `message_start`, unless that was sent
        already (from an estimate, when admission was slow)."""
        match event:
            case Started(usage=usage):
                return [] if self.started else [self.message_start(usage)]
            case BlockStart(kind=kind, tool_name=name):
                self._index += 1
                self._kind = kind
                self._thinking = []
                block: dict[str, Any] = {"type": kind}
                if kind == "text":
                    block["text"] = ""
                elif kind == "thinking":
                    block.update(thinking="", signature="")
                else:
                    block.update(id=new_id("toolu"), name=name, input={})
                return [{"type": "content_block_start", "index": self._index, "content_block": block}]
            case BlockDelta(text=text):
                assert self._kind is not None, "a delta outside a content block"
                if self._kind == "thinking":
                    self._thinking.append(text)
                    if self.omit_thinking:
                        return []
                delta = {"type": _DELTA_TYPES[self._kind], _DELTA_FIELDS[self._kind]: text}
                return [{"type": "content_block_delta", "index": self._index, "delta": delta}]
            case BlockStop():
                events: list[Event] = []
                if self._kind == "thinking":
                    signature = thinking_signature("".join(self._thinking))
                    events.append(
                        {
                            "type": "content_block_delta",
                            "index": self._index,
                            "delta": {"type": "signature_delta", "signature": signature},
                        }
                    )
                self._kind = None
                return [*events, {"type": "content_block_stop", "index": self._index}]
            case Finished(stop_reason=reason, stop_sequence=stop, usage=usage):
                delta = {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": stop}}
                return [{**delta, "usage": self.usage(usage)}, {"type": "message_stop"}]
            case Failed(message=message, overloaded=overloaded):
                kind = "overloaded_error" if overloaded else "api_error"
                return [envelope(kind, message)]
        raise TypeError(f"not a generation event: {event!r}")

    def sse(self, event: GenerationEvent) -> bytes:
        """The SSE frames for one generation event."""
        return b"".join(encode_sse(frame) for frame in self.events(event))

    @property
    def ping(self) -> bytes:
        return PING


def encode_sse(event: Event) -> bytes:
    """One SSE frame: an `event:` line naming the JSON's type, the `data:` line, and a blank line."""
    data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


PING = encode_sse({"type": "ping"})


def assemble(events: Iterable[Event]) -> Event:
    """The Message that a sequence of stream events describes, as the SDKs accumulate it."""
    message: Event = {}
    partial_json: dict[int, list[str]] = {}
    for event in events:
        kind = event["type"]
        if kind == "message_start":
            message = dict(event["message"], content=[])
        elif kind == "content_block_start":
            message["content"].append(dict(event["content_block"]))
        elif kind == "content_block_delta":
            block = message["content"][event["index"]]
            delta = event["delta"]
            if delta["type"] == "input_json_delta":
                partial_json.setdefault(event["index"], []).append(delta["partial_json"])
            else:
                field = {"text_delta": "text", "thinking_delta": "thinking", "signature_delta": "signature"}
                name = field[delta["type"]]
                block[name] = block.get(name, "") + delta[name]
        elif kind == "content_block_stop" and event["index"] in partial_json:
            text = "".join(partial_json.pop(event["index"]))
            message["content"][event["index"]]["input"] = json.loads(text) if text else {}
        elif kind == "message_delta":
            message.update(event["delta"])
            message["usage"] = {**message["usage"], **event["usage"]}
    return message
