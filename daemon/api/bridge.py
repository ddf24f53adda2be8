"""A request's events from the engine thread to the asyncio task that answers it, and the one INFO line
logged when it ends."""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from typing import Any

from daemon.api.activity import Activity
from daemon.api.metrics import Metrics
from daemon.chat.events import Failed, Finished, GenerationEvent, Started
from daemon.engine.jobs import GenerationJob
from daemon.engine.prompt import Prompt

log = logging.getLogger(__name__)


class LoopPost:
    """Hands events from engine threads to one event loop, waking it once for all the events posted since its
    last wake-up rather than once per event: an engine step posts a token to every stream in its batch (and
    with speculation several), and each wake-up costs the loop a system call and a turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue, GenerationEvent]] = []

    def post(self, queue: asyncio.Queue, event: GenerationEvent) -> None:
        """On an engine thread; raises RuntimeError once the loop is closed."""
        with self._lock:
            self._pending.append((queue, event))
            if len(self._pending) > 1:
                return  # a wake-up is on its way and will deliver this one too
        self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for queue, event in pending:
            queue.put_nowait(event)


_posts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopPost] = weakref.WeakKeyDictionary()


def loop_post(loop: asyncio.AbstractEventLoop) -> LoopPost:
    """The loop's one `LoopPost` (made on the loop's own thread, so no lock)."""
    if (post := _posts.get(loop)) is None:
        post = _posts[loop] = LoopPost(loop)
    return post


class EngineEvents:
    """At most `limit` events wait undelivered: past that the client has stopped reading its stream, so the
    generation is cancelled (its sequence freed) and the stream ends with an error whenever the client reads
    again."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int):
        self.job: GenerationJob | None = None
        self._post = loop_post(loop)
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
        self._post.post(self._queue, event)

    async def get(self) -> GenerationEvent:
        event = await self._queue.get()
        self._taken += 1
        return event

    def ready(self) -> list[GenerationEvent]:
        """The events already delivered, without waiting (a step posts several at once)."""
        events = []
        while not self._queue.empty():
            events.append(self._queue.get_nowait())
        self._taken += len(events)
        return events


class RequestLog:
    """The one INFO line per request: id, model, token counts, first-token latency, speed, stop reason."""

    def __init__(
        self,
        request_id: str,
        model: str,
        prompt: Prompt,
        metrics: Metrics,
        images_omitted: int = 0,
        activity: Activity | None = None,
    ):
        self.request_id = request_id
        self.activity = activity  # where the status page reads recent requests
        self.cache_miss: str | None = None
        self.model = model
        self.metrics = metrics
        self.prompt_tokens = len(prompt.tokens)
        self.images_omitted = images_omitted
        self.images_seen = len(prompt.vision.spans) if prompt.vision is not None else 0
        if images_omitted:
            metrics.images_omitted.labels(model).inc(images_omitted)
        self.grammar = prompt.grammar
        if prompt.grammar is not None:
            metrics.grammar_compiled(model, prompt.grammar.compile_seconds)
        # Lines logged from a stream's body name the request whatever context the body runs in.
        self._names = {"request_id": request_id}

    def started(self, event: Started) -> None:
        self.cache_miss = event.cache_miss

    def finished(self, event: Finished) -> None:
        self.metrics.generation(self.model, event)
        rate = (event.usage.output_tokens - 1) / event.decode_seconds if event.decode_seconds > 0 else 0.0
        self._record(
            cached_tokens=event.usage.cached_tokens,
            output_tokens=event.usage.output_tokens,
            ttft_s=event.time_to_first_token,
            tokens_per_second=rate,
            stop_reason=event.stop_reason,
            proposed_tokens=event.proposed_tokens,
            accepted_tokens=event.accepted_tokens,
            constrained_tokens=event.constrained_tokens,
            mask_us_per_token=event.mask_seconds / event.constrained_tokens * 1e6
            if event.constrained_tokens
            else None,
            image_seconds=event.image_seconds if self.images_seen else None,
        )
        ttft = f"{event.time_to_first_token:.3f}s" if event.time_to_first_token is not None else "-"
        log.info(
            "model=%s prompt=%d cached=%d output=%d ttft=%s tok/s=%.1f stop=%s%s%s%s%s",
            self.model,
            self.prompt_tokens,
            event.usage.cached_tokens,
            event.usage.output_tokens,
            ttft,
            rate,
            event.stop_reason,
            _speculation_figures(event),
            self._grammar_figures(event),
            f" images_omitted={self.images_omitted}" if self.images_omitted else "",
            f" images={self.images_seen} image_encode={event.image_seconds:.3f}s" if self.images_seen else "",
            extra=self._names,
        )

    def _grammar_figures(self, event: Finished) -> str:
        """` grammar=compile:1.2ms,mask:45us/tok` for a constrained request (compile 0: a kept grammar)."""
        if self.grammar is None:
            return ""
        mask = event.mask_seconds / event.constrained_tokens if event.constrained_tokens else 0.0
        return f" grammar=compile:{self.grammar.compile_seconds * 1e3:.1f}ms,mask:{mask * 1e6:.0f}us/tok"

    def _record(self, **figures: Any) -> None:
        if self.activity is not None:
            self.activity.record(
                {
                    "request_id": self.request_id,
                    "model": self.model,
                    "prompt_tokens": self.prompt_tokens,
                    "cache_miss": self.cache_miss,
                    **figures,
                }
            )

    def failed(self, event: Failed) -> None:
        self._record(error=event.message)
        log.warning(
            "model=%s prompt=%d failed: %s", self.model, self.prompt_tokens, event.message, extra=self._names
        )


def _speculation_figures(event: Finished) -> str:
    """` spec=accepted:40/52(77%)` when tokens were proposed: accepted of proposed, and the rate."""
    if not event.proposed_tokens:
        return ""
    rate = event.accepted_tokens / event.proposed_tokens
    return f" spec=accepted:{event.accepted_tokens}/{event.proposed_tokens}({rate:.0%})"
