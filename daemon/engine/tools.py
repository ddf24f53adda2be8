"""How a model writes tool calls: its markers and parser (mlx-lm's, inferred from the chat template), or
mlxd's generic format for templates without tool support; forcing a call; and fitting the arguments a
model wrote to the tool's schema."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

GENERIC_START = "<tool_call>"
GENERIC_END = "</tool_call>"


@dataclass(frozen=True)
class ToolFormat:
    start: str
    end: str | None
    parse: Callable[[str, Any], Any]
    kind: str  # mlx-lm's parser name, or "generic"

    def forced_prefix(self, name: str | None) -> str:
        """Text that opens a call (of tool `name`, when given) so the model can only continue it."""
        if self.kind in ("json_tools", "generic"):
            # The name as a JSON string, escaped; without one, the opening quote of the name the model writes.
            opening = '\n{"name": '
            return self.start + opening + (f'{json.dumps(name)}, "arguments": ' if name else '"')
        if self.kind == "qwen3_coder":
            return self.start + (f"\n<function={name}>\n" if name else "\n<function=")
        return self.start  # other formats: the call is forced, the name is the model's choice

    def calls(self, text: str, tools: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
        """(name, arguments) of each call in one call's markup; raises ValueError when it is malformed."""
        parsed = self.parse(text, tools)
        found = []
        for call in parsed if isinstance(parsed, list) else [parsed]:
            name, arguments = call.get("name"), call.get("arguments", {})
            if isinstance(arguments, str):
                arguments = json.loads(arguments)
            if not isinstance(name, str) or not name or not isinstance(arguments, dict):
                raise ValueError("a tool call needs a name and an object of arguments")
            if not declared(tools, name):
                raise ValueError(f"a call to {name!r}, a tool the request did not declare")
            found.append((name, coerce(arguments, schema_of(tools, name))))
        return found


def model_format(tokenizer: Any) -> ToolFormat | None:
    if not tokenizer.has_tool_calling:
        return None
    kind = tokenizer.init_kwargs.get("tool_parser_type", "unknown")
    return ToolFormat(tokenizer.tool_call_start, tokenizer.tool_call_end, tokenizer.tool_parser, kind)


GENERIC_FORMAT = ToolFormat(GENERIC_START, GENERIC_END, lambda text, _: json.loads(text), "generic")


def generic_instructions(tools: list[dict[str, Any]]) -> str:
    """What a model whose chat template knows no tools is told about them, in the system prompt."""
    listing = "\n".join(json.dumps(tool["function"], ensure_ascii=False) for tool in tools)
    return (
        "# Tools\n\nYou can call these tools. Each is described by a JSON object with its name, description "
        f"and JSON Schema parameters:\n<tools>\n{listing}\n</tools>\n\n"
        "To call a tool, reply with one block per call, exactly in this form and with nothing inside the "
        f"block but the JSON:\n{GENERIC_START}\n"
        f'{{"name": "tool name", "arguments": {{...}}}}\n{GENERIC_END}\n'
        "The results come back in <tool_response></tool_response> blocks."
    )


def declared(tools: list[dict[str, Any]], name: str) -> bool:
    return any(tool["function"]["name"] == name for tool in tools)


def schema_of(tools: list[dict[str, Any]], name: str) -> dict[str, Any]:
    for tool in tools:
        if tool["function"]["name"] == name:
            return tool["function"].get("parameters") or {}
    return {}


def coerce_argument(tools: list[dict[str, Any]], name: str, key: str, value: Any) -> Any:
    """One argument of a call to `name`, coerced as `coerce` does it within the whole arguments object."""
    return coerce({key: value}, schema_of(tools, name))[key]


def coerce(value: Any, schema: dict[str, Any]) -> Any:
    """The value with what the model wrote as text turned into the schema's type where that is
    unambiguous ("5" for an integer, "true" for a boolean, a JSON string for an object); anything else
    is left as written."""
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if isinstance(value, str) and kind not in (None, "string"):
        value = _from_text(value, kind)
    elif isinstance(value, str) and kind is None and any(key in schema for key in _JSON_WRITTEN):
        value = _from_json(value)
    if kind == "object" and isinstance(value, dict):
        properties = schema.get("properties") or {}
        return {key: coerce(item, properties.get(key) or {}) for key, item in value.items()}
    if kind == "array" and isinstance(value, list):
        return [coerce(item, schema.get("items") or {}) for item in value]
    return value


# Schemas with no one type, whose values a call in XML writes as JSON (see daemon.engine.grammar).
_JSON_WRITTEN = ("anyOf", "oneOf", "allOf", "const")


def _from_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _from_text(text: str, kind: str) -> Any:
    stripped = text.strip()
    try:
        if kind == "integer":
            number = float(stripped)
            return int(number) if number.is_integer() else text
        if kind == "number":
            number = float(stripped)
            return int(number) if number.is_integer() and "." not in stripped else number
        if kind == "boolean" and stripped.lower() in ("true", "false"):
            return stripped.lower() == "true"
        if kind in ("object", "array"):
            parsed = json.loads(stripped)
            return parsed if isinstance(parsed, dict | list) else text
    except ValueError:
        pass
    return text
