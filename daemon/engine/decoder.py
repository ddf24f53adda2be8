"""From generated token ids to content-block events: text, thinking, and tool calls, with stop sequences
cut out of the text and control markup never passed through.

One `OutputDecoder` per request, fed one token at a time on the engine thread.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from mlx_lm.generate import TextStateMachine

from daemon.chat.events import BlockDelta, BlockKind, BlockStart, BlockStop, GenerationEvent
from daemon.engine.call_stream import CallReader, reader_for
from daemon.engine.prompt import Prompt
from daemon.engine.tools import GENERIC_START, ToolFormat, coerce_argument, declared

log = logging.getLogger(__name__)

_KIND_OF_STATE: dict[str | None, BlockKind] = {"normal": "text", "reasoning": "thinking"}


class StopMatcher:
    """Finds the first stop sequence in streamed text, holding back only what could still begin one."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self._held = ""

    def push(self, text: str) -> tuple[str, str | None]:
        """(text safe to emit, the stop sequence that fired or None)."""
        if not self.stops:
            return text, None
        buffer = self._held + text
        hits = [(buffer.find(stop), stop) for stop in self.stops if stop in buffer]
        if hits:
            index, stop = min(hits)
            self._held = ""
            return buffer[:index], stop
        keep = max((_overlap(buffer, stop) for stop in self.stops), default=0)
        self._held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep], None

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


