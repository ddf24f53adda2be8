"""Grammar-constrained calls on models made for them: one trained to call a tool the request never declared
(under `auto`, held to its grammar, the call can only be of a declared tool, valid against its schema;
unconstrained, the undeclared call comes back as text), and a random model whose chat template makes
mlx-lm read its calls as Qwen3-Coder's XML, where forced calls fit their tool's schema as JSON ones do.

The JSON-format calls and answers on the tiny random model are in tests/test_constrained.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import jsonschema
import pytest
from mlx_lm.tokenizer_utils import load

from daemon.chat.request import Tool, ToolChoice
from daemon.engine.demo_model import ModelShape, build_model
from daemon.engine.grammar import GrammarCompiler, request_grammar
from daemon.engine.tools import model_format
from tests.conftest import MODELS, RunningServer, run_server, server_env
from tests.model_zoo import config_toml
from tests.tool_examples import BOUNDED_WEATHER, BOUNDED_WEATHER_SCHEMA, DELETE_ALL, UNDECLARED_CALL
from tests.trained import trained_model

UNDECLARED = "undeclared"  # trained to call delete_everything, which no request declares
CODER = "coder"  # random weights, Qwen3-Coder's call format
GLM = "glm"  # random weights, GLM 4.7's call format (one tagged key and value per argument)
SAMPLED = 12  # requests per schema family
MAX_TOKENS = 400

# Qwen3-Coder's way of writing calls, in a short ChatML template: mlx-lm picks its `qwen3_coder` parser
# for any template with "<tool_call>\n<function=" in it.
CODER_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou have access to the following functions:\\n\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nTo call a function, reply in this format:\\n"
    "<tool_call>\\n<function=example_name>\\n<parameter=example_parameter>\\nvalue\\n</parameter>\\n"
    "</function>\\n</tool_call><|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>assistant\\n' + (message.content or '') }}"
    "{%- for call in message.tool_calls or [] %}"
    "{%- set call = call.function if call.function is defined else call %}"
    "{{- '\\n<tool_call>\\n<function=' + call.name + '>\\n' }}"
    "{%- for key, value in call.arguments.items() %}{{- '<parameter=' + key + '>\\n' }}"
    "{{- value if value is string else value | tojson }}{{- '\\n</parameter>\\n' }}{%- endfor %}"
    "{{- '</function>\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# GLM 4.7's way: mlx-lm picks its `glm47` parser for any template with "<arg_key>" in it.
GLM_TEMPLATE = CODER_TEMPLATE.replace(
    "<tool_call>\\n<function=example_name>\\n<parameter=example_parameter>\\nvalue\\n</parameter>\\n"
    "</function>\\n</tool_call>",
    "<tool_call>example_name<arg_key>example_parameter</arg_key><arg_value>value</arg_value></tool_call>",
).replace(
    "{{- '\\n<tool_call>\\n<function=' + call.name + '>\\n' }}"
    "{%- for key, value in call.arguments.items() %}{{- '<parameter=' + key + '>\\n' }}"
    "{{- value if value is string else value | tojson }}{{- '\\n</parameter>\\n' }}{%- endfor %}"
    "{{- '</function>\\n</tool_call>' }}",
    "{{- '\\n<tool_call>' + call.name }}"
    "{%- for key, value in call.arguments.items() %}{{- '<arg_key>' + key + '</arg_key><arg_value>' }}"
    "{{- value if value is string else value | tojson }}{{- '</arg_value>' }}{%- endfor %}"
    "{{- '</tool_call>' }}",
)

# Bounded as in tests/test_constrained.py, and with no parameter of type string: in XML a string is raw
# text up to its closing tag, which a random model almost never writes (strings inside JSON values, an
# object's or an array's, are JSON and bounded by `maxLength`).
CODER_FAMILIES: dict[str, dict[str, Any]] = {
    "scalars": {
        "type": "object",
        "properties": {
            "unit": {"enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
            "ratio": {"type": "number", "minimum": 0, "maximum": 1, "multipleOf": 0.25},
            "exact": {"type": "boolean"},
        },
        "required": ["unit", "days", "ratio"],
    },
    "structured": {
        "type": "object",
        "properties": {
            "ids": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": 99},
                "minItems": 1,
                "maxItems": 3,
            },
            "where": {
                "type": "object",
                "properties": {
                    "label": {"type": "string", "maxLength": 5},
                    "row": {"type": "integer", "minimum": 0, "maximum": 9},
                },
                "required": ["row"],
            },
        },
        "required": ["ids", "where"],
    },
}
CODER_TOOLS = [
    {"name": name, "description": f"The {name} tool.", "input_schema": schema}
    for name, schema in CODER_FAMILIES.items()
]


def templated_model(stem: str, template: str) -> Path:
    """A random model with `template`, built once per version of it."""
    digest = hashlib.sha256(template.encode()).hexdigest()[:12]
    path = MODELS / f"{stem}-{digest}"
    if not (path / "config.json").exists():
        build_model(path, ModelShape(chat_template=template))
    return path


def coder_model() -> Path:
    return templated_model("tiny-qwen3-coder", CODER_TEMPLATE)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("constrained-models")
    config = home / "mlxd.toml"
    models = [
        {"name": UNDECLARED, "source": str(trained_model([UNDECLARED_CALL], cache_dir=MODELS))},
        {"name": CODER, "source": str(coder_model())},
        {"name": GLM, "source": str(templated_model("tiny-glm47", GLM_TEMPLATE))},
    ]
    config.write_text(config_toml({}, models))
    with run_server(home, "--config", str(config)) as running:
        yield running


@pytest.fixture(scope="module")
def unconstrained(tmp_path_factory) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("unconstrained")
    model = trained_model([UNDECLARED_CALL], cache_dir=MODELS)
    env = server_env(home, MLXD_CONSTRAINED_DECODING="false")
    with run_server(home, "--model", str(model), "--model-name", UNDECLARED, env=env) as running:
        yield running


def respond(client: anthropic.Anthropic, *, stream: bool, **kwargs: Any) -> Any:
    """The response, streamed or not; streamed, each call's joined `input_json_delta`s are its input."""
    if not stream:
        return client.messages.create(**kwargs)
    with client.messages.stream(**kwargs) as events:
        pieces: dict[int, str] = {}
        for event in events:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                pieces[event.index] = pieces.get(event.index, "") + event.delta.partial_json
        message = events.get_final_message()
    for index, joined in pieces.items():
        assert json.loads(joined) == message.content[index].input
    return message


