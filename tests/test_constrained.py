"""Grammar-constrained generation end to end, on the tiny random model (`tiny_model`), whose every word is
gibberish and which can never end a turn by itself: a forced call always names a declared tool (the one
asked for) and carries arguments valid against its schema, streamed or not; an answer asked to fit a JSON
schema always does, and ends by itself, through Anthropic's face and OpenAI's; a schema llguidance cannot
enforce is refused by keyword when it must be kept and held leniently when not; constrained requests batch
with unconstrained ones unchanged; the metrics, the log line and `count_tokens` agree with what ran.

Calls in other models' formats, and `auto` facing a model that calls a tool nobody declared, are in
tests/test_constrained_models.py.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jsonschema
import openai
import pytest

from tests.conftest import RunningServer, run_server

MODEL = "tiny"
SAMPLED = 12  # requests per schema family: random weights at temperature 1 explore what the grammar allows
SAMPLING = {"temperature": 1}  # the SDK's own `temperature` is gone: it goes in the body
MAX_TOKENS = 400  # far above what any schema below can take: a response that fits ends well before it

# Every schema below is bounded, so that a call or an answer fits in MAX_TOKENS whatever the model picks: a
# random model picks the closing quote of a string rarely, and the last digit of a number as rarely, so
# strings carry `maxLength`, arrays `maxItems`, integers both bounds, and numbers a `multipleOf` (a bounded
# number may still have endless decimals). Objects name all their properties: they are closed to others.
FAMILIES: dict[str, dict[str, Any]] = {
    # required fields, enums
    "lookup": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 8},
            "unit": {"enum": ["celsius", "fahrenheit"]},
            "note": {"type": "string", "maxLength": 4},
        },
        "required": ["city", "unit"],
    },
    # nested objects
    "place": {
        "type": "object",
        "properties": {
            "where": {
                "type": "object",
                "properties": {
                    "lat": {"type": "number", "minimum": -90, "maximum": 90, "multipleOf": 0.5},
                    "label": {"type": "string", "maxLength": 6},
                    "grid": {
                        "type": "object",
                        "properties": {"row": {"type": "integer", "minimum": 0, "maximum": 9}},
                        "required": ["row"],
                    },
                },
                "required": ["lat", "grid"],
            },
            "exact": {"type": "boolean"},
        },
        "required": ["where"],
    },
    # arrays, bounded
    "batch": {
        "type": "object",
        "properties": {
            "ids": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": 999},
                "minItems": 1,
                "maxItems": 4,
            },
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
        },
        "required": ["ids", "tags"],
    },
    # numbers and integers with bounds
    "measure": {
        "type": "object",
        "properties": {
            "count": {"type": "integer", "minimum": -20, "maximum": 20},
            "ratio": {"type": "number", "minimum": 0, "maximum": 1, "multipleOf": 0.25},
            "celsius": {"type": "number", "exclusiveMinimum": -50, "exclusiveMaximum": 60, "multipleOf": 0.5},
            "step": {"type": "integer", "exclusiveMinimum": 0, "maximum": 5},
        },
        "required": ["count", "ratio", "celsius", "step"],
    },
    # anyOf
    "choose": {
        "type": "object",
        "properties": {
            "value": {
                "anyOf": [
                    {"type": "integer", "minimum": 0, "maximum": 9},
                    {"type": "string", "maxLength": 5},
                    {"type": "null"},
                ]
            },
            "target": {
                "anyOf": [
                    {
                        "type": "object",
                        "properties": {"path": {"type": "string", "maxLength": 6}},
                        "required": ["path"],
                    },
                    {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
                ]
            },
        },
        "required": ["value", "target"],
    },
}
TOOLS = [
    {"name": name, "description": f"The {name} tool.", "input_schema": s} for name, s in FAMILIES.items()
]
# An answer's schema, bounded as the tools' are.
ANSWER = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 10},
        "score": {"type": "integer", "minimum": 0, "maximum": 100},
        "kind": {"enum": ["fact", "guess"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 2},
        "extra": {"anyOf": [{"type": "boolean"}, {"type": "null"}]},
    },
    "required": ["title", "score", "kind", "tags"],
}
WORDS = ["weather", "rivers", "a lamp", "the sea", "bread", "stars", "a code review", "tea", "maps", "owls"]


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("constrained")
    with run_server(home, "--model", str(tiny_model), "--model-name", MODEL) as running:
        yield running


def ask(seed: int) -> list[dict[str, str]]:
    """A user turn that differs with the seed, so that each request starts from another context."""
    return [
        {"role": "user", "content": f"Request {seed}: tell me about {WORDS[seed % len(WORDS)]} ({seed})."}
    ]


def the_call(message: Any) -> Any:
    """The response's one block, a call, after which the response ended."""
    assert message.stop_reason == "tool_use", message
    [block] = message.content
    assert block.type == "tool_use", message
    return block


