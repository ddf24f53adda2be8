"""Output decoding on the real tiny tokenizer: stop sequences at every chunk boundary, thinking and tool
markup turned into blocks and never passed through as text."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlx_lm.tokenizer_utils import load as load_tokenizer

from daemon.engine.decoder import OutputDecoder, StopMatcher
from daemon.engine.events import BlockDelta, BlockStart, BlockStop


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


def decode(tokenizer, text: str, *, thinking: bool = True, stops: list[str] | None = None) -> list:
    decoder = OutputDecoder(
        tokenizer, stop_sequences=stops or [], thinking=thinking, starts_in_thinking=False, tools=[]
    )
    events = []
    for token in tokenizer.encode(text, add_special_tokens=False):
        events += decoder.feed(token)
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


def test_unparseable_tool_call_is_returned_as_text(tokenizer) -> None:
    text = "<tool_call>not json</tool_call>"
    assert blocks(decode(tokenizer, text)) == [("text", "<tool_call>not json</tool_call>")]


def test_stop_sequence_ends_text_mid_token(tokenizer) -> None:
    events = decode(tokenizer, "alpha beta gamma", stops=["ta g"])
    assert blocks(events) == [("text", "alpha be")]
