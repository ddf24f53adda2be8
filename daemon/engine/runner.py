"""The engine thread: owns one model and runs every generation through one continuous batch (mlx-lm's
`BatchGenerator` over `DecodeBatch`), with prefix reuse through the prompt cache and speculation.

Jobs arrive from any thread through `submit`; their events leave through each job's `emit` callback,
called on the engine thread. A job is cancelled by setting its flag; the engine drops it at the next step.
Every accepted job ends with exactly one terminal event (or none once cancelled), whatever raises: a fault
in one request's own parts (its decoder, sampler, constraints) ends that request alone.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time

from daemon.chat.events import Failed, GenerationEvent, Started
from daemon.config.logs import current_request
from daemon.engine.accepted import AcceptedJobs, names, send
from daemon.engine.constraints import logits_processors
from daemon.engine.decode_batch import Generator
from daemon.engine.decoder import OutputDecoder
from daemon.engine.group import GROUP_FAILED
from daemon.engine.guards import reset_random_state
from daemon.engine.jobs import EngineLimits, GenerationJob
from daemon.engine.lockstep import AgreedCost, Lockstep
from daemon.engine.model import LoadedModel
from daemon.engine.prompt_cache import CacheHit, DiskReads, PromptCache
from daemon.engine.reuse import ReuseMonitor
from daemon.engine.sequence import Sequence, proposer
from daemon.engine.speculation import Speculation
from daemon.engine.vision_model import VisionPrefill

log = logging.getLogger(__name__)

_STOP = object()
_READ = object()  # a disk read finished
SHUTTING_DOWN = "the server is shutting down; retry shortly"
ENGINE_STOPPED = "the model's engine stopped after an internal error; retry to load it again"
STEP_FAILED = "generation failed inside the engine; see the server log"
REQUEST_FAILED = "generation of this request failed inside the engine; see the server log"


class Engine:
    """One model's engine thread; with `lockstep`, one rank's, in step with the rest of its group."""

    def __init__(
        self,
        loaded: LoadedModel,
        cache: PromptCache,
        limits: EngineLimits | None = None,
        lockstep: Lockstep | None = None,
    ):
        self.loaded = loaded
        self.cache = cache
        self.limits = limits or EngineLimits()
        self._lockstep = lockstep
        self._inbox: queue.Queue = queue.Queue()
        self._running: dict[int, Sequence] = {}
        # Prompts with images, prefilled apart from the batch (first come first served, a unit per loop).
        self._prefills: list[tuple[Sequence, VisionPrefill]] = []
        self._jobs = AcceptedJobs(loaded.name, self.limits, lockstep.ended if lockstep else lambda jobs: None)
        self._close_lock = threading.Lock()
        self._reuse = ReuseMonitor()
        self._reads = DiskReads(cache, lambda: self._inbox.put(_READ))
        self.kv_bytes = 0  # KV state held, of the sequences and in the prompt cache (as of the last step)
        self._vocab_size = getattr(getattr(loaded.model, "args", None), "vocab_size", None)
        if lockstep is not None:
            lockstep.group.on_lost(lambda: self._jobs.end_all(GROUP_FAILED))
        self._thread = threading.Thread(target=self._run, name=f"engine-{loaded.name}", daemon=True)
        self._thread.start()

    @property
    def active_sequences(self) -> int:
        return min(len(self._jobs), self.limits.max_sequences)

    @property
    def queued(self) -> int:
        return max(0, len(self._jobs) - self.limits.max_sequences)

    def live(self) -> list[dict]:
        """The sequences running now (read from any thread: a snapshot of the engine thread's)."""
        now, prefills = time.perf_counter(), list(self._prefills)
        running = [s.figures(now) for s in list(self._running.values())]
        return running + [s.figures(now, prefilling=True) for s, _ in prefills]

    @property
    def alive(self) -> bool:
        """The engine takes jobs: it was not closed and its thread did not stop."""
        return not self._jobs.closed

    def submit(self, job: GenerationJob) -> None:
        """Queue a job, first come first served; raises `Overloaded` when the queue is full."""
        if not self._jobs.accept(job, lambda: self._inbox.put((job, time.perf_counter()))):
            send(job, Failed(SHUTTING_DOWN, overloaded=True))

    def close(self) -> None:
        """Stop the thread; jobs still running end with an overloaded error so clients retry."""
        # Callers race at shutdown (the grace timer and the runner's exit); each returns only once the
        # thread is gone, since MLX must not be running when the interpreter exits.
        with self._close_lock:
            if self._jobs.close():
                self._inbox.put(_STOP)
            self._thread.join()

    def _run(self) -> None:
        import mlx.core as mx

        # MLX streams belong to the thread that made them, so the generator is built here.
        stream = mx.default_stream(mx.default_device())
        ending = SHUTTING_DOWN
        try:
            self._serve(stream)
        except Exception as error:
            log.exception("the engine of %s stopped after an internal error", self.loaded.name)
            ending = ENGINE_STOPPED if self._lockstep is None else GROUP_FAILED
            if self._lockstep is not None:
                self._lockstep.group.lost(str(error))
        finally:
            if self._lockstep is not None:
                self._lockstep.group.idle()
            self._jobs.end_all(ending)
            # The generator computes one step ahead: let that finish, then release this thread's MLX
            # streams here, since left to the thread's teardown they abort the process.
            with contextlib.suppress(RuntimeError):  # a group's lost rank fails what waited on it
                mx.synchronize(stream)
            mx.clear_streams()
            if self.loaded.vision is not None:
                self.loaded.model.encoder.close()

    def _serve(self, stream) -> None:
        """Admit, step and retire jobs until told to stop."""
        batch = self._new_batch(stream)
        while True:
            incoming = self._incoming()
            if _STOP in incoming:
                batch.close()
                self._reads.close()
                self.cache.close()
                return  # `_run` ends every job still here
            for job, submitted in (item for item in incoming if item is not _READ):
                self._admit(batch, job, submitted)
            for job, submitted, hit in self._reads.done():
                self._admit(batch, job, submitted, hit)
            if self._prefills:
                self._advance_prefill(batch)
            try:
                self._step(batch)
            except Exception:
                if self._lockstep is not None:  # the ranks may no longer agree on the batch
                    raise
                # A fault no single request owns (the model's forward pass, the generator itself).
                log.exception("a generation step failed; ending the %d sequences in it", len(self._running))
                for uid in list(self._running):
                    self._retire(uid, Failed(STEP_FAILED))
                reset_random_state()
                batch.close()
                batch = self._new_batch(stream)

    def _new_batch(self, stream) -> Generator:
        tokenizer = self.loaded.tokenizer
        return Generator(
            self.loaded.model,
            stop_tokens=[[token] for token in tokenizer.eos_token_ids],
            completion_batch_size=self.limits.max_sequences,
            prefill_batch_size=self.limits.max_sequences,
            prefill_step_size=self.limits.prefill_step_size,
            stream=stream,
            kv=self.loaded.kv,
            cost=AgreedCost(self._lockstep.group) if self._lockstep is not None else None,
        )

    def _incoming(self) -> list:
        """What this loop takes in: jobs (and `_STOP`, `_READ`) from the inbox, with the cancellations asked
        since the last loop; on a group, what rank 0 took, shared with every rank."""
        lockstep = self._lockstep
        idle = not self._running and not self._prefills
        taken = self._take_inbox(block=idle) if lockstep is None or lockstep.leader else []
        latched = self._jobs.latch()
        if lockstep is None:
            return taken
        state = (tuple(sorted(self._running)), self.cache.entries)
        incoming = lockstep.exchange(taken, latched, state, _STOP)
        if not lockstep.leader:
            self._jobs.add(item[0] for item in incoming if item is not _STOP)
        return incoming

    def _take_inbox(self, *, block: bool) -> list:
        items = []
        try:
            items.append(self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait())
            while True:
                items.append(self._inbox.get_nowait())
        except queue.Empty:
            return items

    def _admit(self, batch, job: GenerationJob, submitted: float, hit: CacheHit | None = None) -> None:
        """Start the job's generation (once its prefix is read, when it lies on disk), or end it at once:
        cancelled, or failed while starting."""
        if job.cancelled:
            self._jobs.end(job, None)
            return
        label = current_request.set(job.label)  # lines logged meanwhile name the request
        try:
            self._insert(batch, job, submitted, hit)
        except Exception:
            log.exception("could not start generating")
            self._jobs.end(job, Failed(REQUEST_FAILED))
        finally:
            current_request.reset(label)

    def _insert(self, batch, job: GenerationJob, submitted: float, hit: CacheHit | None) -> None:
        prompt = job.prompt
        if hit is None:
            hit = self.cache.fetch(list(prompt.vision.key) if prompt.vision else prompt.tokens)
            if hit.on_disk:
                self._reads.start(job, submitted, hit)
                return
        self.cache.count(hit)
        miss = self._reuse.check(job.parts, hit.reused, len(prompt.tokens))
        if prompt.vision is not None:
            prefill = VisionPrefill(
                self.loaded.model,
                prompt.tokens,
                prompt.vision,
                hit.reused,
                hit.cache,
                step=self.limits.prefill_step_size,
                kv=self.loaded.kv,
            )
            self._prefills.append((self._sequence(job, submitted, hit.reused, 0, miss), prefill))
            return
        # The shared prefix (system prompt and tools) becomes its own segment when it is not cached yet, so
        # that its KV state is stored as soon as it is computed, for concurrent requests that share it.
        boundaries = [b for b in (prompt.shared_prefix,) if hit.reused < b < len(prompt.tokens) - 1]
        cuts = [hit.reused, *boundaries, len(prompt.tokens)]
        segments = [prompt.tokens[a:b] for a, b in itertools.pairwise(cuts)]
        sequence = self._sequence(job, submitted, hit.reused, len(boundaries), miss)
        (uid,) = batch.insert_segments(
            [segments],
            max_tokens=[max(job.max_tokens, 1)],
            caches=[hit.cache],
            all_tokens=[prompt.tokens[: hit.reused]],
            samplers=[sequence.guarded_sampler(self._vocab_size)],
            logits_processors=[sequence.guarded_processors()],
        )
        self._start(batch, uid, sequence)

    def _sequence(
        self, job: GenerationJob, submitted: float, reused: int, cuts: int, miss: str | None
    ) -> Sequence:
        decoder = OutputDecoder(self.loaded.tokenizer, job.prompt, job.stop_sequences)
        sequence = Sequence(job, decoder, submitted, reused, cuts, cache_miss=miss)
        sequence.processors, sequence.grammar = logits_processors(job.prompt, self.loaded)
        return sequence

    def _start(self, batch, uid: int, sequence: Sequence) -> None:
        """The sequence is in the batch as `uid`: it may speculate, and its client hears it started."""
        job = sequence.job
        if not sequence.prewarm and (proposing := proposer(self.loaded, job)) is not None:
            sequence.speculation = Speculation(proposing, job.sampling, self.loaded.num_draft_tokens)
            batch.speculate(uid, sequence.speculation)
        self._running[uid] = sequence
        job.emit(Started(sequence.usage(caching=bool(self.cache.max_bytes)), sequence.cache_miss))

    def _advance_prefill(self, batch) -> None:
        """One unit of the oldest image prefill; once its cache is whole and the batch has room, it joins."""
        sequence, prefill = self._prefills[0]
        job = sequence.job
        label = current_request.set(job.label)
        try:
            if job.cancelled:
                self._prefills.pop(0)
                self._jobs.end(job, None)
            elif not prefill.finished:
                prefill.advance(idle=not self._running)
            elif batch.room:
                self._prefills.pop(0)
                sequence.image_seconds = prefill.encode_seconds
                sampler, most = sequence.guarded_sampler(self._vocab_size), max(job.max_tokens, 1)
                uid = batch.join(
                    prefill.cache,
                    job.prompt.tokens,
                    prefill.delta,
                    most,
                    sampler,
                    sequence.guarded_processors(),
                )
                self._start(batch, uid, sequence)
        except Exception:
            log.exception("could not process the prompt's images")
            if self._prefills and self._prefills[0][0] is sequence:
                self._prefills.pop(0)
            self._jobs.end(job, Failed(REQUEST_FAILED))
        finally:
            current_request.reset(label)

    def _step(self, batch) -> None:
        """One step of the whole batch; a fault of one request's own parts ends that request alone."""
        self._drop_cancelled(batch)
        if not self._running:
            self.kv_bytes = self.cache.nbytes
            return
        prompt_responses, responses = batch.next()
        for uid in [uid for uid, running in self._running.items() if running.fault is not None]:
            running = self._running[uid]
            log.error("failed in its generation step", exc_info=running.fault, extra=names(running.job))
            self._retire(uid, Failed(REQUEST_FAILED), batch)
        self._store_segments(batch, prompt_responses)
        for response in responses:
            if (running := self._running.get(response.uid)) is None:
                continue
            label = current_request.set(running.job.label)
            try:
                self._on_token(batch, response, running)
            except Exception:
                log.exception("failed while its output was being read")
                self._retire(response.uid, Failed(REQUEST_FAILED), batch)
            finally:
                current_request.reset(label)
        active = batch.prompt_cache_nbytes
        self.cache.shrink_to(self.cache.max_bytes - active)
        self.kv_bytes = active + self.cache.nbytes

    def _drop_cancelled(self, batch) -> None:
        gone = [uid for uid, running in self._running.items() if running.job.cancelled]
        if gone:
            # A cancelled turn's prompt is still worth keeping: a client often resends it.
            for uid, (cache, tokens) in batch.remove(gone, return_prompt_caches=True).items():
                if cache is not None and len(tokens) > self._running[uid].reused:
                    self.cache.store(self._running[uid].cache_key(tokens), cache)
            for uid in gone:
                self._retire(uid, None)

    def _store_segments(self, batch, prompt_responses) -> None:
        ended = [
            r.uid
            for r in prompt_responses
            if r.end_of_segment
            and not r.end_of_prompt
            and (running := self._running.get(r.uid)) is not None
            and running.segments_left
        ]
        for uid, (cache, tokens) in batch.extract_cache(ended).items():
            self._running[uid].segments_left -= 1
            self.cache.store(tokens, cache, kind="system")

    def _on_token(self, batch, response, running: Sequence) -> None:
        if running.first_token is None:
            running.first_token = time.perf_counter()
        decoder = running.decoder
        emit = running.job.emit
        if not running.prewarm:
            running.output_tokens += 1
            if response.finish_reason != "stop":  # the end-of-sequence token itself is not output
                for event in decoder.feed(response.token):
                    emit(event)
        if response.finish_reason is not None:
            # The generator has already let go of a sequence it ended, whatever the decoder saw in its
            # last token (a stop sequence or a call closing on the last token `max_tokens` allows).
            cache, tokens = response.prompt_cache, response.all_tokens
        elif decoder.finished_early or (running.grammar is not None and running.grammar.complete):
            cache, tokens = batch.remove([response.uid], return_prompt_caches=True)[response.uid]
        else:
            return
        del self._running[response.uid]
        self.cache.store(running.cache_key(tokens), cache)
        if running.speculation is not None:
            running.speculation.proposer.finish()
        if running.prewarm:
            reason = "max_tokens"
        else:
            for event in decoder.finish():  # may still find a stop sequence in text held back until now
                emit(event)
            if decoder.finished_early:
                reason = "stop_sequence" if decoder.stop_sequence is not None else "tool_use"
            elif response.finish_reason == "stop" or response.finish_reason is None:  # ended, or whole
                reason = "tool_use" if decoder.tool_calls else "end_turn"
            else:
                reason = "max_tokens"
        self._jobs.end(running.job, running.finished(reason, caching=bool(self.cache.max_bytes)))

    def _retire(self, uid: int, event: GenerationEvent | None, batch=None) -> None:
        """End a running sequence's job with `event`, freeing its place in `batch` when given."""
        running = self._running.pop(uid, None)
        if batch is not None:
            batch.remove([uid])  # a sequence the generator already ended is not there: nothing happens
        if running is not None:
            self._jobs.end(running.job, event)
