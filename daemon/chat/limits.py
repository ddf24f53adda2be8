"""Bounds on the work one request may ask of the server, generous for Claude Code; past one, a 400 names it.
Strings are bounded only by the body limit (`max_body_bytes`, 32 MiB unless configured: a 413 past it)."""

from __future__ import annotations

import math
from typing import Any

from pydantic_core import to_json

from daemon.chat.errors import invalid_request

# Anthropic documents this one: "There is a limit of 100,000 messages in a single request."
MAX_MESSAGES = 100_000

# Content blocks in one message, in `system`, or in one tool result's own content.
MAX_BLOCKS_PER_MESSAGE = 10_000

# Content blocks in the whole request: system, messages, and the blocks inside tool and search results.
MAX_BLOCKS = 100_000

MAX_TOOLS = 1_000

# Anthropic's rule for a tool's name (and so for `tool_choice.name`).
TOOL_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,128}$"

MAX_TOOL_DESCRIPTION_CHARS = 256 * 1024

# A tool's `input_schema`: its size serialized as compact JSON, and how many levels its objects and arrays
# nest (`{"type": "object"}` is one).
MAX_SCHEMA_BYTES = 256 * 1024
MAX_SCHEMA_DEPTH = 64

# How deep any other free-form JSON value may nest: tool inputs, block sources, metadata, unknown fields.
MAX_VALUE_DEPTH = 128

MAX_STOP_SEQUENCES = 256
MAX_STOP_SEQUENCE_CHARS = 1_000

# Above any vocabulary; the engine treats a `top_k` that keeps the whole vocabulary as no filter.
MAX_TOP_K = 1_000_000

# Arrays and objects in a whole body, brackets inside strings counted too: the JSON parser holds the
# interpreter while it works, so ten million empty arrays (within the body limit) would stall every other
# request and stream for seconds. Claude Code's largest requests hold tens of thousands.
MAX_BODY_CONTAINERS = 1_000_000

# Not ours to set: pydantic-core's JSON parser refuses a body whose arrays and objects nest deeper (its
# recursion limit, 200, counts the levels below the top-level object). Depths here count every level.
MAX_BODY_DEPTH = 201


def check_containers(body: bytes) -> None:
    """Refuse, before parsing, a body with more arrays and objects than `MAX_BODY_CONTAINERS` (counted by
    their opening brackets, in a few milliseconds for the largest body)."""
    containers = body.count(b"[") + body.count(b"{")
    if containers > MAX_BODY_CONTAINERS:
        raise invalid_request(
            f"request body: {containers} arrays and objects (or brackets in strings); at most "
            f"{MAX_BODY_CONTAINERS} are allowed"
        )


def json_depth(value: Any, limit: int) -> int:
    """How many levels of arrays and objects `value` nests (a scalar: 0), counted no further than `limit` + 1.
    Raises ValueError on NaN or Infinity, which the parser lets into free-form values though JSON has neither.

    Level by level, with the scalars of each container sorted out by `map(type, ...)`: a 32 MiB array of
    numbers costs a fraction of a second rather than a Python step per number."""
    _finite([value])
    level = [value] if isinstance(value, dict | list) else []
    deepest = 0
    while level and deepest <= limit:
        deepest += 1
        below: list[Any] = []
        for container in level:
            children = container.values() if isinstance(container, dict) else container
            kinds = set(map(type, children))
            if float in kinds:
                _finite(children)
            if dict in kinds or list in kinds:
                below += [child for child in children if isinstance(child, dict | list)]
        level = below
    return deepest


def _finite(values: Any) -> None:
    if not all(math.isfinite(value) for value in values if isinstance(value, float)):
        raise ValueError("NaN and Infinity are not JSON numbers")


def bounded_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` itself when it is within the size and depth allowed for a tool's schema (a pydantic
    after-validator: raises ValueError otherwise)."""
    if json_depth(schema, MAX_SCHEMA_DEPTH) > MAX_SCHEMA_DEPTH:
        raise ValueError(f"nests more than {MAX_SCHEMA_DEPTH} levels deep (the limit for a schema)")
    size = len(to_json(schema))
    if size > MAX_SCHEMA_BYTES:
        raise ValueError(f"is {size} bytes as JSON; at most {MAX_SCHEMA_BYTES} are allowed")
    return schema
