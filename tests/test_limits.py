"""Bad input and the bounds of `daemon.chat.limits` over the wire: a 400 envelope naming the field or the
bound, the server serving on; a request just within every bound is accepted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.anthropic.requests import MessagesRequest, check_containers
from daemon.chat.limits import (
    MAX_BLOCKS,
    MAX_BLOCKS_PER_MESSAGE,
    MAX_BODY_CONTAINERS,
    MAX_BODY_DEPTH,
    MAX_MESSAGES,
    MAX_SCHEMA_BYTES,
    MAX_SCHEMA_DEPTH,
    MAX_STOP_SEQUENCE_CHARS,
    MAX_STOP_SEQUENCES,
    MAX_TOOL_DESCRIPTION_CHARS,
    MAX_TOOLS,
    MAX_TOP_K,
    MAX_VALUE_DEPTH,
)
from daemon.engine.model import PreparedModel, least_tokens, prepare_model
from tests.conftest import RunningServer, run_server

MODEL = "tiny"
CONTEXT = 512
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("limits")
    args = ("--model", str(tiny_model), "--model-name", MODEL, "--context-length", str(CONTEXT))
    with run_server(home, *args) as running:
        yield running


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with server.http() as client:
        yield client
    # Whatever a test sent, the server must still answer a normal request afterwards.
    with server.http() as client:
        assert client.post("/v1/messages", json=body(max_tokens=2)).status_code == 200


def body(**overrides) -> dict:
    return {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "Hello"}], **overrides}


def with_raw(field: str, value: str) -> bytes:
    """The body with `field` set to JSON text that Python's json would not write (NaN, 1e400, ...)."""
    return json.dumps(body(**{field: "@"})).replace('"@"', value).encode()


def nested_object(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def tool(name: str = "get", **overrides) -> dict:
    return {"name": name, "input_schema": {"type": "object"}, **overrides}


def blocks(n: int) -> list[dict]:
    return [{"type": "text", "text": "x"}] * n


def assert_refused(response: httpx.Response, field: str, *also: str) -> None:
    """A 400 envelope whose message starts with the field's path and mentions each of `also`."""
    assert response.status_code == 400, response.text[:500]
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert error["request_id"] == response.headers["request-id"]
    message = error["error"]["message"]
    assert message.startswith(f"{field}:"), message
    for text in also:
        assert text in message, message


def post(http: httpx.Client, request: dict | bytes, path: str = "/v1/messages") -> httpx.Response:
    content = request if isinstance(request, bytes) else json.dumps(request).encode()
    return http.post(path, content=content, headers=JSON)


@pytest.mark.parametrize("top_k", [100_000, MAX_TOP_K])
def test_top_k_past_the_vocabulary_is_no_filter(http: httpx.Client, top_k: int) -> None:
    response = post(http, body(top_k=top_k, temperature=1))
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["output_tokens"] == 4


BAD_NUMBERS = [
    ("top_k", str(MAX_TOP_K + 1), str(MAX_TOP_K)),
    ("top_k", "1" + "0" * 30, str(MAX_TOP_K)),
    ("top_k", "1.5", "integer"),
    ("top_k", '"5"', "integer"),
    ("temperature", "NaN", "finite"),
    ("temperature", "Infinity", "finite"),
    ("top_p", "-Infinity", "finite"),
    ("temperature", "1e400", "finite"),
    ("top_p", "1" + "0" * 400, "finite"),
    ("temperature", "true", "number"),
    ("top_p", '"0.5"', "number"),
    ("max_tokens", "true", "integer"),
    ("max_tokens", "9" * 5000, "number out of range"),
    ("stream", "1", "boolean"),
]


@pytest.mark.parametrize(
    ("field", "value", "named"), BAD_NUMBERS, ids=[f"{f}={v[:12]}" for f, v, _ in BAD_NUMBERS]
)
def test_numbers_must_be_finite_json_numbers_of_their_kind(
    http: httpx.Client, field: str, value: str, named: str
) -> None:
    response = post(http, with_raw(field, value))
    if named == "number out of range":  # too long for the parser: no field to name
        assert response.status_code == 400 and named in response.json()["error"]["message"]
    else:
        assert_refused(response, field, named)


def test_free_form_values_must_be_finite_too(http: httpx.Client) -> None:
    raw = json.dumps(body(metadata={"user_id": "@"})).replace('"@"', "NaN").encode()
    assert_refused(post(http, raw), "metadata", "NaN")


BAD_TOOLS = [
    ("tools.0.name", body(tools=[tool("get weather")]), "^[a-zA-Z0-9_-]{1,128}$"),
    ("tools.0.name", body(tools=[tool("a" * 129)]), "^[a-zA-Z0-9_-]{1,128}$"),
    ("tools.0.name", body(tools=[tool('say"hi')]), "^[a-zA-Z0-9_-]{1,128}$"),
    ("tools.0.name", body(tools=[tool("")]), "^[a-zA-Z0-9_-]{1,128}$"),
    ("tools.2.name", body(tools=[tool("get"), tool("put"), tool("get")]), "tools.0"),
    ("tool_choice.name", body(tools=[tool()], tool_choice={"type": "tool", "name": "g\u00e9t"}), "pattern"),
]


@pytest.mark.parametrize(("field", "request_body", "named"), BAD_TOOLS, ids=[b[0] for b in BAD_TOOLS])
def test_tool_names_follow_the_api_rule_and_are_unique(
    http: httpx.Client, field: str, request_body: dict, named: str
) -> None:
    assert_refused(post(http, request_body), field, named)


def test_the_longest_tool_name_is_accepted(http: httpx.Client) -> None:
    response = post(http, body(tools=[tool("a" * 128)], tool_choice={"type": "tool", "name": "a" * 128}))
    assert response.status_code == 200, response.text


EMPTY_CONTENT = [
    ("messages.0", [{"role": "user", "content": []}]),
    ("messages.0", [{"role": "system", "content": []}]),
    ("messages.0", [{"role": "assistant", "content": []}, {"role": "user", "content": "x"}]),
    ("messages.1", [{"role": "user", "content": "x"}, {"role": "user", "content": []}]),
]


@pytest.mark.parametrize(
    ("field", "messages"), EMPTY_CONTENT, ids=[f"{f}-{m[-1]['role']}" for f, m in EMPTY_CONTENT]
)
@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_empty_content_is_refused_as_the_api_does(
    http: httpx.Client, field: str, messages: list, path: str
) -> None:
    response = post(http, body(messages=messages, system="A system prompt."), path)
    assert_refused(response, field, "non-empty content except for the optional final assistant message")


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": []}],
        [{"role": "assistant", "content": []}],
        [{"role": "user", "content": [{"type": "text", "text": ""}]}],
        [{"role": "assistant", "content": "Only a prefill."}],
        [{"role": "system", "content": "Only a system turn."}],
    ],
    ids=["final-assistant-empty", "only-assistant-empty", "empty-text", "assistant-only", "system-only"],
)
def test_conversations_with_little_in_them_are_answered(http: httpx.Client, messages: list) -> None:
    assert post(http, body(messages=messages)).status_code == 200
    counted = post(http, {"model": MODEL, "messages": messages}, "/v1/messages/count_tokens")
    assert counted.status_code == 200 and counted.json()["input_tokens"] > 0


