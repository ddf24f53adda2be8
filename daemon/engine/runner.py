"""The engine thread: owns one model and runs every generation through mlx-lm's `BatchGenerator`, with
prefix reuse through the prompt cache.

Jobs arrive from any thread through `submit`; their events leave through each job's `emit` callback,
called on the engine thread. A job is cancelled by setting its flag; the engine drops it at the next step.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from daemon.engine.constraints import ThinkingBudget, ban
from daemon.engine.decoder import OutputDecoder
from daemon.engine.events import Failed, Finished, GenerationEvent, Usage
from daemon.engine.model import LoadedModel
from daemon.engine.prompt import Prompt
from daemon.engine.prompt_cache import PromptCache
from daemon.engine.reuse import Part, ReuseMonitor
from daemon.engine.sampling import SamplingParams

log = logging.getLogger(__name__)

_STOP = object()
SHUTTING_DOWN = "the server is shutting down; retry shortly"


class Overloaded(Exception):
    """The queue is full: the request is refused at once rather than left waiting."""

    @classmethod
    def queue_full(cls, pending: int, model: str, limits: EngineLimits) -> Overloaded:
        return cls(
            f"{pending} requests are running or queued for {model} "
            f"(limit {limits.max_sequences} running + {limits.max_queued} queued)"
        )


@dataclass
class GenerationJob:
    prompt: Prompt
    max_tokens: int
    sampling: SamplingParams
    stop_sequences: list[str]
    emit: Callable[[GenerationEvent], None]
    label: str = "request"  # names the request in logs
    parts: list[Part] = field(default_factory=list)  # the request's structure, to explain cache misses
    cancelled: bool = False

    def cancel(self) -> None:
        """Ask the engine to stop this generation; safe from any thread."""
        self.cancelled = True


@dataclass
class _Running:
    job: GenerationJob
    decoder: OutputDecoder
    submitted: float
    reused: int
    segments_left: int  # segment boundaries still to reach, each storing its prefix in the cache
    first_token: float | None = None
    output_tokens: int = 0

    @property
    def prewarm(self) -> bool:
        """`max_tokens: 0`: process the prompt into the cache and answer nothing."""
        return self.job.max_tokens == 0


@dataclass(frozen=True)
class EngineLimits:
    max_sequences: int = 8
    max_queued: int = 64
    prefill_step_size: int = 1024


class Engine:
    def __init__(self, loaded: LoadedModel, cache: PromptCache, limits: EngineLimits | None = None):
        self.loaded = loaded
        self.cache = cache
        self.limits = limits or EngineLimits()
        self._inbox: queue.Queue = queue.Queue()
        self._running: dict[int, _Running] = {}
        self._pending = 0  # submitted and not yet finished, queued ones included
        self._pending_lock = threading.Lock()
        self._closed = False
        self._close_lock = threading.Lock()
        self._reuse = ReuseMonitor()
        self._thread = threading.Thread(target=self._run, name=f"engine-{loaded.name}", daemon=True)
        self._thread.start()

    @property
    def active_sequences(self) -> int:
        return min(self._pending, self.limits.max_sequences)

    @property
    def queued(self) -> int:
        return max(0, self._pending - self.limits.max_sequences)

    def submit(self, job: GenerationJob) -> None:
        """Queue a job, first come first served; raises `Overloaded` when the queue is full."""
        if self._closed:
            job.emit(Failed(SHUTTING_DOWN, overloaded=True))
            return
        with self._pending_lock:
            if self._pending >= self.limits.max_sequences + self.limits.max_queued:
                raise Overloaded.queue_full(self._pending, self.loaded.name, self.limits)
            self._pending += 1
        self._inbox.put((job, time.perf_counter()))

    def close(self) -> None:
        """Stop the thread; jobs still running end with an overloaded error so clients retry."""
        # Callers race at shutdown (the grace timer and the runner's exit); each returns only once the
        # thread is gone, since MLX must not be running when the interpreter exits.
        with self._close_lock:
            if not self._closed:
                self._closed = True
                self._inbox.put(_STOP)
            self._thread.join()
            # Anything submitted while the thread was stopping.
            for job, _ in self._take_inbox(block=False):
                self._end(job, Failed(SHUTTING_DOWN, overloaded=True))

    def _run(self) -> None:
        import mlx.core as mx

        # MLX streams belong to the thread that made them, so the generator is built here.
        stream = mx.default_stream(mx.default_device())
        batch = self._new_batch(stream)
        self.cache.restore()
        while True:
            incoming = self._take_inbox(block=not self._running)
            if _STOP in incoming:
                for job, _ in (item for item in incoming if item is not _STOP):
                    self._end(job, Failed(SHUTTING_DOWN, overloaded=True))
                self._fail_all(SHUTTING_DOWN, overloaded=True)
                batch.close()
                self.cache.save()
                # The generator computes one step ahead: let that finish, then release this thread's MLX
                # streams here, since left to the thread's teardown they abort the process.
                mx.synchronize(stream)
                del batch
                mx.clear_streams()
                return
            try:
                for job, submitted in incoming:
                    self._admit(batch, job, submitted)
                self._drop_cancelled(batch)
                if not self._running:
                    continue
                prompt_responses, responses = batch.next()
                self._store_segments(batch, prompt_responses)
                for response in responses:
                    self._on_token(batch, response)
                self.cache.shrink_to(self.cache.max_bytes - batch.prompt_cache_nbytes)
            except Exception:
                log.exception("generation failed; ending the sequences in flight")
                self._fail_all("generation failed inside the engine; see the server log", overloaded=False)
                batch.close()
                batch = self._new_batch(stream)

    def _new_batch(self, stream):
        from mlx_lm.generate import BatchGenerator

        tokenizer = self.loaded.tokenizer
        return BatchGenerator(
            self.loaded.model,
            stop_tokens=[[token] for token in tokenizer.eos_token_ids],
            completion_batch_size=self.limits.max_sequences,
            prefill_batch_size=self.limits.max_sequences,
            prefill_step_size=self.limits.prefill_step_size,
            stream=stream,
        )

    def _take_inbox(self, *, block: bool) -> list:
        items = []
        try:
            items.append(self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait())
            while True:
                items.append(self._inbox.get_nowait())
        except queue.Empty:
            return items

    def _admit(self, batch, job: GenerationJob, submitted: float) -> None:
        if job.cancelled:
            self._end(job, None)
            return
        prompt = job.prompt
        hit = self.cache.fetch(prompt.tokens)
        self._reuse.check(job.label, job.parts, hit.reused, len(prompt.tokens))
        # The shared prefix (system prompt and tools) becomes its own segment when it is not cached yet, so
        # that its KV state is stored as soon as it is computed, for concurrent requests that share it.
        boundaries = [b for b in (prompt.shared_prefix,) if hit.reused < b < len(prompt.tokens) - 1]
        cuts = [hit.reused, *boundaries, len(prompt.tokens)]
        segments = [prompt.tokens[a:b] for a, b in itertools.pairwise(cuts)]
        decoder = OutputDecoder(self.loaded.tokenizer, prompt, job.stop_sequences)
        (uid,) = batch.insert_segments(
            [segments],
            max_tokens=[max(job.max_tokens, 1)],
            caches=[hit.cache],
            all_tokens=[prompt.tokens[: hit.reused]],
            samplers=[job.sampling.sampler()],
            logits_processors=[self._constraints(prompt)],
        )
        self._running[uid] = _Running(job, decoder, submitted, hit.reused, len(boundaries))

    def _constraints(self, prompt: Prompt) -> list:
        processors = []
        if prompt.banned_tokens:
            processors.append(ban(prompt.banned_tokens))
        tokenizer = self.loaded.tokenizer
        if prompt.thinking_budget is not None and tokenizer.has_thinking:
            processors.append(
                ThinkingBudget(
                    prompt.thinking_budget,
                    tuple(tokenizer.think_start_tokens),
                    tuple(tokenizer.think_end_tokens),
                    thinking=prompt.starts_in_thinking,
                )
            )
        return processors

    def _drop_cancelled(self, batch) -> None:
        gone = [uid for uid, running in self._running.items() if running.job.cancelled]
        if gone:
            # A cancelled turn's prompt is still worth keeping: a client often resends it.
            for uid, (cache, tokens) in batch.remove(gone, return_prompt_caches=True).items():
                if cache is not None and len(tokens) > self._running[uid].reused:
                    self.cache.store(tokens, cache)
            for uid in gone:
                self._end(self._running.pop(uid).job, None)

    def _store_segments(self, batch, prompt_responses) -> None:
        ended = [
            r.uid
            for r in prompt_responses
            if r.end_of_segment and not r.end_of_prompt and self._running[r.uid].segments_left
        ]
        for uid, (cache, tokens) in batch.extract_cache(ended).items():
            self._running[uid].segments_left -= 1
            self.cache.store(tokens, cache, kind="system")

    def _on_token(self, batch, response) -> None:
        running = self._running[response.uid]
        if running.first_token is None:
            running.first_token = time.perf_counter()
        decoder = running.decoder
        emit = running.job.emit
        if not running.prewarm:
            running.output_tokens += 1
            if response.finish_reason != "stop":  # the end-of-sequence token itself is not output
                for event in decoder.feed(response.token):
                    emit(event)
        if decoder.finished_early:
            cache, tokens = batch.remove([response.uid], return_prompt_caches=True)[response.uid]
            reason = "stop_sequence" if decoder.stop_sequence is not None else "tool_use"
        elif response.finish_reason is not None:
            cache, tokens = response.prompt_cache, response.all_tokens
            reason = "end_turn" if response.finish_reason == "stop" else "max_tokens"
        else:
            return
        del self._running[response.uid]
        self.cache.store(tokens, cache)
        if not running.prewarm:
            for event in decoder.finish():
                emit(event)
        if running.prewarm:
            reason = "max_tokens"
        elif reason == "end_turn" and decoder.tool_calls:
            reason = "tool_use"
        self._end(running.job, self._finished(running, reason))

    def _finished(self, running: _Running, reason: str) -> Finished:
        now = time.perf_counter()
        first = running.first_token or now
        prompt_tokens = len(running.job.prompt.tokens)
        stored = prompt_tokens - running.reused if self.cache.max_bytes else 0
        return Finished(
            stop_reason=reason,  # type: ignore[arg-type]
            stop_sequence=running.decoder.stop_sequence,
            # Anthropic's split of the prompt: read from the cache, newly written to it, and the rest.
            usage=Usage(
                input_tokens=prompt_tokens - running.reused - stored,
                output_tokens=running.output_tokens,
                cache_read_input_tokens=running.reused,
                cache_creation_input_tokens=stored,
            ),
            time_to_first_token=first - running.submitted,
            decode_seconds=now - first,
            tool_parse_failures=running.decoder.parse_failures,
        )

    def _end(self, job: GenerationJob, event: GenerationEvent | None) -> None:
        with self._pending_lock:
            self._pending -= 1
        if event is not None:
            job.emit(event)

    def _fail_all(self, message: str, *, overloaded: bool) -> None:
        for running in self._running.values():
            self._end(running.job, Failed(message, overloaded=overloaded))
        self._running.clear()
