"""What a generation yields, as plain values: its start, content-block boundaries and deltas, and how it
ended. The engine produces them; each wire package encodes them as its stream or its one response."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BlockKind = Literal["text", "thinking", "tool_use"]


@dataclass(frozen=True)
class Usage:
    """Token counts: the prompt; the part of it read from the prefix cache, and the part newly written to
    it; the output."""

    prompt_tokens: int
    cached_tokens: int = 0
    stored_tokens: int = 0
    output_tokens: int = 0


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
    constrained_tokens: int = 0  # tokens generated under a grammar's mask
    mask_seconds: float = 0.0  # spent computing those masks
    proposed_tokens: int = 0  # speculative decoding: tokens proposed for verification
    accepted_tokens: int = 0  # and those of them the model's own decoding confirmed
    image_seconds: float = 0.0  # the vision tower's run on the prompt's images (those not cached)


@dataclass(frozen=True)
class Failed:
    message: str
    overloaded: bool = False
    retry: bool | None = None  # whether a retry can succeed, when known (a model that cannot load: no)


@dataclass(frozen=True)
class Started:
    """The prompt is admitted into the batch; `usage` carries its token counts (no output yet)."""

    usage: Usage
    cache_miss: str | None = None  # why it reused little of a recent, related prompt's prefix


GenerationEvent = Started | BlockStart | BlockDelta | BlockStop | Finished | Failed
