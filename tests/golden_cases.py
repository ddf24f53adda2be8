"""What the golden tests of both wire packages share: reading a case file strictly, writing a chat request in
the form the files hold, and reading the generation events the files write."""

from __future__ import annotations

import json
from collections.abc import Set as AbstractSet
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from daemon.chat.events import (
    BlockDelta,
    BlockStart,
    BlockStop,
    Failed,
    Finished,
    GenerationEvent,
    Started,
    Usage,
)
from daemon.chat.request import Image, Reasoning, Text, ToolCall, ToolResult

PARTS = (Text, Image, ToolCall, ToolResult, Reasoning)
EVENTS = {kind.__name__: kind for kind in (Started, BlockStart, BlockDelta, BlockStop, Finished, Failed)}


def load(path: Path, required: set[str], optional: AbstractSet[str] = frozenset()) -> dict[str, Any]:
    """A case file, refused if it lacks a key or has one the test would not read (a misspelt expectation
    would otherwise go unchecked)."""
    case = json.loads(path.read_text())
    missing, unknown = required - set(case), set(case) - required - optional
    assert not missing and not unknown, f"{path.name}: missing keys {missing}, unknown keys {unknown}"
    return case


def plain(value: Any) -> Any:
    """`dataclasses.asdict` as JSON reads it, with each chat part naming its class."""
    if is_dataclass(value):
        out = {field.name: plain(getattr(value, field.name)) for field in fields(value)}
        return {"part": type(value).__name__, **out} if isinstance(value, PARTS) else out
    if isinstance(value, tuple | list):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


def generation_event(written: dict[str, Any]) -> GenerationEvent:
    """An event as a case file writes it: `{"event": "<class>", <its fields>}`."""
    values = dict(written)
    kind = EVENTS[values.pop("event")]
    if "usage" in values:
        values["usage"] = Usage(**values["usage"])
    return kind(**values)
