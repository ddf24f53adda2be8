"""What a client sees of one streamed request: when it was sent, when the first generated token arrived,
when the answer ended, and the server's own count of prompt, cached and output tokens. Anthropic's SSE
(mlxd and `--peer` servers) and OpenAI's (mlx_lm.server) are read alike."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from benchmarks.prompts import BILLING_HEADER, Conversation

TIMEOUT = httpx.Timeout(connect=10, read=900, write=60, pool=60)


class BenchError(RuntimeError):
    """A target answered with an error or broke its stream: the run stops and says which and why."""


@dataclass
class StreamResult:
    sent: float
    first_token: float
    done: float
    output_tokens: int
    prompt_tokens: int
    cached_tokens: int
    request_id: str | None = None  # the server's `request-id` header, which names its log line

    @property
    def ttft(self) -> float:
        return self.first_token - self.sent

    @property
    def decode_tps(self) -> float | None:
        """Tokens after the first, per second after the first arrived."""
        if self.output_tokens < 2 or self.done <= self.first_token:
            return None
        return (self.output_tokens - 1) / (self.done - self.first_token)

    @property
    def prefill_tps(self) -> float:
        """Prompt tokens the server computed (not read from its cache) per second of waiting."""
        return (self.prompt_tokens - self.cached_tokens) / self.ttft


@dataclass
class Endpoint:
    """One HTTP target. `kind` is "anthropic" (Messages API) or "openai" (chat completions)."""

    name: str
    url: str
    model: str
    kind: str = "anthropic"
    token: str | None = None

    def client(self) -> httpx.Client:
        headers = {"anthropic-version": "2023-06-01"} if self.kind == "anthropic" else {}
        if self.token:
            headers |= {"x-api-key": self.token, "authorization": f"Bearer {self.token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=TIMEOUT)

    def stream(self, client: httpx.Client, conversation: Conversation, max_tokens: int) -> StreamResult:
        if self.kind == "openai":
            body = self._openai_body(conversation, max_tokens)
            return self._post(client, "/v1/chat/completions", body, _openai)
        return self.messages(client, self._anthropic_body(conversation, max_tokens))

    def messages(self, client: httpx.Client, body: dict[str, Any]) -> StreamResult:
        """A Messages API request with this body as it is (it must ask for a stream)."""
        return self._post(client, "/v1/messages", body, _anthropic)

    def _post(
        self,
        client: httpx.Client,
        path: str,
        body: dict[str, Any],
        read: Callable[[float, Iterator[tuple[float, Any]], str], StreamResult],
    ) -> StreamResult:
        sent = time.perf_counter()
        with client.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                response.read()
                raise BenchError(f"{self.name} answered {response.status_code}: {response.text[:500]}")
            result = read(sent, _events(response.iter_lines()), self.name)
        result.request_id = response.headers.get("request-id")
        return result

    def _anthropic_body(self, conversation: Conversation, max_tokens: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_tokens,
            "stream": True,
            "temperature": 0,
            "messages": conversation.messages,
        }
        # Claude Code marks its system blocks (all but the billing line) and its tools as cacheable.
        cacheable = {"cache_control": {"type": "ephemeral"}}
        if conversation.system:
            body["system"] = [
                {"type": "text", "text": text} | ({} if text.startswith(BILLING_HEADER) else cacheable)
                for text in conversation.system
            ]
        if conversation.tools:
            body["tools"] = [*conversation.tools[:-1], conversation.tools[-1] | cacheable]
        return body

    def _openai_body(self, conversation: Conversation, max_tokens: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0,
            "messages": conversation.openai_messages(),
            "chat_template_kwargs": {"enable_thinking": False},
        }
        if conversation.tools:
            body["tools"] = conversation.openai_tools()
        return body


def _events(lines: Iterator[str]) -> Iterator[tuple[float, dict[str, Any] | None]]:
    """Each SSE `data:` payload with its arrival time; None for OpenAI's `[DONE]`."""
    for line in lines:
        if line.startswith("data:"):
            payload = line[5:].strip()
            yield time.perf_counter(), None if payload == "[DONE]" else json.loads(payload)


def _anthropic(sent: float, events: Iterator[tuple[float, Any]], name: str) -> StreamResult:
    first = done = None
    usage: dict[str, int] = {}
    for arrived, event in events:
        kind = event.get("type")
        if kind == "error":
            raise BenchError(f"{name} sent an error event: {event.get('error')}")
        if kind == "message_start":
            usage |= event["message"].get("usage") or {}
        elif kind == "content_block_delta" and first is None:
            first = arrived
        elif kind == "message_delta":
            usage |= {k: v for k, v in (event.get("usage") or {}).items() if v is not None}
            done = arrived
    return _result(sent, first, done, name, usage.get("output_tokens", 0), *_anthropic_prompt(usage))


def _anthropic_prompt(usage: dict[str, int]) -> tuple[int, int]:
    cached = usage.get("cache_read_input_tokens") or 0
    written = usage.get("cache_creation_input_tokens") or 0
    return usage.get("input_tokens", 0) + cached + written, cached


def _openai(sent: float, events: Iterator[tuple[float, Any]], name: str) -> StreamResult:
    first = done = None
    usage: dict[str, Any] = {}
    for arrived, chunk in events:
        if chunk is None:
            break
        if "error" in chunk:
            raise BenchError(f"{name} sent an error: {chunk['error']}")
        delta = (chunk.get("choices") or [{}])[0].get("delta") or {}
        if first is None and any(delta.get(key) for key in ("content", "reasoning", "tool_calls")):
            first = arrived
        if chunk.get("usage"):
            usage, done = chunk["usage"], arrived
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return _result(
        sent, first, done, name, usage.get("completion_tokens", 0), usage.get("prompt_tokens", 0), cached
    )


def _result(
    sent: float, first: float | None, done: float | None, name: str, output: int, prompt: int, cached: int
) -> StreamResult:
    if done is None:
        raise BenchError(f"{name}'s stream ended without its usage")
    # An answer that ended at once (end of sequence first) has no token to time but its end.
    return StreamResult(sent, first if first is not None else done, done, output, prompt, cached)
