"""Tool use and thinking end to end, on a model trained to really emit calls and reasoning: the exact
blocks, streamed as Claude Code reads them, with no markup leaking into text."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import anthropic
import pytest

from tests.conftest import MODELS, RunningServer, run_server, server_env
from tests.tool_examples import GENERIC_CALL, PARIS_ARGUMENTS, PLAIN_TEMPLATE, TOOL_EXAMPLES, WEATHER
from tests.trained import TRAINED_SHAPE, trained_model

MODEL = "tools"
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[RunningServer]:
    model = trained_model(TOOL_EXAMPLES, cache_dir=MODELS)
    home = tmp_path_factory.mktemp("tools")
    # These tests read what the model writes, malformed calls and all: unconstrained, as for a format
    # without a grammar. Calls held to their grammars are tested in tests/test_constrained.py.
    env = server_env(home, MLXD_CONSTRAINED_DECODING="false")
    with run_server(home, "--model", str(model), "--model-name", MODEL, env=env) as running:
        yield running


def create(server: RunningServer, text: str, *, stream: bool, **kwargs) -> dict:
    """The response as a plain dict, through the SDK, streamed or not; with the raw stream events."""
    client = server.client()
    kwargs = {"model": MODEL, "max_tokens": 300, "extra_body": GREEDY, **kwargs}
    kwargs.setdefault("messages", [{"role": "user", "content": text}])
    if not stream:
        return {**client.messages.create(**kwargs).model_dump(exclude_none=True), "events": []}
    with client.messages.stream(**kwargs) as events_stream:
        events = [event.model_dump(exclude_none=True) for event in events_stream]
        message = events_stream.get_final_message().model_dump(exclude_none=True)
    for block in message["content"]:
        block.pop("parsed_output", None)
    return {**message, "events": events}


def no_markup(message: dict) -> None:
    for block in message["content"]:
        for marker in ("<tool_call>", "</tool_call>", "<think>", "</think>", "<|im_end|>"):
            assert marker not in block.get("text", ""), block


@pytest.mark.parametrize("stream", [False, True])
def test_text_then_a_call_with_coerced_and_nested_arguments(server: RunningServer, stream: bool) -> None:
    message = create(server, "What is the weather in Paris?", stream=stream, tools=[WEATHER])
    text, call = message["content"]
    assert text == {"type": "text", "text": "Let me check."}
    assert call["type"] == "tool_use" and call["id"].startswith("toolu_") and call["name"] == "get_weather"
    assert call["input"] == PARIS_ARGUMENTS  # "3" became the integer the schema asks for
    assert message["stop_reason"] == "tool_use"
    no_markup(message)
    if stream:
        starts = [e for e in message["events"] if e["type"] == "content_block_start"]
        assert starts[1]["content_block"]["input"] == {}
        pieces = [
            e["delta"]["partial_json"]
            for e in message["events"]
            if e["type"] == "content_block_delta" and e["delta"]["type"] == "input_json_delta"
        ]
        # One delta per argument as soon as its value is complete, each value whole, then the closing brace.
        assert pieces == [
            '{"city": "Paris"',
            ', "days": 3',
            ', "options": {"units": "metric", "hours": [6, 12]}',
            "}",
        ]
        assert json.loads("".join(pieces)) == PARIS_ARGUMENTS


@pytest.mark.parametrize("stream", [False, True])
def test_two_parallel_calls_are_two_blocks(server: RunningServer, stream: bool) -> None:
    message = create(server, "Weather in Paris and in Rome?", stream=stream, tools=[WEATHER])
    assert [(b["name"], b["input"]) for b in message["content"]] == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Rome"}),
    ]
    assert message["content"][0]["id"] != message["content"][1]["id"]
    assert message["stop_reason"] == "tool_use"


@pytest.mark.parametrize("stream", [False, True])
def test_a_call_closing_on_the_last_allowed_token_is_a_call(server: RunningServer, stream: bool) -> None:
    one_call = {"tools": [WEATHER], "tool_choice": {"type": "auto", "disable_parallel_tool_use": True}}
    whole = create(server, "What is the weather in Paris?", stream=False, **one_call)
    exact = whole["usage"]["output_tokens"]  # the call's closing marker is the last token of these
    message = create(server, "What is the weather in Paris?", stream=stream, max_tokens=exact, **one_call)
    assert [block["type"] for block in message["content"]] == ["text", "tool_use"]
    assert message["content"][1]["input"] == PARIS_ARGUMENTS
    assert message["stop_reason"] == "tool_use"
    assert message["usage"]["output_tokens"] == exact


def test_disable_parallel_tool_use_stops_after_the_first_call(server: RunningServer) -> None:
    choice = {"type": "auto", "disable_parallel_tool_use": True}
    message = create(
        server, "Weather in Paris and in Rome?", stream=True, tools=[WEATHER], tool_choice=choice
    )
    assert [(b["name"], b["input"]) for b in message["content"]] == [("get_weather", {"city": "Paris"})]
    assert message["stop_reason"] == "tool_use"


@pytest.mark.parametrize("stream", [False, True])
def test_malformed_call_comes_back_as_text_and_is_counted(server: RunningServer, stream: bool) -> None:
    message = create(server, "Call the tool badly.", stream=stream, tools=[WEATHER])
    assert message["content"] == [
        {"type": "text", "text": '<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>'}
    ]
    assert message["stop_reason"] == "end_turn"
    with server.http() as http:
        metrics = http.get("/metrics").text
    assert f'mlxd_tool_call_parse_failures_total{{model="{MODEL}"}}' in metrics
    assert "could not parse a tool call" in server.log()


@pytest.mark.parametrize("stream", [False, True])
def test_tool_result_round_trip(server: RunningServer, stream: bool) -> None:
    first = create(server, "What is the weather in Paris?", stream=False, tools=[WEATHER])
    call = first["content"][1]
    history = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": first["content"]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "sunny, 24 C"}],
        },
    ]
    message = create(server, "", stream=stream, tools=[WEATHER], messages=history)
    assert message["content"] == [{"type": "text", "text": "It is sunny and 24 C in Paris."}]
    assert message["stop_reason"] == "end_turn"


def test_tool_choice_forces_a_call_the_model_would_not_make(server: RunningServer) -> None:
    unforced = create(server, "Say hello.", stream=False, tools=[WEATHER])
    assert unforced["content"] == [{"type": "text", "text": "Hello! No tool is needed for that."}]
    for choice, city in (({"type": "tool", "name": "get_weather"}, "Paris"), ({"type": "any"}, "Rome")):
        for stream in (False, True):
            forced = create(server, "Say hello.", stream=stream, tools=[WEATHER], tool_choice=choice)
            assert [(b["type"], b["name"], b["input"]) for b in forced["content"]] == [
                ("tool_use", "get_weather", {"city": city})
            ]
            assert forced["stop_reason"] == "tool_use"


def test_tool_choice_none_prevents_the_call(server: RunningServer) -> None:
    message = create(
        server, "What is the weather in Paris?", stream=False, tools=[WEATHER], tool_choice={"type": "none"}
    )
    assert all(block["type"] == "text" for block in message["content"])
    assert message["stop_reason"] != "tool_use"
    no_markup(message)


def test_tool_choice_and_thinking_are_validated(server: RunningServer) -> None:
    client = server.client()
    ask = {
        "model": MODEL,
        "max_tokens": 2000,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [WEATHER],
    }
    with pytest.raises(anthropic.BadRequestError, match=r"tool_choice\.name: tool 'nope' is not in tools"):
        client.messages.create(**ask, tool_choice={"type": "tool", "name": "nope"})
    with pytest.raises(
        anthropic.BadRequestError, match="thinking: may not be enabled when tool_choice forces"
    ):
        client.messages.create(
            **ask, tool_choice={"type": "any"}, thinking={"type": "enabled", "budget_tokens": 1024}
        )
    with pytest.raises(anthropic.BadRequestError, match=r"tools\.0\.input_schema"):
        client.messages.create(**{**ask, "tools": [{"name": "bare"}]})


THINKING = {"type": "enabled", "budget_tokens": 1024}


@pytest.mark.parametrize("stream", [False, True])
def test_thinking_then_text(server: RunningServer, stream: bool) -> None:
    message = create(
        server, "Think first: what is two plus two?", stream=stream, thinking=THINKING, max_tokens=2000
    )
    thinking, text = message["content"]
    assert thinking["type"] == "thinking" and thinking["thinking"] == "Two plus two makes four."
    assert thinking["signature"]
    assert text == {"type": "text", "text": "The answer is four."}
    assert message["stop_reason"] == "end_turn"
    no_markup(message)
    if stream:
        kinds = [
            e["delta"]["type"]
            for e in message["events"]
            if e["type"] == "content_block_delta" and e["index"] == 0
        ]
        assert set(kinds[:-1]) == {"thinking_delta"} and kinds[-1] == "signature_delta"


def test_thinking_display_omitted_keeps_the_block_without_its_text(server: RunningServer) -> None:
    thinking = {"type": "adaptive", "display": "omitted"}
    message = create(
        server, "Think first: what is two plus two?", stream=True, thinking=thinking, max_tokens=2000
    )
    assert message["content"][0]["type"] == "thinking" and message["content"][0]["thinking"] == ""
    assert message["content"][0]["signature"]
    assert message["content"][1] == {"type": "text", "text": "The answer is four."}


def test_no_thinking_block_unless_asked(server: RunningServer) -> None:
    message = create(server, "Think first: what is two plus two?", stream=False)
    assert all(block["type"] == "text" for block in message["content"])
    no_markup(message)


def test_thinking_past_its_budget_is_closed_and_the_answer_follows(tiny_model: Path, tmp_path: Path) -> None:
    # The endless model never closes its reasoning by itself: only the budget can.
    with run_server(
        tmp_path, "--model", str(tiny_model), "--model-name", "tiny", env=server_env(tmp_path)
    ) as server:
        messages = [{"role": "user", "content": "Think."}, {"role": "assistant", "content": "<think>\n"}]
        reply = server.client().messages.create(
            model="tiny", max_tokens=1100, messages=messages, thinking=THINKING, extra_body=GREEDY
        )
    assert [block.type for block in reply.content] == ["thinking", "text"]
    assert reply.stop_reason == "max_tokens" and reply.usage.output_tokens == 1100
    assert "<think>" not in reply.content[1].text and "</think>" not in reply.content[1].text


def test_a_template_without_tools_still_gets_them_in_the_generic_form(tmp_path: Path) -> None:
    shape = replace(TRAINED_SHAPE, chat_template=PLAIN_TEMPLATE)
    model = trained_model((GENERIC_CALL,), shape=shape, cache_dir=MODELS)
    with run_server(tmp_path, "--model", str(model), "--model-name", "plain") as server:
        reply = server.client().messages.create(
            model="plain",
            max_tokens=100,
            tools=[WEATHER],
            messages=[{"role": "user", "content": "What is the weather in Oslo?"}],
            extra_body=GREEDY,
        )
    assert [(b.type, b.name, b.input) for b in reply.content] == [
        ("tool_use", "get_weather", {"city": "Oslo"})
    ]
    assert reply.stop_reason == "tool_use"
