"""Output decoding on the real tiny tokenizer: stop sequences at every chunk boundary, thinking and tool
markup turned into blocks and never passed through as text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlx_lm.tokenizer_utils import load as load_tokenizer
from mlx_lm.tool_parsers import mistral, qwen3_coder

from daemon.chat.events import BlockDelta, BlockStart, BlockStop
from daemon.engine.decoder import OutputDecoder, StopMatcher
from daemon.engine.prompt import Prompt
from daemon.engine.tools import GENERIC_FORMAT, GENERIC_START, ToolFormat, model_format


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path):
    return load_tokenizer(tiny_model)


def test_stop_matcher_finds_the_stop_at_every_split() -> None:
    text = "one, two, three, four"
    for cut in range(len(text) + 1):
        matcher = StopMatcher([", three", "zzz"])
        first, hit = matcher.push(text[:cut])
        emitted = first
        if hit is None:
            second, hit = matcher.push(text[cut:])
            emitted += second
        assert (emitted, hit) == ("one, two", ", three"), cut


def test_stop_matcher_releases_held_text_that_was_no_stop() -> None:
    matcher = StopMatcher(["END"])
    assert matcher.push("the EN") == ("the ", None)
    assert matcher.push("D") == ("", "END")
    matcher = StopMatcher(["END"])
    assert matcher.push("the EN") == ("the ", None)
    assert matcher.push("ough") == ("ENough", None)
    assert matcher.flush() == ""


def prompt(tokens=(1,), **fields) -> Prompt:
    fields.setdefault("thinking", True)
    fields.setdefault("starts_in_thinking", False)
    fields.setdefault("tools", TOOLS)
    return Prompt(list(tokens), **fields)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "Read",
            "description": "",
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "n": {"type": "integer"},
                    "opts": {"type": "object"},
                },
            },
        },
    }
]


def decode(tokenizer, text: str, *, thinking: bool = True, stops: list[str] | None = None, **fields) -> list:
    """Decode `text` token by token, as the engine does."""
    fields.setdefault("tool_format", model_format(tokenizer))
    decoder = OutputDecoder(tokenizer, prompt(thinking=thinking, **fields), stops or [])
    events = []
    for token in tokenizer.encode(text, add_special_tokens=False):
        events += decoder.feed(token)
    return events + decoder.finish()


def decode_chunks(tokenizer, chunks: list[str], **fields) -> list:
    """Decode text arriving in the given pieces."""
    decoder = OutputDecoder(tokenizer, prompt(**fields), [])
    events = []
    for chunk in chunks:
        events += decoder.feed_text(chunk)
    return events + decoder.finish()


def blocks(events: list) -> list[tuple[str, str]]:
    """(kind, text) per block, with the invariant that every block is opened, filled, and closed."""
    out: list[tuple[str, str]] = []
    open_kind = None
    for event in events:
        if isinstance(event, BlockStart):
            assert open_kind is None
            open_kind = event.tool_name or event.kind
            out.append((open_kind, ""))
        elif isinstance(event, BlockDelta):
            assert open_kind is not None
            out[-1] = (open_kind, out[-1][1] + event.text)
        elif isinstance(event, BlockStop):
            assert open_kind is not None
            open_kind = None
    assert open_kind is None
    return out


def test_tool_call_becomes_a_tool_use_block(tokenizer) -> None:
    text = 'Sure.<tool_call>\n{"name": "Read", "arguments": {"path": "/a", "n": 2}}\n</tool_call>'
    assert blocks(decode(tokenizer, text)) == [("text", "Sure."), ("Read", '{"path": "/a", "n": 2}')]


def test_thinking_becomes_a_thinking_block(tokenizer) -> None:
    text = "<think>plan it</think>The answer."
    assert blocks(decode(tokenizer, text)) == [("thinking", "plan it"), ("text", "The answer.")]


def test_thinking_nobody_asked_for_is_dropped(tokenizer) -> None:
    text = "<think>plan it</think>The answer."
    assert blocks(decode(tokenizer, text, thinking=False)) == [("text", "The answer.")]


FAMILIES = {
    "json_tools": (
        None,
        'Let me look.<tool_call>\n{"name": "Read", "arguments": {"path": "/a", "n": "2"}}\n</tool_call>',
    ),
    "qwen3_coder": (
        ToolFormat(
            qwen3_coder.tool_call_start, qwen3_coder.tool_call_end, qwen3_coder.parse_tool_call, "qwen3_coder"
        ),
        "Let me look.<tool_call>\n<function=Read>\n<parameter=path>\n/a\n</parameter>\n"
        "<parameter=n>\n2\n</parameter>\n</function>\n</tool_call>",
    ),
    "mistral": (
        ToolFormat(mistral.tool_call_start, mistral.tool_call_end, mistral.parse_tool_call, "mistral"),
        'Let me look.[TOOL_CALLS]Read[ARGS]{"path": "/a", "n": 2}',
    ),
    "generic": (
        GENERIC_FORMAT,
        'Let me look.<tool_call>\n{"name": "Read", "arguments": {"path": "/a", "n": 2}}\n</tool_call>',
    ),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_call_format_parses_wherever_the_output_is_cut(tokenizer, family: str) -> None:
    tool_format, text = FAMILIES[family]
    tool_format = tool_format or model_format(tokenizer)
    expected = [("text", "Let me look."), ("Read", '{"path": "/a", "n": 2}')]
    for cut in range(len(text) + 1):
        events = decode_chunks(tokenizer, [text[:cut], text[cut:]], tool_format=tool_format)
        assert blocks(events) == expected, (family, cut)
    assert blocks(decode_chunks(tokenizer, list(text), tool_format=tool_format)) == expected


def test_two_calls_become_two_blocks_unless_parallel_calls_are_off(tokenizer) -> None:
    call = '<tool_call>\n{"name": "Read", "arguments": {"path": "/%s"}}\n</tool_call>'
    text = call % "a" + "\n" + call % "b"
    assert blocks(decode(tokenizer, text)) == [("Read", '{"path": "/a"}'), ("Read", '{"path": "/b"}')]
    assert blocks(decode(tokenizer, text, single_call=True)) == [("Read", '{"path": "/a"}')]


def test_forced_call_continues_the_opening_in_the_prompt(tokenizer) -> None:
    rest = '{"path": "/a", "opts": "{\\"deep\\": [1]}"}}\n</tool_call>'
    events = decode(tokenizer, rest, tool_opening='\n{"name": "Read", "arguments": ', single_call=True)
    assert blocks(events) == [("Read", '{"path": "/a", "opts": {"deep": [1]}}')]


def test_call_markup_without_tools_on_offer_stays_text(tokenizer) -> None:
    text = '<tool_call>\n{"name": "Read", "arguments": {}}\n</tool_call>'
    assert blocks(decode(tokenizer, text, tool_format=None)) == [("text", text)]


def test_thinking_block_drops_the_blank_lines_around_it(tokenizer) -> None:
    text = "<think>\nplan it\n\n</think>\n\nThe answer."
    assert blocks(decode(tokenizer, text)) == [("thinking", "plan it"), ("text", "The answer.")]


def test_unparseable_tool_call_is_returned_as_text(tokenizer) -> None:
    text = "<tool_call>not json</tool_call>"
    assert blocks(decode(tokenizer, text)) == [("text", "<tool_call>not json</tool_call>")]


def test_call_arguments_stream_one_by_one_as_their_values_complete(tokenizer) -> None:
    decoder = OutputDecoder(tokenizer, prompt(tool_format=model_format(tokenizer)), [])
    pieces = ["Sure.<tool_call>\n", '{"name": "Read", "arguments": {"path": "/a"', ", ", '"n": "1', '2", ']
    pieces += ['"opts": {"deep": [1, 2]}', "}}\n</tool_call>"]
    seen = [decoder.feed_text(piece) for piece in pieces] + [decoder.finish()]
    assert seen[1] == []  # a value is complete only once the `,` or `}` after it has come
    assert seen[2] == [BlockStop(), BlockStart("tool_use", "Read"), BlockDelta('{"path": "/a"')]
    assert seen[3:5] == [[], [BlockDelta(', "n": 12')]]  # whole, and coerced to the schema's integer
    assert seen[5:] == [[], [BlockDelta(', "opts": {"deep": [1, 2]}'), BlockDelta("}"), BlockStop()], []]
    assert decoder.tool_calls == 1 and decoder.parse_failures == 0


def test_qwen3_coder_parameters_stream_one_by_one(tokenizer) -> None:
    tool_format, _ = FAMILIES["qwen3_coder"]
    decoder = OutputDecoder(tokenizer, prompt(tool_format=tool_format), [])
    pieces = ["<tool_call>\n<function=Read>\n<parameter=path>\n/a\n</param", "eter>\n<parameter=n>\n"]
    pieces += ["12\n</parameter>\n", "</function>\n</tool_call>"]
    seen = [decoder.feed_text(piece) for piece in pieces] + [decoder.finish()]
    assert seen[0] == []
    assert seen[1] == [BlockStart("tool_use", "Read"), BlockDelta('{"path": "/a"')]
    assert seen[2:] == [[BlockDelta(', "n": 12')], [BlockDelta("}"), BlockStop()], []]


def test_a_call_cut_short_keeps_its_whole_arguments_and_returns_the_rest_as_text(tokenizer) -> None:
    text = '<tool_call>\n{"name": "Read", "arguments": {"path": "/a", "opts": {"deep": tru'
    decoder = OutputDecoder(tokenizer, prompt(tool_format=model_format(tokenizer)), [])
    events = decoder.feed_text(text) + decoder.finish()  # generation ended mid-call (max_tokens)
    assert blocks(events) == [("Read", '{"path": "/a"}'), ("text", '"opts": {"deep": tru')]
    assert decoder.tool_calls == 1 and decoder.parse_failures == 1


def test_a_call_without_arguments_streams_an_empty_object(tokenizer) -> None:
    text = '<tool_call>\n{"name": "Read", "arguments": {}}\n</tool_call>'
    assert blocks(decode(tokenizer, text)) == [("Read", "{}")]
    assert blocks(decode_chunks(tokenizer, list(text), tool_format=model_format(tokenizer))) == [
        ("Read", "{}")
    ]


def test_a_call_in_another_key_order_is_parsed_whole_at_its_end(tokenizer) -> None:
    text = '<tool_call>\n{"arguments": {"path": "/a"}, "name": "Read"}\n</tool_call>'
    events = decode_chunks(tokenizer, list(text), tool_format=model_format(tokenizer))
    assert blocks(events) == [("Read", '{"path": "/a"}')]


def test_stop_sequence_ends_text_mid_token(tokenizer) -> None:
    events = decode(tokenizer, "alpha beta gamma", stops=["ta g"])
    assert blocks(events) == [("text", "alpha be")]


def test_a_forced_call_names_its_tool_as_an_escaped_json_string() -> None:
    name = 'we"ird\\name'
    opening = GENERIC_FORMAT.forced_prefix(name).removeprefix(GENERIC_START)
    assert json.loads(opening + "{}}") == {"name": name, "arguments": {}}