@pytest.mark.parametrize("limit", ["²", "\uff15", "9" * 5000, "1e3", " 5"])
def test_models_limit_is_ascii_digits_in_range(http: httpx.Client, limit: str) -> None:
    assert_refused(http.get("/v1/models", params={"limit": limit}), "limit", "1 to 1000")


OVER_BOUNDS = [
    ("messages", body(messages=[{"role": "user", "content": "x"}] * (MAX_MESSAGES + 1)), MAX_MESSAGES),
    (
        "messages.0.content",
        body(messages=[{"role": "user", "content": blocks(MAX_BLOCKS_PER_MESSAGE + 1)}]),
        MAX_BLOCKS_PER_MESSAGE,
    ),
    ("system", body(system=blocks(MAX_BLOCKS_PER_MESSAGE + 1)), MAX_BLOCKS_PER_MESSAGE),
    (
        "messages",
        body(
            messages=[{"role": "user", "content": blocks(MAX_BLOCKS_PER_MESSAGE)}]
            * (MAX_BLOCKS // MAX_BLOCKS_PER_MESSAGE),
            system=blocks(1),
        ),
        MAX_BLOCKS,
    ),
    ("tools", body(tools=[tool(f"t{i}") for i in range(MAX_TOOLS + 1)]), MAX_TOOLS),
    (
        "tools.0.description",
        body(tools=[tool(description="x" * (MAX_TOOL_DESCRIPTION_CHARS + 1))]),
        MAX_TOOL_DESCRIPTION_CHARS,
    ),
    (
        "tools.0.input_schema",
        body(tools=[tool(input_schema=nested_object(MAX_SCHEMA_DEPTH + 1))]),
        MAX_SCHEMA_DEPTH,
    ),
    (
        "tools.0.input_schema",
        body(tools=[tool(input_schema={"type": "object", "description": "x" * MAX_SCHEMA_BYTES})]),
        MAX_SCHEMA_BYTES,
    ),
    ("stop_sequences", body(stop_sequences=["x"] * (MAX_STOP_SEQUENCES + 1)), MAX_STOP_SEQUENCES),
    ("stop_sequences.0", body(stop_sequences=["x" * (MAX_STOP_SEQUENCE_CHARS + 1)]), MAX_STOP_SEQUENCE_CHARS),
    (
        "messages.0.content.0.input",
        body(
            messages=[
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": "t",
                            "name": "get",
                            "input": nested_object(MAX_VALUE_DEPTH + 1),
                        }
                    ],
                }
            ]
        ),
        MAX_VALUE_DEPTH,
    ),
    ("metadata", body(metadata=nested_object(MAX_VALUE_DEPTH + 1)), MAX_VALUE_DEPTH),
    ("context_management", body(context_management=nested_object(MAX_VALUE_DEPTH + 1)), MAX_VALUE_DEPTH),
]


