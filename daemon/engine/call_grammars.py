"""How each model family writes one tool call, as a grammar in llguidance's Lark: the shape of the call
between the format's start and end markers, with the name one declared tool's and the arguments valid
against its schema. The shapes follow the chat templates mlx-lm's parsers read (the parser of each format
reads back what its grammar allows; tests/test_call_grammars.py checks every one).

Two families cover the formats with a grammar:
- the arguments as one JSON object: mlx-lm's `json_tools` and mlxd's generic form (`{"name": …,
  "arguments": …}`), `kimi_k2` (`functions.NAME:0` then the JSON), `mistral` (`NAME[ARGS]{…}`, or the older
  JSON list of calls);
- one tagged value per argument, a string raw text and any other value JSON: `qwen3_coder`, `glm47` (and
  `laguna`, which writes as it does), `longcat`, `minimax_m2`, `minicpm5`, `muse_spark` (its strings JSON
  too, as its parser reads them).

Formats without one: `pythonic`, `function_gemma` and `gemma4` write arguments as Python literals or in
Gemma's own quoting, not JSON, so holding them to a JSON Schema would take a schema-to-grammar converter
of mlxd's own; `kimi_k3` (typed attributes per value) is not covered yet. They decode unconstrained.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daemon.chat.request import Tool

# How JSON is written inside a grammar: the spacing models are trained on (`{"a": 1, "b": 2}`), and no free
# whitespace, which a weak model would otherwise fill without end.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
NEWLINE = "\n?"  # a piece that stands for an optional newline, where a family's templates differ

Marker = Callable[[str], str]  # literal text as a grammar item: the special token it is, else a string


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


def literal(marker: Marker, *texts: str) -> str:
    """Literal pieces in a row; `NEWLINE` is an optional newline."""
    return " ".join('"\\n"?' if text == NEWLINE else marker(text) for text in texts if text)


@dataclass(frozen=True)
class JsonCall:
    """A call whose arguments are one JSON object: `head` (with `{name}`) before it, `tail` after. With
    `whole`, the call is the object `{"name": …, "arguments": …}` itself, between `head` and `tail`."""

    head: tuple[str, ...] = ()
    tail: tuple[str, ...] = ()
    whole: bool = False

    def body(self, tool: Tool, schema: dict[str, Any], marker: Marker, lenient: bool) -> str:
        if self.whole:
            schema = {
                "type": "object",
                "properties": {"name": {"const": tool.name}, "arguments": schema},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        head = literal(marker, *(piece.replace("{name}", tool.name) for piece in self.head))
        return f"{head} {json_value(schema, lenient=lenient)} {literal(marker, *self.tail)}".strip()

    def rules(self, marker: Marker) -> list[str]:
        return []


@dataclass(frozen=True)
class TaggedCall:
    """A call written as `head` (with `{name}`), then per argument `key` (with `{key}`), its value and
    `close`, then `tail`. Arguments come in the schema's order, the required ones always. A string is raw
    text up to the closing piece, its length held (not its `pattern` or `format`: there are no quotes to
    hold them within) unless `json_strings`; any other value is JSON of its schema. `bare` writes a call
    without arguments, where the parser cannot read one in the tagged form."""

    head: tuple[str, ...]
    key: tuple[str, ...]
    close: tuple[str, ...]
    tail: tuple[str, ...]
    json_strings: bool = False
    bare: JsonCall | None = None

    def body(self, tool: Tool, schema: dict[str, Any], marker: Marker, lenient: bool) -> str:
        properties = schema.get("properties") or {}
        if not properties and self.bare is not None:
            return self.bare.body(tool, schema, marker, lenient)
        required = set(schema.get("required") or ())
        parts = [literal(marker, *(piece.replace("{name}", tool.name) for piece in self.head))]
        for key, value_schema in properties.items():
            opening = literal(marker, *(piece.replace("{key}", key) for piece in self.key))
            value = self._value(value_schema if isinstance(value_schema, dict) else {}, marker, lenient)
            parts.append(f"({opening} {value})" + ("" if key in required else "?"))
        parts.append(literal(marker, *self.tail))
        return " ".join(part for part in parts if part)

    def rules(self, marker: Marker) -> list[str]:
        """The rule of raw text: up to the closing piece, which the rule's suffix then writes (nothing
        taken back); a special-token close cannot occur in text, so it simply follows."""
        close = marker(self.close[0])
        if close.startswith("<["):
            return [f"raw_text: /(.|\\n)*/ {literal(marker, *self.close)}"]
        rest = literal(marker, *self.close[1:])
        return [f"raw_text: raw_body {rest}".strip(), f"raw_body[suffix={close}]: /(.|\\n)*/"]

    def _value(self, schema: dict[str, Any], marker: Marker, lenient: bool) -> str:
        close = literal(marker, *self.close)
        if self.json_strings:
            return f"{json_value(schema, lenient=lenient)} {close}"
        if "enum" in schema and all(isinstance(value, str) for value in schema["enum"]):
            choices = " | ".join(json.dumps(value) for value in schema["enum"])
            return f"({choices}) {close}"
        if schema.get("type") == "string":
            low, high = schema.get("minLength"), schema.get("maxLength")
            if not isinstance(low, int) and not isinstance(high, int):
                return "raw_text"
            bounds = f"{low if isinstance(low, int) else 0},{high if isinstance(high, int) else ''}"
            return f"/(.|\\n){{{bounds}}}/ {close}"
        return f"{json_value(schema, lenient=lenient)} {close}"


@dataclass(frozen=True)
class CallShape:
    """A format's calls: `call` for one, and how several follow each other: each in its own section
    (start and end markers around it, sections apart by a newline), or, with `inside` set, within one
    section, apart by `inside` (between `opening` and `closing` pieces)."""

    call: JsonCall | TaggedCall
    inside: str | None = None
    opening: tuple[str, ...] = ()
    closing: tuple[str, ...] = ()

    def body(self, tool: Tool, marker: Marker, *, lenient: bool = False) -> str:
        """The grammar of one call to `tool`, between the format's start and end markers."""
        return self.call.body(tool, closed_schema(tool.parameters or {"type": "object"}), marker, lenient)