def _overlap(text: str, stop: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `stop`."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0


class OutputDecoder:
    """Reads one response: text, thinking, and tool calls in the prompt's `tool_format`."""

    def __init__(self, tokenizer: Any, prompt: Prompt, stop_sequences: list[str]):
        self._tokenizer = tokenizer
        self._detokenizer = tokenizer.detokenizer
        if prompt.prefill:
            # Detokenizers drop a leading space at the start of a text; a continuation must keep it.
            self._detokenizer.add_token(prompt.tokens[-1])
            self._detokenizer.finalize()
            _ = self._detokenizer.last_segment
        self._format = prompt.tool_format
        machine = _machine_for(tokenizer, self._format)
        initial = "reasoning" if prompt.starts_in_thinking else "normal"
        if prompt.tool_opening is not None:
            initial = "tool"
        self._state = machine.make_state(tokenizer.response_initial_state or initial)
        self._stops = StopMatcher(stop_sequences)
        self._show_thinking = prompt.thinking
        self._tools = prompt.tools
        self._single_call = prompt.single_call
        self._tool_text: list[str] = [prompt.tool_opening or ""]
        self._reader = self._new_reader(prompt.tool_opening or "")
        self._arguments_sent = 0  # of the open tool_use block
        self._open: BlockKind | None = None
        self._after_thinking = False  # the next text block follows a thinking block: trim its leading blank
        self._held_space = ""  # the open block's trailing whitespace, kept back until more text comes
        self.stop_sequence: str | None = None
        self.done = False  # a single call was made: generation should end here
        self.tool_calls = 0
        self.parse_failures = 0

    @property
    def finished_early(self) -> bool:
        """The response is complete before the model ended it: a stop sequence fired or a call was made."""
        return self.stop_sequence is not None or self.done

    def feed(self, token: int) -> list[GenerationEvent]:
        self._detokenizer.add_token(token)
        return self.feed_text(self._detokenizer.last_segment)

    def finish(self) -> list[GenerationEvent]:
        """Events that close the response once generation has ended, for whatever reason."""
        self._detokenizer.finalize()
        events = self.feed_text(self._detokenizer.last_segment)
        self._state, rest, state = TextStateMachine.flush(self._state)
        if not self.finished_early:
            events += self._segment(state, rest, final=True)
            if self._open == "text":
                events += self._emit("text", self._stops.flush())
        return events + self._close()

    def feed_text(self, text: str) -> list[GenerationEvent]:
        """Events for the next piece of decoded text, however the output happens to be cut."""
        if not text or self.finished_early:
            return []
        self._state, segments = TextStateMachine.split(self._state, text)
        events: list[GenerationEvent] = []
        for i, (state, part) in enumerate(segments):
            events += self._segment(state, part, final=i < len(segments) - 1)
            if self.finished_early:
                break
        return events

    def _segment(self, state: str | None, text: str, *, final: bool) -> list[GenerationEvent]:
        """One stretch of text in one state; `final` when the state ended right after it."""
        if state == "tool":
            self._tool_text.append(text)
            events = self._stream_arguments(text)
            return events + self._tool_call() if final else events
        kind = _KIND_OF_STATE.get(state, "text")
        if kind == "thinking" and not self._show_thinking:
            log.debug("dropping reasoning the request did not ask for: %r", text)
            self._after_thinking = True
            return []
        if kind == "text":
            text, self.stop_sequence = self._stops.push(text)
        return self._emit(kind, text)

    def _emit(self, kind: BlockKind, text: str) -> list[GenerationEvent]:
        events: list[GenerationEvent] = []
        if self._open != kind:
            # A block starts at its first visible character: the blank lines templates put around
            # reasoning and calls are markup, not content.
            if kind == "thinking" or self._after_thinking:
                text = text.lstrip()
            if not text:
                return []
            self._after_thinking = kind == "thinking"
            events = [*self._close(), BlockStart(kind)]
            self._open = kind
            if not text.strip():
                return [*events, BlockDelta(text)]  # an answer that starts blank starts blank
        # Trailing whitespace waits for more text: at a block's end (before a call, after reasoning) it
        # is the template's layout, not content.
        text = self._held_space + text
        body = text.rstrip()
        self._held_space = text[len(body) :]
        return [*events, BlockDelta(body)] if body else events

    def _close(self) -> list[GenerationEvent]:
        if self._open is None:
            return []
        events: list[GenerationEvent] = []
        if self._open == "tool_use":  # the streamed arguments object ends
            events.append(BlockDelta("}" if self._arguments_sent else "{}"))
        self._open = None
        self._held_space = ""
        return [*events, BlockStop()]

    def _new_reader(self, opening: str = "") -> CallReader | None:
        if self._format is None:
            return None
        reader = reader_for(self._format.kind, self._format.parse, self._tools)
        if reader is not None:
            reader.push(opening)
        return reader

    def _stream_arguments(self, text: str) -> list[GenerationEvent]:
        """A call's block opens once its name and first argument are known (so text that merely
        looks like a call never opens one), then each argument follows as soon as its value is complete."""
        reader = self._reader
        if reader is None:
            return []
        arguments = reader.push(text)
        events: list[GenerationEvent] = []
        if self._open != "tool_use":
            if reader.name is None or not (arguments or reader.closed):
                return []
            if not declared(self._tools, reader.name):
                self._reader = None  # read whole at its end, and returned as text
                return []
            events = [*self._close(), BlockStart("tool_use", reader.name)]
            self._open = "tool_use"
            self._arguments_sent = 0
        for key, value in arguments:
            value = coerce_argument(self._tools, reader.name, key, value)
            separator = ", " if self._arguments_sent else "{"
            events.append(BlockDelta(f"{separator}{json.dumps(key)}: {json.dumps(value)}"))
            self._arguments_sent += 1
        return events

    def _tool_call(self) -> list[GenerationEvent]:
        text, self._tool_text = "".join(self._tool_text), []
        reader, self._reader = self._reader, self._new_reader()
        if self._open == "tool_use":
            return self._end_streamed_call(reader)
        markup = (
            f"{self._tokenizer.tool_call_start or GENERIC_START}{text}{self._tokenizer.tool_call_end or ''}"
        )
        if self._format is None:
            return self._emit("text", markup)  # no tools on offer: the model's markup is just text
        try:
            calls = self._format.calls(text, self._tools)
        except Exception as error:  # a model's malformed call must reach the client as text, not vanish
            log.warning("could not parse a tool call (%s); returning it as text", error)
            self.parse_failures += 1
            return self._emit("text", f"{self._format.start}{text}{self._format.end or ''}")
        events = self._close()
        for name, arguments in calls[:1] if self._single_call else calls:
            events += [BlockStart("tool_use", name), BlockDelta(json.dumps(arguments)), BlockStop()]
            self.tool_calls += 1
        self._after_thinking = True  # text after a call starts at its first visible character too
        self.done = self._single_call
        return events

    def _end_streamed_call(self, reader: CallReader) -> list[GenerationEvent]:
        """Close a call whose arguments were streamed. One cut short or malformed after its first argument
        keeps the arguments already sent (each whole); the text that could not be read follows as text."""
        events = self._close()
        self.tool_calls += 1
        self._after_thinking = True
        self.done = self._single_call and reader.closed  # a call cut short is no call made: max_tokens
        if not reader.closed:
            log.warning(
                "tool call %s ended before its arguments did; returning the unread rest as text", reader.name
            )
            self.parse_failures += 1
            events += self._emit("text", reader.rest)
            events += self._close()
        return events


def _machine_for(tokenizer: Any, tool_format: ToolFormat | None) -> TextStateMachine:
    """The states of a response: text, reasoning, and calls in `tool_format` (none: call markup is plain
    text). Built as mlx-lm's `make_text_state_machine` builds them, with two differences: the call format
    may be one the tokenizer does not know (mlxd's generic one), and stray end markers in text are
    dropped, so a model that closes what it never opened leaks no markup."""
    transitions: dict[str, list[tuple[str, str]]] = {"normal": []}
    strays = []
    if tokenizer.has_thinking:
        transitions["normal"].append((tokenizer.think_start, "reasoning"))
        transitions["reasoning"] = [(tokenizer.think_end, "normal")]
        strays.append(tokenizer.think_end)
    if tool_format is not None:
        targets = {dst for edges in tokenizer.response_transitions.values() for _, dst in edges}
        if "tool" not in targets:
            transitions["normal"].append((tool_format.start, "tool"))
        if tokenizer.has_thinking:
            transitions["reasoning"].append((tool_format.start, "tool"))
        transitions["tool"] = [(tool_format.end, "normal")] if tool_format.end else []
        if tool_format.end:
            strays.append(tool_format.end)
    for marker in [*tokenizer.structural_markers, *strays]:
        transitions["normal"].append((marker, "normal"))
    for state, edges in tokenizer.response_transitions.items():
        transitions.setdefault(state, []).extend(edges)
    return TextStateMachine(transitions)
