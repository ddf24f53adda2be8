"""From generated token ids to content-block events: text, thinking, and tool calls, with stop sequences
cut out of the text and control markup never passed through.

One `OutputDecoder` per request, fed one token at a time on the engine thread.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from mlx_lm.generate import TextStateMachine, make_text_state_machine

from daemon.engine.events import BlockDelta, BlockKind, BlockStart, BlockStop, GenerationEvent

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
    def __init__(
        self,
        tokenizer: Any,
        *,
        stop_sequences: list[str],
        thinking: bool,
        starts_in_thinking: bool,
        tools: list[dict[str, Any]],
        continues: int | None = None,
    ):
        """`continues`: the prompt's last token when the answer continues a prefilled assistant turn."""
        self._tokenizer = tokenizer
        self._detokenizer = tokenizer.detokenizer
        if continues is not None:
            # Detokenizers drop a leading space at the start of a text; a continuation must keep it.
            self._detokenizer.add_token(continues)
            self._detokenizer.finalize()
            _ = self._detokenizer.last_segment
        self._machine = make_text_state_machine(tokenizer)
        initial = "reasoning" if starts_in_thinking else "normal"
        self._state = self._machine.make_state(tokenizer.response_initial_state or initial)
        self._stops = StopMatcher(stop_sequences)
        self._show_thinking = thinking
        self._tools = tools
        self._tool_text: list[str] = []
        self._open: BlockKind | None = None
        self.stop_sequence: str | None = None
        self.tool_calls = 0
        self.parse_failures = 0

    def feed(self, token: int) -> list[GenerationEvent]:
        self._detokenizer.add_token(token)
        return self._text(self._detokenizer.last_segment)

    def finish(self) -> list[GenerationEvent]:
        """Events that close the response once generation has ended, for whatever reason."""
        self._detokenizer.finalize()
        events = self._text(self._detokenizer.last_segment) if self.stop_sequence is None else []
        self._state, rest, state = TextStateMachine.flush(self._state)
        if self.stop_sequence is None:
            events += self._segment(state, rest, final=True)
            if self._open == "text":
                events += self._emit("text", self._stops.flush())
        return events + self._close()

    def _text(self, text: str) -> list[GenerationEvent]:
        if not text or self.stop_sequence is not None:
            return []
        self._state, segments = TextStateMachine.split(self._state, text)
        events: list[GenerationEvent] = []
        for i, (state, part) in enumerate(segments):
            events += self._segment(state, part, final=i < len(segments) - 1)
            if self.stop_sequence is not None:
                break
        return events

    def _segment(self, state: str | None, text: str, *, final: bool) -> list[GenerationEvent]:
        """One stretch of text in one state; `final` when the state ended right after it."""
        if state == "tool":
            self._tool_text.append(text)
            return self._tool_call() if final else []
        kind = _KIND_OF_STATE.get(state, "text")
        if kind == "thinking" and not self._show_thinking:
            log.debug("dropping reasoning the request did not ask for: %r", text)
            return []
        if kind == "text":
            text, self.stop_sequence = self._stops.push(text)
        return self._emit(kind, text)

    def _emit(self, kind: BlockKind, text: str) -> list[GenerationEvent]:
        if not text:
            return []
        events = [] if self._open == kind else [*self._close(), BlockStart(kind)]
        self._open = kind
        return [*events, BlockDelta(text)]

    def _close(self) -> list[GenerationEvent]:
        if self._open is None:
            return []
        self._open = None
        return [BlockStop()]

    def _tool_call(self) -> list[GenerationEvent]:
        text, self._tool_text = "".join(self._tool_text), []
        try:
            call = self._tokenizer.tool_parser(text, self._tools)
            name, arguments = call["name"], call.get("arguments", {})
            if isinstance(arguments, str):
                arguments = json.loads(arguments)
            if not isinstance(name, str) or not isinstance(arguments, dict):
                raise ValueError("a tool call needs a string name and object arguments")
        except Exception as error:  # a model's malformed call must reach the client as text, not vanish
            log.warning("could not parse a tool call (%s); returning it as text", error)
            self.parse_failures += 1
            markup = f"{self._tokenizer.tool_call_start}{text}{self._tokenizer.tool_call_end or ''}"
            return self._emit("text", markup)
        self.tool_calls += 1
        return [*self._close(), BlockStart("tool_use", name), BlockDelta(json.dumps(arguments)), BlockStop()]
