"""The pure wire layer on literal JSON: events in, Anthropic stream events and Messages out."""

from __future__ import annotations

import json

from daemon.anthropic.stream import MessageStream, assemble, encode_sse, thinking_signature
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


def run(stream: MessageStream, events: list[GenerationEvent]) -> list[dict]:
    """The stream events of a generation admitted with a prompt of 7 tokens, then `events`."""
    frames: list[dict] = []
    for event in [Started(Usage(prompt_tokens=7)), *events]:
        frames += stream.events(event)
    return frames


def test_text_then_tool_call_stream() -> None:
    stream = MessageStream("m")
    frames = run(
        stream,
        [
            BlockStart("text"),
            BlockDelta("Let me "),
            BlockDelta("check."),
            BlockStop(),
            BlockStart("tool_use", "Read"),
            BlockDelta('{"path": '),
            BlockDelta('"/a"}'),
            BlockStop(),
            Finished("tool_use", Usage(prompt_tokens=7, output_tokens=9)),
        ],
    )
    assert [f["type"] for f in frames] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    tool_start = frames[5]
    assert tool_start["index"] == 1
    assert tool_start["content_block"]["input"] == {} and tool_start["content_block"]["name"] == "Read"
    assert tool_start["content_block"]["id"].startswith("toolu_")
    assert frames[6]["delta"] == {"type": "input_json_delta", "partial_json": '{"path": '}
    message = assemble(frames)
    assert message["content"] == [
        {"type": "text", "text": "Let me check."},
        {
            "type": "tool_use",
            "id": tool_start["content_block"]["id"],
            "name": "Read",
            "input": {"path": "/a"},
        },
    ]
    assert message["stop_reason"] == "tool_use" and message["stop_sequence"] is None
    assert message["usage"] == {
        "input_tokens": 7,
        "output_tokens": 9,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }


def test_started_is_message_start_unless_one_was_sent() -> None:
    stream = MessageStream("m")
    [start] = stream.events(Started(Usage(prompt_tokens=7)))
    assert start["type"] == "message_start"
    assert start["message"]["id"] == stream.message_id and start["message"]["content"] == []
    assert start["message"]["usage"]["input_tokens"] == 7
    estimated = MessageStream("m")
    estimated.message_start(Usage(prompt_tokens=7))
    assert estimated.events(Started(Usage(prompt_tokens=7))) == []


def test_usage_splits_the_prompt_only_with_cache_fields() -> None:
    usage = Usage(prompt_tokens=100, cached_tokens=60, stored_tokens=30, output_tokens=5)
    assert MessageStream("m", cache_fields=True).usage(usage) == {
        "input_tokens": 10,
        "output_tokens": 5,
        "cache_read_input_tokens": 60,
        "cache_creation_input_tokens": 30,
    }
    assert MessageStream("m", cache_fields=False).usage(usage) == {
        "input_tokens": 100,
        "output_tokens": 5,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }


def test_thinking_block_ends_with_its_signature() -> None:
    frames = run(MessageStream("m"), [BlockStart("thinking"), BlockDelta("Hmm."), BlockStop()])
    assert frames[1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert frames[2]["delta"] == {"type": "thinking_delta", "thinking": "Hmm."}
    assert frames[3]["delta"] == {"type": "signature_delta", "signature": thinking_signature("Hmm.")}
    assert frames[4] == {"type": "content_block_stop", "index": 0}
    assert assemble(frames)["content"] == [
        {"type": "thinking", "thinking": "Hmm.", "signature": thinking_signature("Hmm.")}
    ]


def test_omitted_thinking_keeps_the_block_without_text() -> None:
    frames = run(
        MessageStream("m", omit_thinking=True), [BlockStart("thinking"), BlockDelta("secret"), BlockStop()]
    )
    assert "secret" not in json.dumps(frames)
    assert assemble(frames)["content"][0]["thinking"] == ""


def test_failure_becomes_an_error_event() -> None:
    assert MessageStream("m").events(Failed("busy", overloaded=True)) == [
        {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    ]
    assert MessageStream("m").events(Failed("broke"))[0]["error"]["type"] == "api_error"


def test_sse_frame_format() -> None:
    frame = encode_sse({"type": "message_stop"})
    assert frame == b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    assert encode_sse({"type": "x", "t": "é"}).decode().count("é") == 1