def streamed_call(client: anthropic.Anthropic, **kwargs: Any) -> Any:
    """The call of a streamed response, after checking that its `input_json_delta`s, joined, are the JSON
    of the input the SDK assembles from them."""
    with client.messages.stream(**kwargs) as stream:
        pieces = [
            event.delta.partial_json
            for event in stream
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta"
        ]
        message = stream.get_final_message()
    call = the_call(message)
    assert json.loads("".join(pieces)) == call.input
    return call


def call(client: anthropic.Anthropic, seed: int, *, stream: bool, **kwargs: Any) -> Any:
    kwargs = {
        "model": MODEL,
        "max_tokens": MAX_TOKENS,
        "extra_body": SAMPLING,
        "messages": ask(seed),
        **kwargs,
    }
    return streamed_call(client, **kwargs) if stream else the_call(client.messages.create(**kwargs))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_forced_call_always_fits_its_tool_schema(server: RunningServer, family: str) -> None:
    """`tool` among all the tools, and `any` with the family's tool alone, each streamed and not."""
    client = server.client()
    only = [tool for tool in TOOLS if tool["name"] == family]
    for seed in range(SAMPLED):
        if seed % 2:
            choice, tools = {"type": "tool", "name": family}, TOOLS
        else:
            choice, tools = {"type": "any"}, only
        block = call(client, seed, stream=seed % 4 >= 2, tools=tools, tool_choice=choice)
        assert block.name == family
        jsonschema.validate(block.input, FAMILIES[family])


def test_any_calls_one_of_the_declared_tools_with_valid_input(server: RunningServer) -> None:
    client = server.client()
    for seed in range(SAMPLED):
        block = call(client, 100 + seed, stream=seed % 2 == 1, tools=TOOLS, tool_choice={"type": "any"})
        assert block.name in FAMILIES
        jsonschema.validate(block.input, FAMILIES[block.name])


def answer_text(message: Any) -> str:
    """The text of a response that ended by itself, long before `max_tokens`."""
    assert message.stop_reason == "end_turn", message
    assert message.usage.output_tokens < MAX_TOKENS
    [block] = message.content
    assert block.type == "text"
    return block.text