_XML = TaggedCall(
    ("\n<function={name}>\n",), ("<parameter={key}>\n",), ("\n</parameter>\n",), ("</function>\n",)
)
_GLM = TaggedCall(
    ("{name}", NEWLINE),
    ("<arg_key>", "{key}", "</arg_key>", NEWLINE, "<arg_value>"),
    ("</arg_value>", NEWLINE),
    (),
)
SHAPES: dict[str, CallShape] = {
    "json_tools": CallShape(JsonCall(("\n",), ("\n",), whole=True)),
    "generic": CallShape(JsonCall(("\n",), ("\n",), whole=True)),
    "kimi_k2": CallShape(
        JsonCall(
            ("<|tool_call_begin|>", "functions.{name}:0", "<|tool_call_argument_begin|>"),
            ("<|tool_call_end|>",),
        ),
        inside="",
    ),
    "mistral": CallShape(JsonCall(("{name}", "[ARGS]")), inside="[TOOL_CALLS]"),
    "mistral_list": CallShape(JsonCall(whole=True), inside=", ", opening=("[",), closing=("]",)),
    "qwen3_coder": CallShape(_XML),
    "glm47": CallShape(_GLM),
    "laguna": CallShape(_GLM),
    "longcat": CallShape(
        TaggedCall(
            ("{name}", NEWLINE),
            ("<longcat_arg_key>", "{key}", "</longcat_arg_key>", NEWLINE, "<longcat_arg_value>"),
            ("</longcat_arg_value>", NEWLINE),
            (),
            bare=JsonCall(whole=True),  # its parser reads a name alone only with an argument after it
        )
    ),
    "minimax_m2": CallShape(
        TaggedCall(
            ('<invoke name="{name}">\n',),
            ('<parameter name="{key}">',),
            ("</parameter>\n",),
            ("</invoke>\n",),
        ),
        inside="",
        # Not a closing newline: llguidance reads a literal that begins a longer one as the longer one.
        opening=("\n",),
    ),
    "minicpm5": CallShape(TaggedCall(('"{name}">',), ('<param name="{key}">',), ("</param>",), ())),
    "muse_spark": CallShape(
        TaggedCall(
            ('<atem:invoke name="{name}">',),
            ('<atem:parameter name="{key}">',),
            ("</atem:parameter>",),
            ("</atem:invoke>",),
            json_strings=True,
        ),
        inside="",
    ),
}


def call_shape(kind: str, chat_template: Any) -> CallShape | None:
    """The shape of a format's calls, or None for a format without a grammar. Mistral's templates write
    `NAME[ARGS]{…}` since v11 and a JSON list of calls before."""
    if kind == "mistral" and "[ARGS]" not in str(chat_template or ""):
        kind = "mistral_list"
    return SHAPES.get(kind)
