"""Every call format with a grammar, on the tiny model's tokenizer (its markers written as text where they
are not its special tokens): random walks through a forced call, and through several calls where the format
allows them, read back by that format's own mlx-lm parser as declared tools with arguments valid against
their schemas."""

from __future__ import annotations

import importlib
import random
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask
from mlx_lm.utils import load_config, load_tokenizer

from daemon.chat.request import Tool, ToolChoice
from daemon.engine.call_grammars import SHAPES, call_shape
from daemon.engine.grammar import GrammarCompiler, request_grammar
from daemon.engine.tools import GENERIC_FORMAT, ToolFormat
from tests.test_grammar import walk

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 6},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"enum": ["c", "f"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2},
    },
    "required": ["city", "unit"],
}
BASH = {
    "type": "object",
    "properties": {"command": {"type": "string", "maxLength": 5}},
    "required": ["command"],
}
TOOLS = (
    Tool("get_weather", "", WEATHER),
    Tool("Bash", "", BASH),
    Tool("now", "", {"type": "object", "properties": {}}),
)
SCHEMAS = {tool.name: tool.parameters for tool in TOOLS}
# The template text that selects a format's variant where one parser reads two.
TEMPLATES = {"mistral": "[TOOL_CALLS]{{ name }}[ARGS]", "mistral_list": "[TOOL_CALLS]"}
FORMATS = sorted(set(SHAPES) - {"generic"})


class Templated:
    """The tiny tokenizer with another chat template, which is how a format's variant is chosen."""

    def __init__(self, tokenizer, chat_template: str):
        self._inner, self.chat_template = tokenizer, chat_template

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path):
    return load_tokenizer(tiny_model, eos_token_ids=load_config(tiny_model).get("eos_token_id"))


def tool_format(kind: str) -> ToolFormat:
    """The format as mlx-lm declares it: its markers and its parser."""
    if kind == "generic":
        return GENERIC_FORMAT
    parser = importlib.import_module(f"mlx_lm.tool_parsers.{kind.removesuffix('_list')}")
    return ToolFormat(
        parser.tool_call_start, parser.tool_call_end, parser.parse_tool_call, kind.removesuffix("_list")
    )


def compiler_for(tokenizer, kind: str) -> GrammarCompiler:
    return GrammarCompiler(Templated(tokenizer, TEMPLATES.get(kind, "")), len(tokenizer._tokenizer))


def read_calls(fmt: ToolFormat, text: str) -> list[tuple[str, dict]]:
    """The calls in a walk's text, section by section, as the decoder hands them to the parser."""
    assert text.startswith(fmt.start), text
    if fmt.end:
        text = text[: text.rindex(fmt.end) + len(fmt.end)]  # free text may follow the last call
    sections = text.split(fmt.start)[1:] if fmt.end else [text.removeprefix(fmt.start)]
    calls = []
    for section in sections:
        body = section.strip("\n").removesuffix(fmt.end) if fmt.end else section
        calls += fmt.calls(body, [{"function": {"name": t.name, "parameters": t.parameters}} for t in TOOLS])
    return calls


def test_every_format_the_shapes_name_is_one_mlx_lm_parses() -> None:
    for kind in FORMATS:
        tool_format(kind)  # imports its parser
        assert call_shape(kind.removesuffix("_list"), TEMPLATES.get(kind, "")) is SHAPES[kind]


@pytest.mark.parametrize("kind", FORMATS)
def test_a_forced_call_in_every_format_parses_as_a_declared_tool_fitting_its_schema(
    tokenizer, kind: str
) -> None:
    fmt, compiler = tool_format(kind), compiler_for(tokenizer, kind)
    grammar = request_grammar(fmt, TOOLS, ToolChoice("required"), None, compiler)
    assert grammar is not None
    names = set()
    for seed in range(12):
        [(name, arguments)] = read_calls(fmt, walk(compiler, grammar, seed))
        jsonschema.validate(arguments, SCHEMAS[name])
        names.add(name)
    assert len(names) > 1  # the walks reach more than one tool

    only_bash = request_grammar(fmt, TOOLS, ToolChoice("tool", "Bash"), None, compiler)
    [(name, arguments)] = read_calls(fmt, walk(compiler, only_bash, 0))
    assert name == "Bash"
    jsonschema.validate(arguments, BASH)


@pytest.mark.parametrize("kind", FORMATS)
def test_calls_opened_after_free_text_hold_to_their_schemas_in_every_format(tokenizer, kind: str) -> None:
    """Under `auto` the grammar is lazy: free text, then from the opening marker on, calls."""
    fmt, compiler = tool_format(kind), compiler_for(tokenizer, kind)
    grammar = request_grammar(fmt, TOOLS, ToolChoice("auto"), None, compiler)
    opening = compiler._tokenizer.encode("Sure." + fmt.start, add_special_tokens=False)
    seen = 0
    for seed in range(30):
        matcher, rng = grammar.template.deep_copy(), random.Random(seed)
        assert matcher.consume_tokens(opening)
        text = fmt.start + walk_from(compiler, matcher, rng)
        for name, arguments in read_calls(fmt, text):
            jsonschema.validate(arguments, SCHEMAS[name])
            seen += 1
    assert seen >= 30


def walk_from(compiler: GrammarCompiler, matcher, rng: random.Random) -> str:
    """Random allowed tokens from where `matcher` stands, to the grammar's end or, after a call, at a random
    point of the text that may follow."""
    mask = allocate_token_bitmask(1, compiler.lltokenizer.vocab_size)
    tokens: list[int] = []
    eos = set(compiler._tokenizer.eos_token_ids)
    while not matcher.is_stopped() and len(tokens) < 4000:
        fill_next_token_bitmask(matcher, mask)
        allowed = np.flatnonzero(np.unpackbits(mask.view(np.uint8), bitorder="little")[: compiler.vocab_size])
        choices = [int(t) for t in allowed if int(t) not in eos] or [int(allowed[0])]
        token = rng.choice(choices)
        if token in eos or (matcher.is_accepting() and rng.random() < 0.3):
            break
        assert matcher.consume_token(token)
        tokens.append(token)
    return compiler._tokenizer.decode(tokens)
