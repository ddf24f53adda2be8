"""`mlxd claude --check`: the requests Claude Code makes, sent to the running daemon the way Claude Code
sends them, with one verdict each."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from daemon.anthropic.stream import assemble as assemble_stream
from daemon.client.http import DaemonClient, DaemonUnreachable, Reply, ServerEvent

CLAUDE_CODE_HEADERS = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,"
    "fine-grained-tool-streaming-2025-05-14",
    "user-agent": "mlxd-claude-check (claude-cli compatible)",
}
READ_TOOL = {
    "name": "Read",
    "description": "Reads a file from the local filesystem and returns its lines.",
    "input_schema": {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {"file_path": {"type": "string", "description": "The absolute path of the file"}},
        "required": ["file_path"],
        "additionalProperties": False,
    },
}


class StreamError(Exception):
    """A stream that breaks Anthropic's event grammar, in a way Claude Code would trip over."""


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name:<13} {self.detail}"


def first_turn(model: str) -> dict[str, Any]:
    """A small request of Claude Code's shape: system blocks with cache_control, a tool, block content."""
    return {
        "model": model,
        "max_tokens": 32,
        "stream": True,
        "system": [
            {
                "type": "text",
                "text": "You are an agent for software engineering. Answer briefly.",
                "cache_control": {"type": "ephemeral"},
            }
        ],
        "tools": [READ_TOOL],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hello in one sentence."}]}],
        "metadata": {"user_id": json.dumps({"session_id": "mlxd-claude-check"})},
    }


def run_checks(client: DaemonClient, model: str) -> Iterator[Check]:
    """Each check as it completes; a daemon that does not answer ends the run at the first."""
    try:
        probe = client.request("HEAD", "/", authorized=False)
    except DaemonUnreachable as error:
        yield Check("reachable", False, str(error))
        return
    yield Check("reachable", probe.status == 200, f"HEAD / answered {probe.status}")
    yield _check_models(client, model)
    request = first_turn(model)
    yield _check_count_tokens(client, request)
    answer, check = _streamed_turn(client, request)
    yield Check("stream", check.passed, check.detail)
    if answer is None:
        yield Check("prefix cache", False, "skipped: the first turn failed")
        return
    second, check = _streamed_turn(client, next_turn(request, answer))
    if second is None:
        yield Check("prefix cache", False, f"second turn: {check.detail}")
        return
    cached, prompt = second["usage"]["cache_read_input_tokens"], _prompt_tokens(second["usage"])
    yield Check(
        "prefix cache",
        cached > 0,
        f"second turn read {cached} of {prompt} prompt tokens from the cache"
        + ("" if cached else ": every turn would process the whole conversation again"),
    )


def next_turn(request: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """What Claude Code sends next: the answer appended as it came, tool results for its tool calls, and a
    new user message."""
    results = [
        {"type": "tool_result", "tool_use_id": block["id"], "content": "1\thello"}
        for block in answer["content"]
        if block["type"] == "tool_use"
    ]
    follow_up = {"role": "user", "content": [*results, {"type": "text", "text": "Thanks. Now say goodbye."}]}
    content = answer["content"] or [{"type": "text", "text": "Hello."}]
    return {
        **request,
        "messages": [*request["messages"], {"role": "assistant", "content": content}, follow_up],
    }


def _check_models(client: DaemonClient, model: str) -> Check:
    reply = _send(client, "GET", "/v1/models?limit=1000")
    if isinstance(reply, str):
        return Check("models", False, reply)
    if reply.status != 200:
        return Check("models", False, _refusal(reply))
    ids = [entry["id"] for entry in reply.json()["data"]]
    if model not in ids:
        return Check("models", False, f"{model!r} is not served; the daemon serves {ids}")
    return Check("models", True, f"serves {', '.join(ids)}")


def _check_count_tokens(client: DaemonClient, request: dict[str, Any]) -> Check:
    body = {key: request[key] for key in ("model", "system", "tools", "messages")}
    reply = _send(client, "POST", "/v1/messages/count_tokens", body)
    if isinstance(reply, str):
        return Check("count_tokens", False, reply)
    if reply.status != 200:
        return Check("count_tokens", False, _refusal(reply))
    tokens = reply.json().get("input_tokens", 0)
    return Check("count_tokens", tokens > 0, f"{tokens} input tokens")


def _send(client: DaemonClient, method: str, path: str, body: dict | None = None) -> Reply | str:
    """The reply, or why none came (the connection can still break after the probe answered)."""
    try:
        return client.request(method, path, body, headers=CLAUDE_CODE_HEADERS)
    except OSError as error:
        return f"no answer: {error}"


def _streamed_turn(client: DaemonClient, request: dict[str, Any]) -> tuple[dict | None, Check]:
    """(the assembled message, or None when the stream failed; a verdict on the stream)."""
    try:
        refused, events = client.stream("/v1/messages?beta=true", request, headers=CLAUDE_CODE_HEADERS)
        if refused is not None:
            return None, Check("stream", False, _refusal(refused))
        message = assemble(list(events))
    except StreamError as error:
        return None, Check("stream", False, str(error))
    except (OSError, ValueError, KeyError) as error:
        return None, Check("stream", False, f"the stream broke: {error!r}")
    usage = message["usage"]
    kinds = ", ".join(block["type"] for block in message["content"]) or "no content"
    return message, Check(
        "stream",
        True,
        f"{usage['output_tokens']} tokens ({kinds}), stop_reason {message['stop_reason']}, "
        f"prompt {_prompt_tokens(usage)} tokens",
    )


def assemble(events: list[ServerEvent]) -> dict[str, Any]:
    """The message a stream describes, checking the order of events Claude Code relies on."""
    names = [event.name for event in events if event.name != "ping"]
    if "error" in names:
        error = next(event for event in events if event.name == "error").data.get("error", {})
        raise StreamError(
            f"the stream ended with an error event: {error.get('type')}: {error.get('message')}"
        )
    if not names or names[0] != "message_start" or names[-1] != "message_stop":
        raise StreamError(f"expected message_start … message_stop, got {names[:1]} … {names[-1:]}")
    for event in events:
        block = event.data.get("content_block", {}) if event.name == "content_block_start" else {}
        if block.get("type") == "tool_use" and block.get("input") != {}:
            raise StreamError("a tool_use block must start with input {} and send it as input_json_delta")
    try:
        return assemble_stream(event.data for event in events if event.name != "ping")
    except json.JSONDecodeError as error:
        raise StreamError(f"tool input is not valid JSON: {error}") from None


def _refusal(reply: Reply) -> str:
    message = reply.error_message()
    if reply.status == 401:
        return f"HTTP 401 {message}: Claude Code's ANTHROPIC_AUTH_TOKEN must be what `mlxd token show` prints"
    if reply.status == 404 and "model" in message:
        return f"HTTP 404 {message}: set ANTHROPIC_DEFAULT_*_MODEL to a model the daemon serves"
    return f"HTTP {reply.status} {message}"


def _prompt_tokens(usage: dict[str, int]) -> int:
    return (
        usage.get("input_tokens", 0)
        + usage.get("cache_read_input_tokens", 0)
        + usage.get("cache_creation_input_tokens", 0)
    )
