"""What the engine is asked to do: a generation job, the limits on how many it runs and queues, and the
refusal when its queue is full."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from daemon.chat.events import GenerationEvent
from daemon.chat.request import ChatRequest
from daemon.engine.prompt import Prompt
from daemon.engine.reuse import Part
from daemon.engine.sampling import SamplingParams


@dataclass(frozen=True)
class EngineLimits:
    max_sequences: int = 8
    max_queued: int = 64
    prefill_step_size: int = 1024


class Overloaded(Exception):
    """The queue is full: the request is refused at once rather than left waiting."""

    @classmethod
    def queue_full(cls, pending: int, model: str, limits: EngineLimits) -> Overloaded:
        return cls(
            f"{pending} requests are running or queued for {model} "
            f"(limit {limits.max_sequences} running + {limits.max_queued} queued)"
        )


@dataclass(eq=False)
class GenerationJob:
    prompt: Prompt
    max_tokens: int
    sampling: SamplingParams
    stop_sequences: list[str]
    emit: Callable[[GenerationEvent], None]
    label: str = "request"  # names the request in logs
    parts: list[Part] = field(default_factory=list)  # the request's structure, to explain cache misses
    request: ChatRequest | None = None  # what the prompt was rendered from (a group's other ranks render it)
    cancel_asked: bool = False
    cancelled: bool = False  # as the engine sees it: `cancel_asked`, latched at the top of an engine loop

    def cancel(self) -> None:
        """Ask the engine to stop this generation; safe from any thread."""
        self.cancel_asked = True
