"""Anthropic messages to chat-template messages, on literal requests translated to chat requests."""

from __future__ import annotations

from typing import Any

from daemon.anthropic.requests import CountTokensRequest
from daemon.anthropic.translate import to_chat
from daemon.chat.request import ChatRequest
from daemon.engine.prompt import chat_messages, tool_definitions


def request(**body: Any) -> ChatRequest:
    return to_chat(CountTokensRequest.model_validate({"model": "m", **body}))


def test_agent_history_becomes_tool_calls_and_tool_messages() -> None:
    converted = chat_messages(
        request(
            system=[{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
            messages=[
                {"role": "user", "content": "read it"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "plan", "signature": "s"},
                        {"type": "text", "text": "Reading."},
                        {"type": "tool_use", "id": "t1", "name": "Read", "input": {"path": "/a"}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": "data", "is_error": True},
                        {"type": "text", "text": "thanks"},
                    ],
                },
                {"role": "system", "content": "late note"},
            ],
        )
    )
    assert converted == [
        {"role": "system", "content": "A\n\nB"},
        {"role": "user", "content": "read it"},
        {
            "role": "assistant",
            "content": "Reading.",
            "reasoning_content": "plan",
            "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "Read", "arguments": {"path": "/a"}}}
            ],
        },
        {"role": "tool", "tool_call_id": "t1", "content": "Error: data"},
        {"role": "user", "content": "thanks"},
        {"role": "system", "content": "late note"},
    ]


def test_consecutive_user_turns_merge() -> None:
    converted = chat_messages(
        request(
            messages=[
                {"role": "user", "content": "a"},
                {"role": "user", "content": [{"type": "text", "text": "b"}]},
            ]
        )
    )
    assert converted == [{"role": "user", "content": "a\n\nb"}]


def test_tools_take_the_template_form() -> None:
    tools = tool_definitions(
        request(
            messages=[{"role": "user", "content": "x"}],
            tools=[{"name": "Read", "description": "Reads.", "input_schema": {"type": "object"}}],
        )
    )
    assert tools == [
        {
            "type": "function",
            "function": {"name": "Read", "description": "Reads.", "parameters": {"type": "object"}},
        }
    ]


def test_a_turn_with_nothing_to_show_still_takes_its_place() -> None:
    # Found by the fuzz: a user turn of only redacted thinking left no messages to render at all.
    converted = chat_messages(
        request(messages=[{"role": "user", "content": [{"type": "redacted_thinking", "data": "x"}]}])
    )
    assert converted == [{"role": "user", "content": ""}]
