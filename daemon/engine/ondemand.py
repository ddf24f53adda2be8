"""A model's engine that exists only while the model is loaded: the first job starts the load, jobs submitted
during it wait as they would in the queue, and closing an idle engine hands its memory back.

It shows the API and the metrics an `Engine`'s face (`submit`, `active_sequences`, `queued`, `cache`)
whether or not the model is loaded. Loading itself is the registry's work, on its loader thread, which is
also the only thread that unloads, so a load and an unload of one model never overlap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from daemon.chat.events import Failed
from daemon.engine.jobs import EngineLimits, GenerationJob, Overloaded
from daemon.engine.memory import release_memory
from daemon.engine.prompt_cache import PromptCache
from daemon.engine.runner import SHUTTING_DOWN, Engine

log = logging.getLogger(__name__)

_NO_CACHE = PromptCache("", 0)  # what an unloaded model holds


class OnDemandEngine:
    def __init__(self, name: str, limits: EngineLimits, start_load: Callable[[], Future[None]]):
        self.name = name
        self.limits = limits
        self._start_load = start_load  # schedules the registry's load of this model
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._waiting: list[GenerationJob] = []
        self._loading: Future[None] | None = None
        self._closed = False
        self.weight_bytes = 0
        self.last_used = time.monotonic()
        self.last_error: str | None = None
        self.requests_served = 0  # jobs accepted since the daemon started, those in flight included

    @property
    def resident(self) -> bool:
        return self._engine is not None

    @property
    def alive(self) -> bool:
        """Loaded, and its engine's thread runs."""
        engine = self._engine
        return engine is not None and engine.alive

    @property
    def loading(self) -> bool:
        return self._loading is not None

    # As an Engine counts them: every job submitted and not finished, the first `max_sequences` as active.
    @property
    def active_sequences(self) -> int:
        return min(self._pending(), self.limits.max_sequences)

    @property
    def queued(self) -> int:
        return max(0, self._pending() - self.limits.max_sequences)

    def _pending(self) -> int:
        engine = self._engine
        return (engine.active_sequences + engine.queued if engine else 0) + len(self._waiting)

    @property
    def cache(self) -> PromptCache:
        engine = self._engine
        return engine.cache if engine else _NO_CACHE

    @property
    def kv_bytes(self) -> int:
        """KV state the loaded model holds: its sequences' and its prompt cache's (0 when unloaded)."""
        engine = self._engine
        return engine.kv_bytes if engine else 0

    def live(self) -> list[dict]:
        """The loaded model's sequences running now (see `Engine.live`)."""
        engine = self._engine
        return engine.live() if engine else []

    @property
    def busy(self) -> bool:
        """A request is running or waiting for this model."""
        return self._pending() > 0

    def submit(self, job: GenerationJob) -> None:
        """Run the job, loading the model first when it is not loaded; raises `Overloaded` when the queue is
        full. Each job accepted counts in `requests_served`."""
        with self._lock:
            self.last_used = time.monotonic()
            if self._engine is not None and not self._engine.alive:
                # Its thread stopped after an internal error (and ended its jobs): load the model afresh.
                log.warning("model %s: its engine stopped; loading it again", self.name)
                self._engine, self.weight_bytes = None, 0
            if self._engine is not None:
                self._engine.submit(job)
                self.requests_served += 1
                return
            if not self._closed:
                if len(self._waiting) >= self.limits.max_sequences + self.limits.max_queued:
                    raise Overloaded.queue_full(len(self._waiting), self.name, self.limits)
                self._waiting.append(job)
                self.requests_served += 1
                self._load_locked()
                return
        job.emit(Failed(SHUTTING_DOWN, overloaded=True))  # closed: as a closed Engine answers

    def load(self) -> Future[None]:
        """Start loading unless the model is loaded or loading; the future ends when the engine runs."""
        with self._lock:
            if self._engine is not None or self._closed:
                done: Future[None] = Future()
                done.set_result(None)
                return done
            return self._load_locked()

    def _load_locked(self) -> Future[None]:
        if self._loading is None:
            self._loading = self._start_load()
        return self._loading

    def idle_seconds(self) -> float | None:
        """Seconds since the last request ended or began; None while one is in flight."""
        with self._lock:
            if self.busy:
                # Idleness counts from the end of the last request, not from its start.
                self.last_used = time.monotonic()
                return None
            return time.monotonic() - self.last_used

    # The registry's loader thread calls the rest.

    def attach(self, engine: Engine, weight_bytes: int) -> None:
        """The load is done: the waiting jobs run on the engine."""
        with self._lock:
            self._loading = None
            if not self._closed:
                self._engine = engine
                self.weight_bytes = weight_bytes
                self.last_used = time.monotonic()  # idleness counts from the load at the earliest
                self.last_error = None
                waiting, self._waiting = self._waiting, []
                for job in waiting:
                    try:
                        engine.submit(job)
                    except Overloaded as error:
                        job.emit(Failed(str(error), overloaded=True))
                return
        engine.close()  # the server began shutting down during the load

    def fail(self, message: str, *, overloaded: bool, retry: bool | None = None) -> None:
        """The load failed: the waiting jobs end with `message`; the next request tries again."""
        with self._lock:
            self._loading = None
            self.last_error = message
            waiting, self._waiting = self._waiting, []
        for job in waiting:
            job.emit(Failed(message, overloaded=overloaded, retry=retry))

    def unload_if_idle(self, idle_for: float = 0.0) -> int:
        """Close the engine (its prompt cache's disk writes finished), unless a request is in flight or came
        within `idle_for` seconds; returns the bytes of weights freed (0 when it stays)."""
        with self._lock:
            engine = self._engine
            if engine is None or self.busy or time.monotonic() - self.last_used < idle_for:
                return 0
            self._engine = None
            freed, self.weight_bytes = self.weight_bytes, 0
        engine.close()
        del engine  # the last reference to the weights and the KV caches
        release_memory()
        return freed

    def close(self) -> None:
        """Shut down: jobs running or waiting end with an overloaded error, so clients retry."""
        with self._lock:
            self._closed = True
            engine, self._engine = self._engine, None
            waiting, self._waiting = self._waiting, []
        if engine is not None:
            engine.close()
        for job in waiting:
            job.emit(Failed(SHUTTING_DOWN, overloaded=True))