def undeclared_request(**extra: Any) -> dict[str, Any]:
    return {
        "model": UNDECLARED,
        "max_tokens": MAX_TOKENS,
        "messages": [DELETE_ALL],
        "tools": [BOUNDED_WEATHER],
        **extra,
    }


@pytest.mark.parametrize("stream", [False, True])
def test_auto_held_to_the_grammar_calls_only_a_declared_tool(server: RunningServer, stream: bool) -> None:
    client = server.client()
    greedy = respond(client, stream=stream, **undeclared_request(extra_body={"temperature": 0}))
    # Where the model names delete_everything, the grammar allows only get_weather.
    [block] = greedy.content
    assert block.type == "tool_use" and block.name == "get_weather" and greedy.stop_reason == "tool_use"
    jsonschema.validate(block.input, BOUNDED_WEATHER_SCHEMA)
    for seed in range(SAMPLED // 2):
        sampled = respond(
            client,
            stream=stream,
            **undeclared_request(
                messages=[{**DELETE_ALL, "content": f"{DELETE_ALL['content']} ({seed})"}],
                extra_body={"temperature": 1},
            ),
        )
        for block in sampled.content:
            if block.type == "tool_use":
                assert block.name == "get_weather"
                jsonschema.validate(block.input, BOUNDED_WEATHER_SCHEMA)
            else:
                assert block.type == "text"


@pytest.mark.parametrize("stream", [False, True])
def test_unconstrained_an_undeclared_call_comes_back_as_text(
    unconstrained: RunningServer, stream: bool
) -> None:
    message = respond(
        unconstrained.client(), stream=stream, **undeclared_request(extra_body={"temperature": 0})
    )
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == UNDECLARED_CALL.response
    assert message.stop_reason == "end_turn"


@pytest.mark.parametrize("model", [CODER, GLM])
@pytest.mark.parametrize("family", CODER_FAMILIES)
def test_a_forced_tagged_call_always_fits_its_tool_schema(
    server: RunningServer, family: str, model: str
) -> None:
    """`tool` among both tools, `any` with the family's alone, each streamed and not, at temperature 1."""
    client = server.client()
    only = [tool for tool in CODER_TOOLS if tool["name"] == family]
    for seed in range(SAMPLED):
        if seed % 2:
            choice, tools = {"type": "tool", "name": family}, CODER_TOOLS
        else:
            choice, tools = {"type": "any"}, only
        message = respond(
            client,
            stream=seed % 4 >= 2,
            model=model,
            max_tokens=MAX_TOKENS,
            messages=[{"role": "user", "content": f"Call {family} for request {seed}."}],
            tools=tools,
            tool_choice=choice,
            extra_body={"temperature": 1},
        )
        assert message.stop_reason == "tool_use", message
        [block] = message.content
        assert block.type == "tool_use" and block.name == family
        jsonschema.validate(block.input, CODER_FAMILIES[family])


# Defects of the daemon's XML grammar and parsing found here: each is expected to fail until it is fixed
# (strict, so that the fix shows as an unexpected pass and the mark comes off).


def test_a_forced_xml_call_with_any_of_fits_its_schema(server: RunningServer) -> None:
    either = {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "boolean"}]}
    schema = {"type": "object", "properties": {"value": either}, "required": ["value"]}
    client = server.client()
    for seed in range(3):
        message = client.messages.create(
            model=CODER,
            max_tokens=MAX_TOKENS,
            messages=[{"role": "user", "content": f"Choose {seed}."}],
            tools=[{"name": "choose", "input_schema": schema}],
            tool_choice={"type": "any"},
            extra_body={"temperature": 1},
        )
        [block] = message.content
        jsonschema.validate(block.input, schema)


