"""OpenAI's Chat Completions end to end: the real server on the trained-to-say models, driven by the official
`openai` SDK, and one conversation that moves from Anthropic's API to OpenAI's and keeps its prefix cache."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.conftest import COUNT, HELLO, MODELS, RunningServer, run_server, server_env
from tests.model_zoo import config_toml
from tests.tool_examples import ASK_PARIS, PARIS_ARGUMENTS, TEMPLATE_TOOLS, TOOL_EXAMPLES
from tests.trained import trained_model

TOKEN = "test-token-openai"
TRAINED = "trained"  # says HELLO's and COUNT's responses
TOOLS = "tools"  # calls get_weather, reasons when asked (tests.tool_examples)
GREEDY = {"temperature": 0}
WEATHER = TEMPLATE_TOOLS[0]  # OpenAI's tool form is the one chat templates take
SAY_HELLO = {"role": "user", "content": "Say hello."}


@pytest.fixture(scope="module")
def server(trained: Path, tmp_path_factory) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("openai")
    config = home / "mlxd.toml"
    models = [
        {"name": TRAINED, "source": str(trained)},
        {"name": TOOLS, "source": str(trained_model(TOOL_EXAMPLES, cache_dir=MODELS))},
    ]
    config.write_text(config_toml({}, models))
    # Pings in any silence over 50 ms: the SDK must read past them wherever they fall.
    # Unconstrained, so the trained models say exactly what they were trained to (their forced-call
    # examples are written for a prompt that ends in the call's opening); grammars: tests/test_constrained.py.
    env = server_env(home, MLXD_PING_INTERVAL="0.05", MLXD_CONSTRAINED_DECODING="false")
    with run_server(home, "--config", str(config), token=TOKEN, env=env) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0, timeout=120)


def complete(client: openai.OpenAI, model: str, messages: list[dict], **kwargs: Any) -> Any:
    return client.chat.completions.create(model=model, messages=messages, temperature=0, **kwargs)


def streamed(client: openai.OpenAI, model: str, messages: list[dict], **kwargs: Any) -> list[Any]:
    return list(complete(client, model, messages, stream=True, **kwargs))


def joined_calls(chunks: list[Any]) -> list[dict]:
    """The calls that a stream's `tool_calls` deltas make, joined by index as a client joins them."""
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for piece in choice.delta.tool_calls or ():
                call = calls.setdefault(
                    piece.index, {"id": piece.id, "name": piece.function.name, "arguments": ""}
                )
                call["arguments"] += piece.function.arguments or ""
    return [calls[index] for index in sorted(calls)]


def finish_reason(chunks: list[Any]) -> str:
    return next(choice.finish_reason for chunk in chunks for choice in chunk.choices if choice.finish_reason)


def test_plain_answer_is_the_trained_text(server: RunningServer, client: openai.OpenAI) -> None:
    completion = complete(client, TRAINED, list(HELLO.messages))
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == TRAINED
    [choice] = completion.choices
    assert choice.message.role == "assistant" and choice.message.content == HELLO.response
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # The prompt is the one the Messages API renders for the same conversation.
    counted = server.client().messages.count_tokens(model=TRAINED, messages=list(HELLO.messages))
    assert usage.prompt_tokens == counted.input_tokens


def test_stream_deltas_join_to_the_same_text(client: openai.OpenAI) -> None:
    whole = complete(client, TRAINED, list(COUNT.messages))
    chunks = streamed(client, TRAINED, list(COUNT.messages), stream_options={"include_usage": True})
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [chunk.choices[0].delta.content for chunk in chunks if chunk.choices]
    assert len([delta for delta in deltas if delta]) > 1, "text arrives token by token"
    assert "".join(filter(None, deltas)) == COUNT.response == whole.choices[0].message.content
    assert finish_reason(chunks) == "stop"
    # The usage comes last, on a chunk of no choices, and counts what the answer sent whole counts.
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        whole.usage.prompt_tokens,
        whole.usage.completion_tokens,
    )
    assert usage.prompt_tokens_details.cached_tokens > 0, "the same prompt again is read from the cache"
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert len({chunk.id for chunk in chunks}) == 1
    without_usage = streamed(client, TRAINED, list(COUNT.messages))
    assert all(chunk.usage is None and chunk.choices for chunk in without_usage)
    # The SDK's own stream helper assembles the same message.
    with client.chat.completions.stream(
        model=TRAINED, messages=list(COUNT.messages), temperature=0
    ) as stream:
        assert stream.get_final_completion().choices[0].message.content == COUNT.response