@pytest.mark.parametrize(
    ("field", "request_body", "bound"), OVER_BOUNDS, ids=[f"{f}-{b}" for f, _, b in OVER_BOUNDS]
)
def test_a_request_past_a_bound_is_a_400_naming_it(
    http: httpx.Client, field: str, request_body: dict, bound: int
) -> None:
    assert_refused(post(http, request_body), field, str(bound))


@pytest.mark.parametrize("depth", [MAX_BODY_DEPTH + 1, 10_000])
@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_a_body_nested_past_the_parser_is_a_400(http: httpx.Client, depth: int, path: str) -> None:
    deep = b"[" * depth + b"]" * depth
    for request in (deep, b'{"model": "tiny", "metadata": ' + deep + b"}"):
        response = post(http, request, path)
        assert response.status_code == 400
        assert f"more than {MAX_BODY_DEPTH} levels deep" in response.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_a_body_of_too_many_arrays_is_refused_before_it_is_parsed(http: httpx.Client, path: str) -> None:
    arrays = ",".join(["[]"] * (MAX_BODY_CONTAINERS + 1)).encode()
    response = post(http, json.dumps(body(metadata="@")).encode().replace(b'"@"', b"[" + arrays + b"]"), path)
    assert_refused(response, "request body", str(MAX_BODY_CONTAINERS))


def test_a_request_at_every_bound_is_valid() -> None:
    """Within the bounds, exactly: validated as the server does, without a prompt of this size."""
    request = body(
        messages=[{"role": "user", "content": blocks(MAX_BLOCKS_PER_MESSAGE)}]
        * (MAX_BLOCKS // MAX_BLOCKS_PER_MESSAGE - 1)
        + [{"role": "user", "content": "x"}] * (MAX_BLOCKS_PER_MESSAGE - 1),
        system=blocks(1),
        tools=[
            tool(
                "a" * 128,
                description="x" * MAX_TOOL_DESCRIPTION_CHARS,
                input_schema=nested_object(MAX_SCHEMA_DEPTH),
            ),
            *(tool(f"t{i}") for i in range(MAX_TOOLS - 1)),
        ],
        stop_sequences=["x" * MAX_STOP_SEQUENCE_CHARS] * MAX_STOP_SEQUENCES,
        metadata=nested_object(MAX_VALUE_DEPTH),
        top_k=MAX_TOP_K,
    )
    assert len(json.dumps(request["tools"][0]["input_schema"])) < MAX_SCHEMA_BYTES
    check_containers(json.dumps(request).encode())
    parsed = MessagesRequest.model_validate_json(json.dumps(request))
    assert sum(len(m.content) for m in parsed.messages) + len(parsed.system) == MAX_BLOCKS
    many = json.dumps(body(messages=[{"role": "user", "content": "x"}] * MAX_MESSAGES))
    check_containers(many.encode())
    assert len(MessagesRequest.model_validate_json(many).messages) == MAX_MESSAGES


@pytest.fixture(scope="module", params=["as built", "NFC"])
def prepared(request: pytest.FixtureRequest, tiny_model: Path, tmp_path_factory) -> PreparedModel:
    """The test model's tokenizer as it is, and with an NFC normalizer (as Qwen's has), which can compose
    characters into fewer bytes than the client sent."""
    if request.param == "as built":
        return prepare_model("tiny", str(tiny_model), constrained=False)
    folder = tmp_path_factory.mktemp("nfc")
    for file in tiny_model.iterdir():
        (folder / file.name).symlink_to(file)
    spec = json.loads((tiny_model / "tokenizer.json").read_text()) | {"normalizer": {"type": "NFC"}}
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    return prepare_model("tiny", str(folder), constrained=False)


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(st.text(max_size=200), max_size=4))
def test_the_size_bound_never_counts_more_tokens_than_there_are(prepared: PreparedModel, texts: list[str]):
    """`least_tokens`, which refuses a huge prompt before it is tokenized, is a lower bound of the real count:
    a prompt it refuses would have been refused after tokenizing too."""
    actual = sum(len(prepared.tokenizer.encode(text, add_special_tokens=False)) for text in texts)
    assert least_tokens(prepared, texts) <= actual


def test_the_size_bound_is_the_bytes_over_the_longest_entry(prepared: PreparedModel) -> None:
    assert prepared.token_bytes == 24  # the test vocabulary's longest entry, in UTF-8
    assert least_tokens(prepared, ["word " * 200_000]) == 41_667
    # NFC composes e + U+0301 (3 bytes) into é (2 bytes); the bound counts what the tokenizer sees.
    composed = 2 if prepared.tokenizer._tokenizer.backend_tokenizer.normalizer else 3
    assert least_tokens(prepared, ["e\u0301" * 24]) == composed
