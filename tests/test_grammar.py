"""The grammars themselves, on the tiny model's tokenizer: what each request is held to, which schemas are
refused or held in part, and that a compiled grammar is kept."""

from __future__ import annotations

import json
import random
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask
from mlx_lm.utils import load_config, load_tokenizer

from daemon.chat.request import ChatRequest, Message, Text, Tool, ToolChoice
from daemon.engine.call_grammars import closed_schema
from daemon.engine.constrained import GrammarConstraint
from daemon.engine.grammar import GrammarCompiler, GrammarError, request_grammar
from daemon.engine.prompt import render
from daemon.engine.tools import model_format

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 8},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"enum": ["c", "f"]},
    },
    "required": ["city", "unit"],
}
UNSUPPORTED = {
    "type": "object",
    "properties": {"a": {"type": "string"}},
    "if": {"required": ["a"]},
    "then": {},
}


@pytest.fixture(scope="module")
def compiler(tiny_model: Path) -> GrammarCompiler:
    config = load_config(tiny_model)
    tokenizer = load_tokenizer(tiny_model, eos_token_ids=config.get("eos_token_id"))
    return GrammarCompiler(tokenizer, config["vocab_size"])


def walk(compiler: GrammarCompiler, grammar, seed: int) -> str:
    """The text of one random walk through the grammar's allowed tokens, to its end."""
    matcher, rng = grammar.template.deep_copy(), random.Random(seed)
    mask = allocate_token_bitmask(1, compiler.lltokenizer.vocab_size)
    tokens: list[int] = []
    while not matcher.is_stopped():
        fill_next_token_bitmask(matcher, mask)
        allowed = np.flatnonzero(np.unpackbits(mask.view(np.uint8), bitorder="little")[: compiler.vocab_size])
        assert len(allowed), "the grammar left no token the model can write"
        token = int(rng.choice(allowed))
        assert matcher.consume_token(token)
        tokens.append(token)
        assert len(tokens) < 400, "the walk did not end"
    return compiler._tokenizer.decode(tokens)


def test_a_forced_call_is_a_declared_tool_with_valid_arguments(compiler: GrammarCompiler) -> None:
    bash = {
        "type": "object",
        "properties": {"command": {"type": "string", "maxLength": 6}},
        "required": ["command"],
    }
    tools = (Tool("get_weather", "", WEATHER), Tool("Bash", "", bash))
    fmt = model_format(compiler._tokenizer)
    grammar = request_grammar(fmt, tools, ToolChoice("required"), None, compiler)
    for seed in range(5):
        text = walk(compiler, grammar, seed)
        assert text.startswith(fmt.start) and text.endswith(fmt.end)
        call = json.loads(text.removeprefix(fmt.start).removesuffix(fmt.end))
        assert call["name"] in ("get_weather", "Bash")
        jsonschema.validate(call["arguments"], WEATHER if call["name"] == "get_weather" else bash)


def test_an_answer_schema_holds_the_whole_answer(compiler: GrammarCompiler) -> None:
    grammar = request_grammar(None, (), ToolChoice(), WEATHER, compiler)
    for seed in range(5):
        answer = json.loads(walk(compiler, grammar, seed))
        jsonschema.validate(answer, WEATHER)
        assert set(answer) <= set(WEATHER["properties"])  # closed: nothing the schema does not name


def test_an_unenforceable_schema_is_refused_where_it_must_be_kept(compiler: GrammarCompiler) -> None:
    fmt = model_format(compiler._tokenizer)
    odd = Tool("odd", "", UNSUPPORTED)
    with pytest.raises(GrammarError, match=r"tool 'odd'.*Unimplemented keys: \[\"if\", \"then\"\]"):
        request_grammar(fmt, (odd,), ToolChoice("tool", "odd"), None, compiler)
    with pytest.raises(GrammarError, match="tool 'odd'"):
        request_grammar(fmt, (Tool("odd", "", UNSUPPORTED, strict=True),), ToolChoice(), None, compiler)
    with pytest.raises(GrammarError, match=r"the output schema cannot be enforced: .*if"):
        request_grammar(None, (), ToolChoice(), UNSUPPORTED, compiler)
    # Merely on offer, the tool keeps what can be enforced, and a schema that is not one keeps an object.
    assert request_grammar(fmt, (odd,), ToolChoice(), None, compiler) is not None
    broken = Tool("broken", "", {"type": 7, "properties": []})
    assert request_grammar(fmt, (broken,), ToolChoice(), None, compiler) is not None


def test_none_and_no_schema_hold_nothing(compiler: GrammarCompiler) -> None:
    fmt = model_format(compiler._tokenizer)
    assert request_grammar(fmt, (Tool("a", "", WEATHER),), ToolChoice("none"), None, compiler) is None
    assert request_grammar(None, (), ToolChoice(), None, compiler) is None


def test_a_compiled_grammar_is_kept(compiler: GrammarCompiler) -> None:
    schema = {"type": "object", "properties": {"kept": {"type": "boolean"}}}
    first = request_grammar(None, (), ToolChoice(), schema, compiler)
    again = request_grammar(None, (), ToolChoice(), schema, compiler)
    assert first.compile_seconds > 0 and again.compile_seconds == 0 and again.template is first.template


def test_proposed_tokens_are_checked_without_being_taken(compiler: GrammarCompiler) -> None:
    grammar = request_grammar(None, (), ToolChoice(), {"type": "boolean"}, compiler)
    constraint = GrammarConstraint(grammar.template.deep_copy(), compiler.lltokenizer.vocab_size)
    encode = compiler._tokenizer.encode
    assert constraint.accepts(encode("true", add_special_tokens=False)) == len(encode("true"))
    assert constraint.accepts(encode("nope", add_special_tokens=False)) == 0
    assert constraint.accepts(encode("true", add_special_tokens=False)) > 0  # nothing was consumed


def test_closed_schema_closes_every_object_that_names_its_properties() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "object"}, "b": {"properties": {}, "additionalProperties": True}},
    }
    assert closed_schema(schema) == {
        "type": "object",
        # A bare object (no properties named) stays any object: closed, it could only ever be {}.
        "properties": {"a": {"type": "object"}, "b": {"properties": {}, "additionalProperties": True}},
        "additionalProperties": False,
    }


def test_an_answer_continuing_the_clients_start_is_held_from_where_it_stands(
    compiler: GrammarCompiler,
) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}

    def rendered(begun: str):
        messages = (Message("user", (Text("x"),)), Message("assistant", (Text(begun),)))
        return render(compiler._tokenizer, ChatRequest("m", messages, output_schema=schema), compiler)

    prompt = rendered('{"a": ')
    assert compiler._tokenizer.decode(list(prompt.grammar_begun)) == '{"a": '
    with pytest.raises(GrammarError, match="does not fit"):
        rendered("not JSON")
