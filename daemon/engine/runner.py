"""The engine thread: owns one model and runs every generation through mlx-lm's `BatchGenerator`.

Jobs arrive from any thread through `submit`; their events leave through each job's `emit` callback,
called on the engine thread. A job is cancelled by setting its flag; the engine drops it at the next step.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from daemon.engine.decoder import OutputDecoder
from daemon.engine.events import Failed, Finished, GenerationEvent, Usage
from daemon.engine.model import LoadedModel
from daemon.engine.prompt import Prompt
from daemon.engine.sampling import SamplingParams

log = logging.getLogger(__name__)

_STOP = object()
SHUTTING_DOWN = "the server is shutting down; retry shortly"


@dataclass
class GenerationJob:
    prompt: Prompt
    max_tokens: int
    sampling: SamplingParams
    stop_sequences: list[str]
    emit: Callable[[GenerationEvent], None]
    cancelled: bool = False

    def cancel(self) -> None:
        """Ask the engine to stop this generation; safe from any thread."""
        self.cancelled = True


@dataclass
class _Running:
    job: GenerationJob
    decoder: OutputDecoder
    submitted: float
    first_token: float | None = None
    output_tokens: int = 0


class Engine:
    def __init__(self, loaded: LoadedModel, *, max_sequences: int = 8, prefill_step_size: int = 1024):
        self.loaded = loaded
        self.max_sequences = max_sequences
        self.prefill_step_size = prefill_step_size
        self._inbox: queue.Queue = queue.Queue()
        self._running: dict[int, _Running] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"engine-{loaded.name}", daemon=True)
        self._thread.start()

    @property
    def active_sequences(self) -> int:
        return len(self._running)

    def submit(self, job: GenerationJob) -> None:
        if self._closed:
            job.emit(Failed(SHUTTING_DOWN, overloaded=True))
        elif job.max_tokens == 0:
            usage = Usage(input_tokens=len(job.prompt.tokens))
            job.emit(Finished("max_tokens", usage, time_to_first_token=None))
        else:
            self._inbox.put((job, time.perf_counter()))

    def close(self) -> None:
        """Stop the thread; jobs still running end with an overloaded error so clients retry."""
        if not self._closed:
            self._closed = True
            self._inbox.put(_STOP)
            self._thread.join()
            # Anything submitted while the thread was stopping.
            for job, _ in self._take_inbox(block=False):
                job.emit(Failed(SHUTTING_DOWN, overloaded=True))

    def _run(self) -> None:
        import mlx.core as mx

        # MLX streams belong to the thread that made them, so the generator is built here.
        stream = mx.default_stream(mx.default_device())
        batch = self._new_batch(stream)
        while True:
            incoming = self._take_inbox(block=not self._running)
            if _STOP in incoming:
                for job, _ in (item for item in incoming if item is not _STOP):
                    job.emit(Failed(SHUTTING_DOWN, overloaded=True))
                self._fail_all(SHUTTING_DOWN, overloaded=True)
                batch.close()
                return
            for job, submitted in incoming:
                self._admit(batch, job, submitted)
            self._drop_cancelled(batch)
            if not self._running:
                continue
            try:
                _, responses = batch.next()
                for response in responses:
                    self._on_token(batch, response)
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
            completion_batch_size=self.max_sequences,
            prefill_batch_size=self.max_sequences,
            prefill_step_size=self.prefill_step_size,
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
            return
        prompt = job.prompt
        decoder = OutputDecoder(
            self.loaded.tokenizer,
            stop_sequences=job.stop_sequences,
            thinking=prompt.thinking,
            starts_in_thinking=prompt.starts_in_thinking,
            tools=prompt.tools,
            continues=prompt.tokens[-1] if prompt.prefill else None,
        )
        (uid,) = batch.insert([prompt.tokens], max_tokens=[job.max_tokens], samplers=[job.sampling.sampler()])
        self._running[uid] = _Running(job, decoder, submitted)

    def _drop_cancelled(self, batch) -> None:
        gone = [uid for uid, running in self._running.items() if running.job.cancelled]
        if gone:
            batch.remove(gone)
            for uid in gone:
                del self._running[uid]

    def _on_token(self, batch, response) -> None:
        running = self._running[response.uid]
        running.output_tokens += 1
        if running.first_token is None:
            running.first_token = time.perf_counter()
        decoder = running.decoder
        emit = running.job.emit
        if response.finish_reason != "stop":  # the end-of-sequence token itself is not output
            for event in decoder.feed(response.token):
                emit(event)
        if decoder.stop_sequence is not None:
            batch.remove([response.uid])
            reason = "stop_sequence"
        elif response.finish_reason == "length":
            reason = "max_tokens"
        elif response.finish_reason == "stop":
            reason = "end_turn"
        else:
            return
        for event in decoder.finish():
            emit(event)
        if reason == "end_turn" and decoder.tool_calls:
            reason = "tool_use"
        del self._running[response.uid]
        emit(self._finished(running, reason))

    def _finished(self, running: _Running, reason: str) -> Finished:
        now = time.perf_counter()
        first = running.first_token or now
        return Finished(
            stop_reason=reason,  # type: ignore[arg-type]
            stop_sequence=running.decoder.stop_sequence,
            usage=Usage(input_tokens=len(running.job.prompt.tokens), output_tokens=running.output_tokens),
            time_to_first_token=first - running.submitted,
            decode_seconds=now - first,
        )

    def _fail_all(self, message: str, *, overloaded: bool) -> None:
        for running in self._running.values():
            running.job.emit(Failed(message, overloaded=overloaded))
        self._running.clear()
