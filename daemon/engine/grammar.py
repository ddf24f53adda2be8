"""Grammars that constrain what a model writes, in llguidance's Lark: a tool call in the model's own format
that names a declared tool and carries arguments valid against its schema (forced, or lazily once the model
opens a call), and an answer that is JSON valid against a schema. They are compiled per model tokenizer and
kept, so the same tools on every turn compile once.

Formats with a grammar: JSON calls (mlx-lm's `json_tools`, and mlxd's generic format) and Qwen3-Coder's XML.
Other formats (`function_gemma`, `kimi_k2`, `glm47`, `minimax_m2`, `mistral`, `pythonic`, …) are decoded
unconstrained; a call they make to an undeclared tool comes back as text.
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
from daemon.engine.tools import ToolFormat

log = logging.getLogger(__name__)

GRAMMAR_FORMATS = ("json_tools", "generic", "qwen3_coder")

# How JSON is written inside a grammar: the spacing models are trained on (`{"a": 1, "b": 2}`), and no free
# whitespace, which a weak model would otherwise fill without end.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
CACHED_GRAMMARS = 64


class GrammarError(ValueError):
    """A schema a grammar cannot enforce, or one too large; the message names the keyword or the limit."""


@dataclass(frozen=True)
class Grammar:
    """A compiled grammar: a matcher to copy for each sequence, and what compiling it cost (0 when kept)."""

    template: Any  # llguidance.LLMatcher in its initial state
    compile_seconds: float


def json_value(schema: dict[str, Any], *, lenient: bool = False) -> str:
    """An inline JSON value of `schema`, written in `JSON_STYLE`; `lenient` ignores the keywords llguidance
    cannot enforce, rather than refusing the schema."""
    style = {**JSON_STYLE, "lenient": True} if lenient else JSON_STYLE
    return "%json " + json.dumps({**schema, "x-guidance": style}, ensure_ascii=False)


def closed_schema(schema: Any) -> Any:
    """The schema with every object closed to properties it does not name, unless it says otherwise: what a
    model generates is what the schema describes (which also honours `strict: true`)."""
    if isinstance(schema, list):
        return [closed_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: closed_schema(value) for key, value in schema.items()}
    if "properties" in out:  # an object that names none (`{"type": "object"}`) stays any object
        out.setdefault("additionalProperties", False)
    return out


def call_body(fmt: ToolFormat, tool: Tool, *, lenient: bool = False) -> str:
    """The grammar of one call's body, between the format's start and end markers."""
    schema = closed_schema(tool.parameters or {"type": "object"})
    if fmt.kind == "qwen3_coder":
        return _xml_call(tool.name, schema)
    call = {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": schema},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }
    return f'"\\n" {json_value(call, lenient=lenient)} "\\n"'


def _xml_call(name: str, schema: dict[str, Any]) -> str:
    """Qwen3-Coder's `<function=NAME>` with one `<parameter=KEY>` per property, in the schema's order (the
    required ones always); strings are raw text up to the closing tag, other values JSON of their schema."""
    properties = schema.get("properties") or {}
    required = set(schema.get("required") or ())
    parts = []
    for key, value_schema in properties.items():
        value = _xml_value(value_schema if isinstance(value_schema, dict) else {})
        parameter = f"({json.dumps(f'<parameter={key}>' + chr(10))} {value})"
        parts.append(parameter if key in required else f"{parameter}?")
    return f'{json.dumps(f"{chr(10)}<function={name}>{chr(10)}")} {" ".join(parts)} "</function>\\n"'


def _xml_value(schema: dict[str, Any]) -> str:
    """A parameter's value and its closing tag. A string is raw text, its length held (not its `pattern`
    or `format`: XML has no quotes to hold them within)."""
    if "enum" in schema and all(isinstance(value, str) for value in schema["enum"]):
        choices = " | ".join(json.dumps(value) for value in schema["enum"])
        return f"({choices}) {XML_CLOSE}"
    if schema.get("type") == "string":
        low, high = schema.get("minLength"), schema.get("maxLength")
        if not isinstance(low, int) and not isinstance(high, int):
            return "xml_text"
        bounds = f"{low if isinstance(low, int) else 0},{high if isinstance(high, int) else ''}"
        return f"/(.|\\n){{{bounds}}}/ {XML_CLOSE}"
    return f"{json_value(schema)} {XML_CLOSE}"


XML_CLOSE = json.dumps("\n</parameter>\n")
# Raw text ending at the closing tag, which the rule's suffix then writes (nothing taken back).
XML_TEXT = f"xml_text[suffix={XML_CLOSE}]: /(.|\\n)*/"


def tool_grammar(
    fmt: ToolFormat,
    tools: tuple[Tool, ...],
    *,
    forced: bool,
    name: str | None,
    single: bool,
    marker: Callable[[str], str],
    answer_schema: dict[str, Any] | None = None,
    lenient: frozenset[str] = frozenset(),
) -> str:
    """The Lark grammar of a response's calls: `forced` (only calls, of `name` when given) or lazily
    constrained from the opening marker on, with free text around; `single` allows one call; with
    `answer_schema`, an answer that is not a call is JSON of that schema. Tools named in `lenient` keep only
    the part of their schema llguidance can enforce."""
    chosen = [tool for tool in tools if name is None or tool.name == name]
    start, end = marker(fmt.start), marker(fmt.end) if fmt.end else '""'
    body = " | ".join(f"({call_body(fmt, tool, lenient=tool.name in lenient)})" for tool in chosen)
    lines = ["%llguidance {}", f"call: {start} ({body}) {end}"]
    if fmt.kind == "qwen3_coder":
        lines.append(XML_TEXT)
    if forced:
        lines.insert(1, "start: call" if single else 'start: call ("\\n" call)*')
    elif answer_schema is not None:
        lines.insert(1, f"start: answer | call{'' if single else '+'}")
        lines.append(f"answer: {json_value(closed_schema(answer_schema))}")
    else:
        # Text until the marker opens a call; a special-token marker can never occur inside text.
        opening = (
            f"call_start[lazy]: TEXT {start}" if not start.startswith("<[") else f"call_start: TEXT {start}"
        )
        lines[1] = f"call: call_start ({body}) {end}"
        lines.insert(1, "start: call? TEXT" if single else "start: call* TEXT")
        lines += [opening, "TEXT: /(.|\\n)*/"]
    return "\n".join(lines)


def answer_grammar(schema: dict[str, Any], *, lenient: bool = False) -> str:
    """An answer that is JSON valid against `schema`."""
    return f"%llguidance {{}}\nstart: {json_value(closed_schema(schema), lenient=lenient)}"


def constrains_calls(fmt: ToolFormat | None, tools: tuple[Tool, ...], choice: ToolChoice) -> bool:
    """Whether the calls of a response are held to a grammar: tools on offer, in a format with one."""
    return fmt is not None and bool(tools) and choice.mode != "none" and fmt.kind in GRAMMAR_FORMATS


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
    calls = constrains_calls(fmt, tools, choice)
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
    return tool_grammar(
        fmt,
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
