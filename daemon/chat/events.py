"""What a generation produces, as plain values: content-block boundaries, deltas, and how it ended.

Pure data (no MLX), so the wire layer can consume it without importing the engine's machinery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BlockKind = Literal["text", "thinking", "tool_use"]


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0


@dataclass(frozen=True)
class BlockStart:
    kind: BlockKind
    tool_name: str | None = None


@dataclass(frozen=True)
class BlockDelta:
    """Text of a text block, reasoning of a thinking block, or a piece of a tool call's JSON input."""

    text: str


@dataclass(frozen=True)
class BlockStop:
    pass


@dataclass(frozen=True)
class Finished:
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]
    usage: Usage
    stop_sequence: str | None = None
    time_to_first_token: float | None = None
    decode_seconds: float = 0.0
    tool_parse_failures: int = 0


@dataclass(frozen=True)
class Failed:
    message: str
    overloaded: bool = False
    retry: bool | None = (
        None  # whether a retry can succeed, when that is known (a model that cannot load: no)
    )


@dataclass(frozen=True)
class Started:
    """The prompt is rendered and admitted; `usage` carries its token counts."""

    usage: Usage


GenerationEvent = Started | BlockStart | BlockDelta | BlockStop | Finished | Failed