@pytest.mark.parametrize(
    "fields",
    [
        {"output_config": {"format": {"type": "json_schema", "schema": ANSWER}}, "extra_body": SAMPLING},
        {"extra_body": {**SAMPLING, "output_format": {"type": "json_schema", "schema": ANSWER}}},
    ],
    ids=["output_config", "output_format"],
)
def test_an_answer_held_to_a_schema_is_valid_json_and_ends_by_itself(
    server: RunningServer, fields: dict[str, Any]
) -> None:
    client = server.client()
    for seed in range(SAMPLED // 2):
        kwargs = {"model": MODEL, "max_tokens": MAX_TOKENS, "messages": ask(seed), **fields}
        if seed % 2:
            with client.messages.stream(**kwargs) as stream:
                joined = "".join(stream.text_stream)
                message = stream.get_final_message()
            assert joined == answer_text(message)
        else:
            message = client.messages.create(**kwargs)
        jsonschema.validate(json.loads(answer_text(message)), ANSWER)


def test_an_answer_continuing_the_clients_start_is_held_from_where_it_stands(server: RunningServer) -> None:
    client = server.client()
    output = {"format": {"type": "json_schema", "schema": ANSWER}}
    begun = '{"title": "'
    for seed in range(SAMPLED // 4):
        messages = [*ask(seed), {"role": "assistant", "content": begun}]
        message = client.messages.create(
            model=MODEL, max_tokens=MAX_TOKENS, messages=messages, output_config=output, extra_body=SAMPLING
        )
        jsonschema.validate(json.loads(begun + answer_text(message)), ANSWER)
    with server.http() as http:
        start = {"role": "assistant", "content": "Sure, here it is:"}
        refused(http, "assistant", messages=[*ask(0), start], output_config=output)


@pytest.fixture(scope="module")
def openai_client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_openai_response_format_is_valid_json_and_ends_by_itself(openai_client: openai.OpenAI) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER}}
    for seed in range(SAMPLED // 2):
        completion = openai_client.chat.completions.create(
            model=MODEL,
            messages=ask(seed),  # type: ignore[arg-type]
            max_tokens=MAX_TOKENS,
            temperature=1,
            response_format=response_format,  # type: ignore[arg-type]
        )
        [choice] = completion.choices
        assert choice.finish_reason == "stop", completion
        assert completion.usage is not None and completion.usage.completion_tokens < MAX_TOKENS
        assert choice.message.content is not None and not choice.message.tool_calls
        jsonschema.validate(json.loads(choice.message.content), ANSWER)


def test_openai_json_object_is_an_object(openai_client: openai.OpenAI) -> None:
    # Any object: one the random model writes never closes (nothing bounds its keys), so the answer is cut
    # at max_tokens; it still opens as an object and holds to JSON's grammar all the way.
    completion = openai_client.chat.completions.create(
        model=MODEL,
        messages=ask(0),  # type: ignore[arg-type]
        max_tokens=40,
        temperature=1,
        response_format={"type": "json_object"},
    )
    [choice] = completion.choices
    text = choice.message.content or ""
    assert text.startswith("{") and choice.finish_reason in ("stop", "length"), completion
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


# Keywords llguidance does not implement, each in a schema of its own; llguidance names every one it meets.
UNSUPPORTED = {
    "if": {"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}},
    "uniqueItems": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
    "not": {"not": {"type": "string"}},
    "contains": {"type": "array", "contains": {"type": "integer"}},
    "dependentRequired": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "dependentRequired": {"a": ["b"]},
    },
}


def tool_with(keyword: str, **extra: Any) -> dict[str, Any]:
    """A tool one of whose arguments has a schema with `keyword`."""
    schema = {"type": "object", "properties": {"x": UNSUPPORTED[keyword]}, "required": ["x"]}
    return {"name": "odd_tool", "input_schema": schema, **extra}


def post(http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post(
        "/v1/messages",
        json={"model": MODEL, "max_tokens": 8, "temperature": 1, "messages": ask(0), **body},
    )


def names(message: str, word: str) -> bool:
    """Whether the message has the word as a word of its own (`not`, but not inside `cannot`)."""
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", message) is not None


def refused(http: httpx.Client, *named: str, **body: Any) -> None:
    """The request gets a 400 naming each of `named`, and the server goes on serving."""
    response = post(http, **body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    for name in named:
        assert names(error["message"], name), error
    assert post(http).status_code == 200


@pytest.mark.parametrize("keyword", UNSUPPORTED)
def test_a_schema_that_must_be_kept_but_cannot_be_is_refused_by_keyword(
    server: RunningServer, keyword: str
) -> None:
    with server.http() as http:
        refused(
            http,
            "output schema",
            keyword,
            output_config={"format": {"type": "json_schema", "schema": UNSUPPORTED[keyword]}},
        )
        refused(
            http,
            "output schema",
            keyword,
            output_format={"type": "json_schema", "schema": UNSUPPORTED[keyword]},
        )
        refused(http, "odd_tool", keyword, tools=[tool_with(keyword)], tool_choice={"type": "any"})
        refused(
            http,
            "odd_tool",
            keyword,
            tools=[tool_with(keyword)],
            tool_choice={"type": "tool", "name": "odd_tool"},
        )
        refused(http, "odd_tool", keyword, tools=[tool_with(keyword, strict=True)])


def test_openai_refuses_what_cannot_be_enforced(server: RunningServer, openai_client: openai.OpenAI) -> None:
    tool = tool_with("not")
    function = {"name": tool["name"], "parameters": tool["input_schema"], "strict": True}
    schema = {"name": "answer", "schema": UNSUPPORTED["uniqueItems"]}
    for body, keyword in [
        ({"response_format": {"type": "json_schema", "json_schema": schema}}, "uniqueItems"),
        ({"tools": [{"type": "function", "function": function}]}, "not"),
    ]:
        with pytest.raises(openai.BadRequestError) as refusal:
            openai_client.chat.completions.create(model=MODEL, messages=ask(0), max_tokens=8, **body)  # type: ignore[call-overload]
        assert names(str(refusal.value.body), keyword)
    assert openai_client.chat.completions.create(model=MODEL, messages=ask(0), max_tokens=8).choices


def test_a_tool_merely_on_offer_is_held_to_what_can_be_enforced(server: RunningServer) -> None:
    with server.http() as http:
        # A tool of its own: the warning comes once per tool and reason, the first time it is on offer.
        offered = {**tool_with("uniqueItems"), "name": "offered_tool"}
        response = post(http, tools=[offered], max_tokens=40)
        assert response.status_code == 200, response.text
        request_id = response.headers["request-id"]
    warnings = [line for line in server.log().splitlines() if request_id in line and " WARNING " in line]
    assert any("offered_tool" in line and "uniqueItems" in line for line in warnings), warnings


def without_ids(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A response's blocks, less the call ids each response draws afresh."""
    return [{key: value for key, value in block.items() if key != "id"} for block in message["content"]]


def test_constrained_and_unconstrained_requests_batched_give_their_solo_output(server: RunningServer) -> None:
    greedy = {"model": MODEL, "max_tokens": MAX_TOKENS, "temperature": 0}
    # Two forced calls, a plain answer, and one under `auto` (held to its grammar only from a call's marker).
    requests = [
        {**greedy, "messages": ask(1), "tools": TOOLS, "tool_choice": {"type": "tool", "name": "place"}},
        {**greedy, "messages": ask(2), "max_tokens": 30},
        {**greedy, "messages": ask(3), "tools": TOOLS, "tool_choice": {"type": "any"}},
        {**greedy, "messages": ask(4), "max_tokens": 30, "tools": TOOLS},
    ]
    with server.http() as http:
        solo = [without_ids(http.post("/v1/messages", json=body).json()) for body in requests]
    together: list[list[dict[str, Any]]] = [[] for _ in requests]

    def one(i: int) -> None:
        with server.http() as http:
            together[i] = without_ids(http.post("/v1/messages", json=requests[i]).json())

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert together == solo
    assert [block["type"] for block in solo[0]] == ["tool_use"] and solo[0][0]["name"] == "place"
    assert [block["type"] for block in solo[1]] == ["text"]


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def request_line(server: RunningServer, response: httpx.Response) -> str:
    """The request's INFO line, the one with its token counts."""
    request_id = response.headers["request-id"]
    [line] = [line for line in server.log().splitlines() if request_id in line and " prompt=" in line]
    return line


# Schemas of their own, so that no other test has compiled their grammars.
METERED = {"type": "object", "properties": {"n": {"enum": [1, 2]}}, "required": ["n"]}


@pytest.mark.parametrize(
    "fields",
    [
        {"tools": [{"name": "metered", "input_schema": METERED}], "tool_choice": {"type": "any"}},
        {"output_config": {"format": {"type": "json_schema", "schema": {**METERED, "title": "metered"}}}},
    ],
    ids=["forced_call", "output_schema"],
)
def test_metrics_count_constrained_requests_and_the_log_shows_the_grammar(
    server: RunningServer, fields: dict[str, Any]
) -> None:
    counted = 'mlxd_constrained_requests_total{model="tiny"}'
    with server.http() as http:
        before = metric(http.get("/metrics").text, counted)
        first, second, plain = (
            post(http, **fields, max_tokens=40),
            post(http, **fields, max_tokens=40),
            post(http),
        )
        after = metric(http.get("/metrics").text, counted)
    assert first.status_code == second.status_code == plain.status_code == 200
    assert after == before + 2  # the plain request is not constrained
    figures = r" grammar=compile:([0-9.]+)ms,mask:\d+us/tok$"
    compiled, kept = (re.search(figures, request_line(server, r)) for r in (first, second))
    assert compiled and kept, server.log()
    assert float(compiled.group(1)) > 0  # compiled for this request
    assert kept.group(1) == "0.0"  # kept from the first
    assert " grammar=" not in request_line(server, plain)


@pytest.mark.parametrize(
    "fields",
    [
        {"tools": TOOLS, "tool_choice": {"type": "tool", "name": "measure"}},
        {"tools": TOOLS, "tool_choice": {"type": "any"}},
        {"output_config": {"format": {"type": "json_schema", "schema": ANSWER}}},
    ],
    ids=["tool", "any", "output_config"],
)
def test_count_tokens_is_the_prompt_the_constrained_generation_processes(
    server: RunningServer, fields: dict[str, Any]
) -> None:
    client = server.client()
    request = {"model": MODEL, "messages": ask(7), **fields}
    counted = client.messages.count_tokens(**request).input_tokens
    usage = client.messages.create(**request, max_tokens=MAX_TOKENS, extra_body=SAMPLING).usage
    assert counted == usage.input_tokens + (usage.cache_read_input_tokens or 0) + (
        usage.cache_creation_input_tokens or 0
    )


# Defects of the daemon found by these tests: each is expected to fail until it is fixed (strict, so that
# the fix shows as an unexpected pass and the mark comes off).


def test_an_answer_held_to_a_schema_after_reasoning_is_valid_json(server: RunningServer) -> None:
    request = {
        "model": MODEL,
        "max_tokens": 1024 + MAX_TOKENS,
        "temperature": 0,  # greedy, this prompt opens a reasoning section, closed by the budget
        "messages": ask(0),
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "output_config": {"format": {"type": "json_schema", "schema": ANSWER}},
    }
    with server.http() as http:
        response = http.post("/v1/messages", json=request)
    message = response.json()
    assert [block["type"] for block in message["content"]] == ["thinking", "text"], message
    jsonschema.validate(json.loads(message["content"][1]["text"]), ANSWER)
    assert message["stop_reason"] == "end_turn"
    assert "grammar refused" not in server.log()


def test_a_call_cut_short_by_max_tokens_is_never_reported_as_made(server: RunningServer) -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"enum": ["x"]},
            "b": {
                "type": "array",
                "items": {"type": "integer", "minimum": 100, "maximum": 999},
                "minItems": 6,
                "maxItems": 6,
            },
        },
        "required": ["a", "b"],
    }
    body = {
        "tools": [{"name": "pair", "input_schema": schema}],
        "tool_choice": {"type": "any"},
        "temperature": 0,
    }
    with server.http() as http:
        whole = post(http, **body, max_tokens=MAX_TOKENS).json()
        assert whole["stop_reason"] == "tool_use"
        for limit in range(1, whole["usage"]["output_tokens"]):
            cut = post(http, **body, max_tokens=limit).json()
            if cut["stop_reason"] == "tool_use":  # then the call is whole
                [block] = [block for block in cut["content"] if block["type"] == "tool_use"]
                jsonschema.validate(block["input"], schema)
