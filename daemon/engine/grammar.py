"""Grammars that constrain what a model writes, in llguidance's Lark: a tool call in the model's own format
that names a declared tool and carries arguments valid against its schema (forced, or lazily once the model
opens a call), and an answer that is JSON valid against a schema. They are compiled per model tokenizer and
kept, so the same tools on every turn compile once.

How each format writes one call is in daemon.engine.call_grammars; a format without a grammar there is
decoded unconstrained, and a call it makes to an undeclared tool comes back as text.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from daemon.chat.request import Tool, ToolChoice
from daemon.engine.call_grammars import CallShape, call_shape, closed_schema, json_value, literal
from daemon.engine.tools import ToolFormat

log = logging.getLogger(__name__)

CACHED_GRAMMARS = 64


class GrammarError(ValueError):
    """A schema a grammar cannot enforce, or one too large; the message names the keyword or the limit."""


@dataclass(frozen=True)
class Grammar:
    """A compiled grammar: a matcher to copy for each sequence, and what compiling it cost (0 when kept)."""

    template: Any  # llguidance.LLMatcher in its initial state
    compile_seconds: float


def tool_grammar(
    fmt: ToolFormat,
    shape: CallShape,
    tools: tuple[Tool, ...],
    *,
    forced: bool,
    name: str | None,
    single: bool,
    marker: Callable[[str], str],
    answer_schema: dict[str, Any] | None = None,
    lenient: frozenset[str] = frozenset(),
) -> str:
    """The Lark grammar of a response's calls, written in `shape`: `forced` (only calls, of `name` when
    given) or lazily constrained from the opening marker on, with free text around; `single` allows one
    call; with `answer_schema`, an answer that is not a call is JSON of that schema. Tools named in
    `lenient` keep only the part of their schema llguidance can enforce."""
    chosen = [tool for tool in tools if name is None or tool.name == name]
    start, end = marker(fmt.start), marker(fmt.end) if fmt.end else ""
    one = " | ".join(f"({shape.body(tool, marker, lenient=tool.name in lenient)})" for tool in chosen)
    within = f"({one})"
    if shape.inside is not None:  # several calls share one section
        more = "" if single else f" ({marker(shape.inside) if shape.inside else ''} ({one}))*"
        within = " ".join(
            filter(None, (literal(marker, *shape.opening), within + more, literal(marker, *shape.closing)))
        )
    sections = single or shape.inside is not None  # at most one section
    lines = ["%llguidance {}", f"call: {start} {within} {end}".rstrip()]
    if "raw_text" in one:
        lines += shape.call.rules(marker)
    if forced:
        lines.insert(1, "start: call" if sections else 'start: call ("\\n" call)*')
    elif answer_schema is not None:
        lines.insert(1, f"start: answer | call{'' if sections else '+'}")
        lines.append(f"answer: {json_value(closed_schema(answer_schema))}")
    else:
        # Text until the marker opens a call; a special-token marker can never occur inside text. After a
        # call in a format with no end marker, everything is calls.
        opening = (
            f"call_start[lazy]: TEXT {start}" if not start.startswith("<[") else f"call_start: TEXT {start}"
        )
        lines[1] = f"call: call_start {within} {end}".rstrip()
        free = "call | TEXT" if not end else "call? TEXT" if sections else "call* TEXT"
        lines.insert(1, f"start: {free}")
        lines += [opening, "TEXT: /(.|\\n)*/"]
    return "\n".join(lines)


def answer_grammar(schema: dict[str, Any], *, lenient: bool = False) -> str:
    """An answer that is JSON valid against `schema`."""
    return f"%llguidance {{}}\nstart: {json_value(closed_schema(schema), lenient=lenient)}"


def constrains_calls(
    fmt: ToolFormat | None, tools: tuple[Tool, ...], choice: ToolChoice, compiler: GrammarCompiler
) -> bool:
    """Whether the calls of a response are held to a grammar: tools on offer, in a format with one."""
    return fmt is not None and bool(tools) and choice.mode != "none" and compiler.shape(fmt) is not None


def request_grammar(
    fmt: ToolFormat | None,
    tools: tuple[Tool, ...],
    choice: ToolChoice,
    answer_schema: dict[str, Any] | None,
    compiler: GrammarCompiler,
) -> Grammar | None:
    """The grammar a response is held to, compiled: its calls (see `constrains_calls`), its answer when
    it must be JSON of a schema, or None. A schema llguidance cannot enforce is refused (`GrammarError`,
    naming the tool or the output schema and the keyword) when the request demands it be kept: the output
    schema, a forced call, a `strict` tool. A tool merely on offer keeps the part of its schema that can be
    enforced, so that one unusual tool (an MCP server's, say) never makes a whole conversation fail. The
    compile time counts everything compiled for the first time along the way."""
    calls = constrains_calls(fmt, tools, choice, compiler)
    if not calls and answer_schema is None:
        return None
    started, compiled = time.perf_counter(), compiler.compiled
    try:
        grammar = compiler.compile(_text(fmt if calls else None, tools, choice, answer_schema, compiler))
    except GrammarError:
        # Only now is each schema looked at on its own, to name the one at fault or hold it in part.
        held, lenient = _held(tools if calls else (), choice, answer_schema, compiler)
        grammar = compiler.compile(_text(fmt, held, choice, answer_schema, compiler, lenient))
    if compiler.compiled == compiled:
        return grammar  # all of it kept from before
    return Grammar(grammar.template, time.perf_counter() - started)


def _text(
    fmt: ToolFormat | None,
    tools: tuple[Tool, ...],
    choice: ToolChoice,
    answer_schema: dict[str, Any] | None,
    compiler: GrammarCompiler,
    lenient: frozenset[str] = frozenset(),
) -> str:
    """The grammar's text: the calls when `fmt` is given (a format with a grammar), else the answer."""
    if fmt is None:
        assert answer_schema is not None
        return answer_grammar(answer_schema)
    forced = choice.mode in ("required", "tool")
    shape = compiler.shape(fmt)
    assert shape is not None
    return tool_grammar(
        fmt,
        shape,
        tools,
        forced=forced,
        name=choice.name if choice.mode == "tool" else None,
        single=forced or not choice.parallel,
        marker=compiler.marker,
        answer_schema=None if forced else answer_schema,
        lenient=lenient,
    )


def _held(
    tools: tuple[Tool, ...],
    choice: ToolChoice,
    answer_schema: dict[str, Any] | None,
    compiler: GrammarCompiler,
) -> tuple[tuple[Tool, ...], frozenset[str]]:
    """The tools as the grammar can hold them, and those held only in part; raises `GrammarError` for a
    schema that must be kept whole."""
    if answer_schema is not None and (reason := compiler.check_schema(answer_schema)) is not None:
        raise GrammarError(f"the output schema cannot be enforced: {reason}")
    forced = choice.mode in ("required", "tool")
    lenient = set()
    held = list(tools)
    for i, tool in enumerate(tools):
        if (reason := compiler.check_schema(tool.parameters or {"type": "object"})) is None:
            continue
        if forced or tool.strict:
            raise GrammarError(f"tool {tool.name!r}: its input_schema cannot be enforced: {reason}")
        if compiler.check_schema(tool.parameters or {}, lenient=True) is None:
            compiler.warn_once(f"tool {tool.name!r}: {reason}; its arguments keep to the rest of its schema")
            lenient.add(tool.name)
        else:
            compiler.warn_once(f"tool {tool.name!r}: {reason}; its arguments are held to a JSON object")
            held[i] = replace(tool, parameters={"type": "object"})
    return tuple(held), frozenset(lenient)


class GrammarCompiler:
    """Compiles grammars for one model's tokenizer, keeping the most recent `CACHED_GRAMMARS`; safe from any
    thread. The llguidance tokenizer is built on first use (about a second for a large vocabulary)."""

    def __init__(self, tokenizer: Any, vocab_size: int):
        self.vocab_size = vocab_size
        self._tokenizer = tokenizer
        self._lltokenizer: Any = None
        self._kept: OrderedDict[str, Grammar | GrammarError] = OrderedDict()
        self.compiled = 0  # grammars compiled (or found not to compile), not taken from those kept
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    @property
    def lltokenizer(self) -> Any:
        with self._lock:
            if self._lltokenizer is None:
                from llguidance.hf import from_tokenizer

                hf = self._tokenizer._tokenizer
                eos = list(self._tokenizer.eos_token_ids) or None
                # A mask covers the model's logits and every token the tokenizer has, whichever is more.
                self._lltokenizer = from_tokenizer(hf, max(self.vocab_size, len(hf)), eos_token=eos)
            return self._lltokenizer

    def warn_once(self, message: str) -> None:
        """Log a warning the first time only: the same tools come on every turn."""
        with self._lock:
            if message in self._warned:
                return
            self._warned.add(message)
        log.warning("%s", message)

    def shape(self, fmt: ToolFormat) -> CallShape | None:
        """How this model writes a call in `fmt`, or None when the format has no grammar."""
        return call_shape(fmt.kind, self._tokenizer.chat_template)

    def marker(self, text: str) -> str:
        """`text` in a grammar: the special token it is (which text can never spell), else a literal."""
        ids = self._tokenizer.encode(text, add_special_tokens=False)
        if len(ids) == 1 and self.lltokenizer.is_special_token(ids[0]):
            return f"<[{ids[0]}]>"
        return json.dumps(text)

    def compile(self, grammar: str) -> Grammar:
        """The compiled grammar; raises `GrammarError` with llguidance's reason when it cannot be. Both are
        kept: a tool set that fails to compile comes again on the next turn too."""
        with self._lock:
            if (kept := self._kept.get(grammar)) is not None:
                self._kept.move_to_end(grammar)
                if isinstance(kept, GrammarError):
                    raise kept
                return Grammar(kept.template, 0.0)
        from llguidance import LLMatcher

        started = time.perf_counter()
        template = LLMatcher(self.lltokenizer, grammar, log_level=0)  # reports errors, never raises them
        outcome: Grammar | GrammarError = (
            GrammarError(_reason(template.get_error()))
            if template.is_error()
            else Grammar(template, time.perf_counter() - started)
        )
        with self._lock:
            self.compiled += 1
            self._kept[grammar] = outcome
            while len(self._kept) > CACHED_GRAMMARS:
                self._kept.popitem(last=False)
        if isinstance(outcome, GrammarError):
            raise outcome
        return outcome

    def check_schema(self, schema: dict[str, Any], *, lenient: bool = False) -> str | None:
        """Why llguidance cannot enforce `schema` (even in part, when `lenient`), or None when it can."""
        try:
            self.compile(answer_grammar(schema, lenient=lenient))
        except GrammarError as error:
            return str(error)
        return None


def _reason(message: str) -> str:
    """llguidance's message without its position and grammar listing: `Unimplemented keys: ["if"]`."""
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    first = re.sub(r"^at \d+\(\d+\): ", "", first)
    return first.removeprefix("failed to compile JSON schema: ")