def test_an_xml_string_parameter_is_held_to_its_max_length() -> None:
    # Through the grammar itself: a random model almost never closes a raw string (see CODER_FAMILIES).
    path = coder_model()
    tokenizer = load(path)
    compiler = GrammarCompiler(tokenizer, json.loads((path / "config.json").read_text())["vocab_size"])
    schema = {
        "type": "object",
        "properties": {"code": {"type": "string", "maxLength": 3}},
        "required": ["code"],
    }
    tool = Tool("lookup", "", schema)
    grammar = request_grammar(model_format(tokenizer), (tool,), ToolChoice("required"), None, compiler)
    assert grammar is not None

    def fits(code: str) -> bool:
        parameter = f"<parameter=code>\n{code}\n</parameter>\n"
        call = f"<tool_call>\n<function=lookup>\n{parameter}</function>\n</tool_call>"
        tokens = tokenizer.encode(call, add_special_tokens=False)
        return grammar.template.deep_copy().validate_tokens(tokens) == len(tokens)

    assert fits("abc")
    assert not fits("abcdefgh")


@pytest.mark.parametrize("name", ['say"hi', "back\\slash"], ids=["quote", "backslash"])
def test_an_xml_parameter_name_is_written_as_it_is(server: RunningServer, name: str) -> None:
    schema = {
        "type": "object",
        "properties": {name: {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": [name],
    }
    client = server.client()
    for choice in ({"type": "any"}, {"type": "auto"}):
        message = client.messages.create(
            model=CODER,
            max_tokens=40,
            messages=[{"role": "user", "content": "Call it."}],
            tools=[{"name": "odd_names", "input_schema": schema}],
            tool_choice=choice,  # type: ignore[arg-type]
            extra_body={"temperature": 1},
        )
        if choice["type"] == "any":
            [block] = message.content
            jsonschema.validate(block.input, schema)