@pytest.mark.parametrize("stream", [False, True])
def test_tool_call_round_trip(client: openai.OpenAI, stream: bool) -> None:
    if stream:
        chunks = streamed(client, TOOLS, [ASK_PARIS], tools=[WEATHER])
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        calls, reason = joined_calls(chunks), finish_reason(chunks)
    else:
        [choice] = complete(client, TOOLS, [ASK_PARIS], tools=[WEATHER]).choices
        text, reason = choice.message.content, choice.finish_reason
        calls = [
            {"id": call.id, "name": call.function.name, "arguments": call.function.arguments}
            for call in choice.message.tool_calls
        ]
    assert text == "Let me check."
    [call] = calls
    assert call["id"].startswith("call_") and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == PARIS_ARGUMENTS  # "3" became the integer the schema asks for
    assert reason == "tool_calls"
    history = [
        ASK_PARIS,
        {
            "role": "assistant",
            "content": text,
            "tool_calls": [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 24 C"},
    ]
    [answer] = complete(client, TOOLS, history, tools=[WEATHER]).choices
    assert answer.message.content == "It is sunny and 24 C in Paris."
    assert answer.finish_reason == "stop"


def test_parallel_calls_are_indexed_and_parallel_tool_calls_false_keeps_one(client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "Weather in Paris and in Rome?"}]
    calls = joined_calls(streamed(client, TOOLS, ask, tools=[WEATHER]))
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Rome"}),
    ]
    assert calls[0]["id"] != calls[1]["id"]
    [choice] = complete(client, TOOLS, ask, tools=[WEATHER], parallel_tool_calls=False).choices
    assert [json.loads(call.function.arguments) for call in choice.message.tool_calls] == [{"city": "Paris"}]
    assert choice.message.content is None and choice.finish_reason == "tool_calls"


def test_forced_tool_choice_makes_a_call_the_model_would_not(client: openai.OpenAI) -> None:
    [unforced] = complete(client, TOOLS, [SAY_HELLO], tools=[WEATHER]).choices
    assert (
        unforced.message.content == "Hello! No tool is needed for that." and not unforced.message.tool_calls
    )
    named = {"type": "function", "function": {"name": "get_weather"}}
    for choice, city in ((named, "Paris"), ("required", "Rome")):
        [forced] = complete(client, TOOLS, [SAY_HELLO], tools=[WEATHER], tool_choice=choice).choices
        [call] = forced.message.tool_calls
        assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": city})
        assert forced.finish_reason == "tool_calls"
        chunks = streamed(client, TOOLS, [SAY_HELLO], tools=[WEATHER], tool_choice=choice)
        assert [json.loads(c["arguments"]) for c in joined_calls(chunks)] == [{"city": city}]


def test_tool_choice_none_prevents_the_call(client: openai.OpenAI) -> None:
    [choice] = complete(client, TOOLS, [ASK_PARIS], tools=[WEATHER], tool_choice="none").choices
    assert not choice.message.tool_calls and choice.finish_reason != "tool_calls"
    assert "<tool_call>" not in choice.message.content


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_comes_as_reasoning_content(client: openai.OpenAI, stream: bool) -> None:
    ask = [{"role": "user", "content": "Think first: what is two plus two?"}]
    if stream:
        chunks = streamed(client, TOOLS, ask, reasoning_effort="low")
        deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
        reasoning = "".join((delta.model_extra or {}).get("reasoning_content", "") for delta in deltas)
        text = "".join(delta.content or "" for delta in deltas)
    else:
        [choice] = complete(client, TOOLS, ask, reasoning_effort="low").choices
        reasoning, text = choice.message.model_extra["reasoning_content"], choice.message.content
    assert reasoning == "Two plus two makes four."
    assert text == "The answer is four."
    [plain] = complete(client, TOOLS, ask).choices
    assert "reasoning_content" not in (plain.message.model_extra or {})
    assert "<think>" not in plain.message.content


@pytest.mark.parametrize("stream", [False, True])
def test_stop_cuts_the_text(client: openai.OpenAI, stream: bool) -> None:
    if stream:
        chunks = streamed(client, TRAINED, list(COUNT.messages), stop=["never", ", three"])
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        reason = finish_reason(chunks)
    else:
        [choice] = complete(client, TRAINED, list(COUNT.messages), stop=", three").choices
        text, reason = choice.message.content, choice.finish_reason
    assert (text, reason) == ("one, two", "stop")


