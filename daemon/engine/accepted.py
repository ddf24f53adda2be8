"""The jobs an engine accepted and has not ended, queued ones included. Each leaves only through `end`, which
sends its one terminal event; whatever is left when the engine stops ends through `end_all`. Safe from any
thread."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from daemon.chat.events import Failed, GenerationEvent
from daemon.engine.jobs import EngineLimits, GenerationJob, Overloaded

log = logging.getLogger(__name__)

_ENDED = object()


class AcceptedJobs:
    """`on_end` hears of each job that ends (on a group, to forget its number)."""

    def __init__(self, name: str, limits: EngineLimits, on_end: Callable[[Iterable[GenerationJob]], None]):
        self._name = name
        self._limits = limits
        self._on_end = on_end
        self._jobs: dict[GenerationJob, None] = {}
        self._lock = threading.Lock()
        self.closed = False

    def __len__(self) -> int:
        return len(self._jobs)

    def accept(self, job: GenerationJob, queue: Callable[[], None]) -> bool:
        """Take the job and `queue` it, unless closed (False); raises `Overloaded` when the queue is full."""
        with self._lock:
            if self.closed:
                return False
            if len(self._jobs) >= self._limits.max_sequences + self._limits.max_queued:
                raise Overloaded.queue_full(len(self._jobs), self._name, self._limits)
            self._jobs[job] = None
            queue()
            return True

    def add(self, jobs: Iterable[GenerationJob]) -> None:
        """Jobs another rank accepted (a group's follower runs them as rank 0 does)."""
        with self._lock:
            self._jobs.update((job, None) for job in jobs)

    def close(self) -> bool:
        """Take no more jobs; True for the call that closed it."""
        with self._lock:
            closing, self.closed = not self.closed, True
            return closing

    def latch(self) -> list[GenerationJob]:
        """The jobs whose cancellation was asked since the last call, now cancelled as the engine sees it:
        at one point of its loop (on a group, the same point on every rank)."""
        with self._lock:
            asked = [job for job in self._jobs if job.cancel_asked and not job.cancelled]
        for job in asked:
            job.cancelled = True
        return asked

    def end(self, job: GenerationJob, event: GenerationEvent | None) -> None:
        """The job's one terminal outcome: `event` (None for a cancelled job, whose client is gone)."""
        with self._lock:
            if self._jobs.pop(job, _ENDED) is _ENDED:
                return
        self._on_end([job])
        if event is not None:
            send(job, event)

    def end_all(self, message: str) -> None:
        """The engine is stopping: every job still accepted ends with an overloaded error (clients retry),
        and no more are taken."""
        with self._lock:
            self.closed = True
            jobs, self._jobs = list(self._jobs), {}
        self._on_end(jobs)
        for job in jobs:
            if not job.cancel_asked:
                send(job, Failed(message, overloaded=True))


def names(job: GenerationJob) -> dict[str, str]:
    """`extra` for a line about `job` logged outside its own handling."""
    return {"request_id": job.label}


def send(job: GenerationJob, event: GenerationEvent) -> None:
    try:
        job.emit(event)
    except Exception:  # the receiving side is gone (its event loop closed at shutdown): nothing to tell
        log.debug("could not deliver %s", type(event).__name__, exc_info=True, extra=names(job))
