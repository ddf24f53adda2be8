"""A request's events from the engine thread to the asyncio task that answers it, and the one INFO line
logged when it ends."""

from __future__ import annotations

import asyncio
import logging

from daemon.api.metrics import Metrics
from daemon.chat.events import Failed, Finished, GenerationEvent
from daemon.engine.jobs import GenerationJob
from daemon.engine.prompt import Prompt

log = logging.getLogger(__name__)


class EngineEvents:
    """At most `limit` events wait undelivered: past that the client has stopped reading its stream, so the
    generation is cancelled (its sequence freed) and the stream ends with an error whenever the client reads
    again."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int):
        self.job: GenerationJob | None = None
        self._loop = loop
        self._queue: asyncio.Queue[GenerationEvent] = asyncio.Queue()
        self._limit = limit
        # Each counter has one writer (sent: the engine thread; taken: the event loop), so no lock.
        self._sent = 0
        self._taken = 0
        self._cut = False

    def emit(self, event: GenerationEvent) -> None:
        """On the engine thread."""
        if self._cut:
            return
        if self._sent - self._taken >= self._limit:
            self._cut = True
            if self.job is not None:
                self.job.cancel()
            event = Failed(f"stream cut: the client left {self._limit} events unread", overloaded=False)
        self._sent += 1
        self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    async def get(self) -> GenerationEvent:
        event = await self._queue.get()
        self._taken += 1
        return event


class RequestLog:
    """The one INFO line per request: id, model, token counts, first-token latency, speed, stop reason."""

    def __init__(self, request_id: str, model: str, prompt: Prompt, metrics: Metrics):
        self.request_id = request_id
        self.model = model
        self.metrics = metrics
        self.prompt_tokens = len(prompt.tokens)
        self.grammar = prompt.grammar
        if prompt.grammar is not None:
            metrics.grammar_compiled(model, prompt.grammar.compile_seconds)
        # Lines logged from a stream's body name the request whatever context the body runs in.
        self._names = {"request_id": request_id}

    def finished(self, event: Finished) -> None:
        self.metrics.generation(self.model, event)
        rate = (event.usage.output_tokens - 1) / event.decode_seconds if event.decode_seconds > 0 else 0.0
        ttft = f"{event.time_to_first_token:.3f}s" if event.time_to_first_token is not None else "-"
        log.info(
            "model=%s prompt=%d cached=%d output=%d ttft=%s tok/s=%.1f stop=%s%s",
            self.model,
            self.prompt_tokens,
            event.usage.cached_tokens,
            event.usage.output_tokens,
            ttft,
            rate,
            event.stop_reason,
            self._grammar_figures(event),
            extra=self._names,
        )

    def _grammar_figures(self, event: Finished) -> str:
        """` grammar=compile:1.2ms,mask:45us/tok` for a constrained request (compile 0: a kept grammar)."""
        if self.grammar is None:
            return ""
        mask = event.mask_seconds / event.constrained_tokens if event.constrained_tokens else 0.0
        return f" grammar=compile:{self.grammar.compile_seconds * 1e3:.1f}ms,mask:{mask * 1e6:.0f}us/tok"

    def failed(self, event: Failed) -> None:
        log.warning(
            "model=%s prompt=%d failed: %s", self.model, self.prompt_tokens, event.message, extra=self._names
        )