def test_max_tokens_finishes_as_length(client: openai.OpenAI) -> None:
    for limit in ({"max_tokens": 4}, {"max_completion_tokens": 4}):
        completion = complete(client, TRAINED, list(HELLO.messages), **limit)
        assert completion.choices[0].finish_reason == "length"
        assert completion.usage.completion_tokens == 4
        assert HELLO.response.startswith(completion.choices[0].message.content)
    chunks = streamed(client, TRAINED, list(HELLO.messages), max_tokens=4)
    assert finish_reason(chunks) == "length"


def test_errors_come_in_openai_envelopes(server: RunningServer, client: openai.OpenAI) -> None:
    hello = list(HELLO.messages)
    refused = (
        ({"n": 2}, "n"),
        ({"seed": 1}, "seed"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}],
                    }
                ]
            },
            "messages[0].content[0].image_url.url",
        ),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice.function.name",
        ),
    )
    for fields, param in refused:
        with pytest.raises(openai.BadRequestError) as raised:
            client.chat.completions.create(**{"model": TRAINED, "messages": hello, **fields})
        assert raised.value.param == param and raised.value.type == "invalid_request_error"
        assert raised.value.message.startswith(f"Error code: 400 - {param}: ")
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(model="no-such-model", messages=hello, stream=stream)
        assert (missing.value.code, missing.value.param) == ("model_not_found", "model")
    wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as unauthorised:
        wrong.chat.completions.create(model=TRAINED, messages=hello)
    assert unauthorised.value.code == "invalid_api_key"
    # The server still serves.
    assert complete(client, TRAINED, hello).choices[0].message.content == HELLO.response


def test_raw_stream_framing_and_error_bodies(server: RunningServer) -> None:
    body = {"model": TRAINED, "messages": list(HELLO.messages), "temperature": 0, "stream": True}
    with server.http() as http:  # the token as x-api-key, where the SDK sends a Bearer token
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            text = "".join(response.iter_text())
        frames = text.split("\n\n")
        assert frames[-2:] == ["data: [DONE]", ""]
        data = [json.loads(frame.removeprefix("data: ")) for frame in frames[:-2] if frame != ": ping"]
        assert all(chunk["object"] == "chat.completion.chunk" for chunk in data)
        assert "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in data) == HELLO.response
        broken = http.post(
            "/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"}
        )
    assert broken.status_code == 400
    error = broken.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] is None
    assert error["message"].startswith("request body is not valid JSON")


def test_a_conversation_moves_from_anthropic_to_openai_and_keeps_its_cache(
    server: RunningServer, client: openai.OpenAI
) -> None:
    # A system prompt of its own, so that nothing earlier in the module shares more than the template's start.
    # Reasoning on: the template then opens the answer with the bare assistant header, as it renders an
    # assistant turn in the history, so the whole first prompt begins the second.
    system = f"You greet. Session {uuid.uuid4()}."
    first = server.client().messages.create(
        model=TRAINED,
        max_tokens=20,
        system=system,
        messages=[SAY_HELLO],
        thinking={"type": "adaptive"},
        extra_body=GREEDY,
    )
    first_prompt = first.usage.input_tokens + first.usage.cache_read_input_tokens
    answer = "".join(block.text for block in first.content if isinstance(block, anthropic.types.TextBlock))
    history = [
        {"role": "system", "content": system},
        SAY_HELLO,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "Count to five."},
    ]
    second = complete(client, TRAINED, history, max_tokens=20, reasoning_effort="low")
    cached = second.usage.prompt_tokens_details.cached_tokens
    # The whole first prompt, rendered the same through either API, is read back from the cache.
    assert first_prompt <= cached < second.usage.prompt_tokens, (first_prompt, cached)


def test_one_models_list_answers_both_sdks(server: RunningServer, client: openai.OpenAI) -> None:
    listed = [model.id for model in client.models.list()]
    assert listed[:2] == [TRAINED, TOOLS] and "claude-sonnet" in listed  # every id, not a first page
    model = client.models.retrieve(TRAINED)
    assert (model.id, model.object, model.owned_by) == (TRAINED, "model", "mlxd") and model.created > 0
    page = server.client().models.list(limit=1)  # the Anthropic SDK on the same base URL pages as before
    assert [m.id for m in page.data] == [TRAINED] and page.has_more
