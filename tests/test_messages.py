"""The Messages API end to end: the real server on a trained-to-say model, driven by the official SDK."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest
from mlx_lm import load

from tests.conftest import COUNT, HELLO, RunningServer, run_server

TOKEN = "test-token-123"
MODEL = "trained"


@pytest.fixture(scope="module")
def server(trained: Path, tmp_path_factory) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("messages")
    with run_server(home, "--model", str(trained), "--model-name", MODEL, token=TOKEN) as running:
        yield running


@pytest.fixture(scope="module")
def tokenizer(trained: Path):
    return load(str(trained))[1]


def ask(client: anthropic.Anthropic, example, **kwargs) -> anthropic.types.Message:
    system = [m["content"] for m in example.messages if m["role"] == "system"]
    messages = [m for m in example.messages if m["role"] != "system"]
    if system:
        kwargs["system"] = system[0]
    kwargs.setdefault("max_tokens", 200)
    return client.messages.create(model=MODEL, messages=messages, extra_body={"temperature": 0}, **kwargs)


def prompt_tokens(usage) -> int:
    """Anthropic splits the prompt into tokens read from the cache, written to it, and the rest."""
    return usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens


def test_non_streaming_answer_is_the_trained_text(server: RunningServer, tokenizer) -> None:
    message = ask(server.client(), HELLO)
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == HELLO.response
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    assert message.model == MODEL
    assert message.id.startswith("msg_")
    # Every response token plus the end-of-turn token the model generated.
    assert message.usage.output_tokens == len(tokenizer.encode(HELLO.response, add_special_tokens=False)) + 1
    counted = server.client().messages.count_tokens(model=MODEL, messages=list(HELLO.messages))
    assert prompt_tokens(message.usage) == counted.input_tokens


def test_streaming_assembles_to_the_non_streaming_answer(server: RunningServer) -> None:
    client = server.client()
    whole = ask(client, COUNT)
    system = COUNT.messages[0]["content"]
    with client.messages.stream(
        model=MODEL,
        system=system,
        messages=[COUNT.messages[1]],
        max_tokens=200,
        extra_body={"temperature": 0},
    ) as stream:
        deltas = list(stream.text_stream)
        streamed = stream.get_final_message()
    assert len(deltas) > 1, "text arrives token by token"
    assert "".join(deltas) == COUNT.response
    assert [b.model_dump(exclude={"parsed_output"}) for b in streamed.content] == [
        b.model_dump() for b in whole.content
    ]
    assert streamed.stop_reason == whole.stop_reason == "end_turn"
    assert streamed.usage.output_tokens == whole.usage.output_tokens
    assert prompt_tokens(streamed.usage) == prompt_tokens(whole.usage)


def test_stop_sequence_cuts_the_text_and_is_named(server: RunningServer) -> None:
    for stream in (False, True):
        client = server.client()
        if stream:
            with client.messages.stream(
                model=MODEL,
                system=COUNT.messages[0]["content"],
                messages=[COUNT.messages[1]],
                max_tokens=200,
                extra_body={"temperature": 0},
                stop_sequences=["never", ", three"],
            ) as s:
                message = s.get_final_message()
        else:
            message = ask(client, COUNT, stop_sequences=["never", ", three"])
        assert message.content[0].text == "one, two"
        assert message.stop_reason == "stop_sequence"
        assert message.stop_sequence == ", three"


def test_max_tokens_ends_on_the_exact_token(server: RunningServer, tokenizer) -> None:
    message = ask(server.client(), HELLO, max_tokens=4)
    ids = tokenizer.encode(HELLO.response, add_special_tokens=False)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 4
    assert message.content[0].text == tokenizer.decode(ids[:4])


def test_max_tokens_beyond_the_context_is_clamped(server: RunningServer) -> None:
    message = ask(server.client(), HELLO, max_tokens=128000)
    assert message.content[0].text == HELLO.response


def test_max_tokens_zero_returns_no_content(server: RunningServer) -> None:
    message = ask(server.client(), HELLO, max_tokens=0)
    assert message.content == []
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 0


def test_assistant_prefill_is_continued_not_repeated(server: RunningServer) -> None:
    prefix = "Hello! I am"
    messages = [*HELLO.messages, {"role": "assistant", "content": prefix}]
    message = server.client().messages.create(
        model=MODEL, messages=messages, max_tokens=100, extra_body={"temperature": 0}
    )
    assert message.content[0].text == HELLO.response[len(prefix) :]


def test_count_tokens_equals_the_prompt_the_model_processes(server: RunningServer) -> None:
    client = server.client()
    counted = client.messages.count_tokens(model=MODEL, messages=list(HELLO.messages))
    message = ask(client, HELLO)
    assert counted.input_tokens == prompt_tokens(message.usage)
    tool = {"name": "lookup", "description": "Looks a word up.", "input_schema": {"type": "object"}}
    with_tools = client.messages.count_tokens(model=MODEL, messages=list(HELLO.messages), tools=[tool])
    with_system = client.messages.count_tokens(model=MODEL, messages=list(HELLO.messages), system="Be brief.")
    assert with_tools.input_tokens > counted.input_tokens
    assert with_system.input_tokens > counted.input_tokens


def test_both_token_headers_are_accepted(server: RunningServer) -> None:
    bearer = anthropic.Anthropic(base_url=server.url, auth_token=TOKEN, api_key=None, max_retries=0)
    api_key = anthropic.Anthropic(
        base_url=server.url, api_key=None, default_headers={"x-api-key": TOKEN}, max_retries=0
    )
    for client in (bearer, api_key):
        assert ask(client, HELLO).content[0].text == HELLO.response


def test_wrong_or_missing_token_is_refused(server: RunningServer) -> None:
    wrong = anthropic.Anthropic(base_url=server.url, api_key="nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as raised:
        ask(wrong, HELLO)
    assert raised.value.body["error"]["type"] == "authentication_error"
    with server.http() as http:
        response = http.post("/v1/messages", json={}, headers={"x-api-key": ""})
    assert response.status_code == 401
    assert "missing token" in response.json()["error"]["message"]


def test_concurrent_requests_all_get_their_own_answer(server: RunningServer) -> None:
    results: dict[int, str] = {}

    def run(i: int) -> None:
        example = (HELLO, COUNT)[i % 2]
        results[i] = ask(server.client(), example).content[0].text

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {i: (HELLO, COUNT)[i % 2].response for i in range(6)}
