"""The decoding half of the continuous batch: mlx-lm's `GenerationBatch`, with two additions.

- A lone sequence steps on its own per-sequence caches (no batch mask, scalar positions), as
  `stream_generate` steps it, and goes back into batch caches the moment another sequence joins; neither
  move loses or recomputes any state.
- Speculative decoding inside the batch: each sequence carries its own proposals, one forward pass verifies
  them all, and each sequence accepts its own prefix. The batch's KV cache is trimmed as one, to what the
  sequence that accepted most keeps; in every other row the refused positions are rolled to the row's left
  edge and become its left padding, which the attention mask hides (mlx-lm's batch cache pads rows the
  same way when prompts of different lengths join). Steps in which nothing is verified are mlx-lm's own
  pipelined step.

`Generator` is mlx-lm's `BatchGenerator` with this batch in place of its own.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
from mlx_lm.generate import BatchGenerator, GenerationBatch, _merge_caches
from mlx_lm.models.cache import BatchKVCache, KVCache, QuantizedKVCache, dynamic_roll, make_prompt_cache

from daemon.engine.quantized_cache import quantized
from daemon.engine.speculation import Speculation, propose_all, verify
from daemon.engine.step_cost import StepCost


@dataclass
class _Timing:
    """A step, as `StepCost` is told of it once the next begins."""

    start: float
    tokens: int  # fed to the model: the rows
    prefilling: bool  # it also processed prompts: it says nothing of decoding's cost
    synchronous: bool  # it verified proposals, or followed a step that did: its period is no pipelined one
    returned: float = 0.0  # when it handed its output to the engine
    output: int = 0  # tokens it output


@dataclass
class _Scored:
    """One row's verification, before its verdict is read."""

    proposal: list[int]  # as verified: the constraints may have cut it
    offered: int  # as proposed
    logprobs: mx.array  # one row per verified position
    accepted: mx.array | None  # per proposed token; None: nothing proposed
    candidates: mx.array  # the next token where each was refused, then after all
    snapshots: list  # of the processors, before each position


class DecodeBatch(GenerationBatch):
    def __init__(self, *args: Any, **kwargs: Any):
        self.speculations: dict[int, Speculation] = {}  # by uid; shared with the `Generator`
        self.deltas: dict[int, int] = {}  # by uid: a vision prompt's position shift (see `vision_model`)
        self._alone = False  # the one sequence steps on per-sequence caches
        self.cost = StepCost()
        self.prefilling = False  # set by the `Generator`: this step also processes prompts
        self._timing: _Timing | None = None  # of the step under way
        self._verified = False  # the last step verified proposals: the next has nothing in flight
        self._rows_changed = False  # sequences joined or left since the last step began
        super().__init__(*args, **kwargs)

    # -- the batch's rows -------------------------------------------------------------------------------

    def extend(self, batch: GenerationBatch) -> None:
        self._rows_changed = True
        self._rejoin()
        super().extend(batch)

    def filter(self, keep: list[int]) -> None:
        self._rows_changed = True
        for row in set(range(len(self.uids))) - set(keep):
            self.drop(self.uids[row])
        if keep:
            self._rejoin()
        self._alone = False
        super().filter(keep)

    def drop(self, uid: int) -> None:
        """Forget a sequence that left the batch (or never reached it)."""
        if (speculation := self.speculations.pop(uid, None)) is not None:
            speculation.proposer.leave()
        self.deltas.pop(uid, None)

    def extract_cache(self, idx: int) -> list[Any]:
        if self._alone:
            return list(self.prompt_cache)
        return super().extract_cache(idx)

    def _go_alone(self) -> None:
        if len(self.uids) == 1 and not self._alone and self._plain_attention():
            self.prompt_cache = [layer.extract(0) for layer in self.prompt_cache]
            self._alone = True

    def _rejoin(self) -> None:
        if self._alone:
            self.prompt_cache = _merge_caches([self.prompt_cache])
            self._alone = False

    def _plain_attention(self) -> bool:
        """Every layer's cache is plain attention's (quantized or not), which can be split off, merged and
        trimmed freely."""
        return bool(self.prompt_cache) and all(
            isinstance(layer, (BatchKVCache, KVCache, QuantizedKVCache)) for layer in self.prompt_cache
        )

    # -- stepping ---------------------------------------------------------------------------------------

    def next(self) -> list[GenerationBatch.Response]:
        if not self.deltas:
            return self._next()
        with self.model.shifted([self.deltas.get(uid, 0) for uid in self.uids]):
            return self._next()

    def _next(self) -> list[GenerationBatch.Response]:
        self._time_last_step()
        if not self.uids:
            self._timing = None
            return []
        self._go_alone()
        limits = self._plan() if self.speculations else None
        responses = self._speculative_next(limits) if limits and any(limits) else super().next()
        if self._timing is not None:
            self._timing.returned, self._timing.output = time.perf_counter(), len(responses)
        if self.speculations:
            outputs: dict[int, list[int]] = {}
            for response in responses:
                outputs.setdefault(response.uid, []).append(response.token)
            for uid, tokens in outputs.items():
                if (speculation := self.speculations.get(uid)) is not None:
                    speculation.took(tokens)
        return responses

    def _time_last_step(self) -> None:
        """A step costs the time from its start to the next one's: the model's pass, what the engine did with
        its output meanwhile and, for a pipelined step, less what overlapped. Steps that also processed
        prompts say nothing of decoding's cost."""
        now, last = time.perf_counter(), self._timing
        # A step after which sequences joined or left also paid for their admission or their end.
        if last is not None and not last.prefilling and not self._rows_changed:
            if not last.synchronous:
                self.cost.observe(last.tokens, now - last.start, pipelined=True)
            if last.output:
                self.cost.observe_host((now - last.returned) / last.output)
        self._timing = _Timing(now, len(self.uids), self.prefilling, synchronous=self._verified)
        self._verified = self._rows_changed = False

    def _plan(self) -> list[int]:
        """Each row's longest proposal this step: of the rows whose proposers are ready, as long as their
        proposals are now, cut to the width whose expected output per second (from each row's acceptance and
        the measured cost of wide steps) is best. Decided before the rows' newest tokens are known, so that
        a step that verifies nothing need not wait for them: it stays mlx-lm's pipelined step."""
        if not self._plain_attention():
            return [0] * len(self.uids)
        lengths, gains = [], []
        for row in range(len(self.uids)):
            speculation = self.speculations.get(self.uids[row])
            room = self.max_tokens[row] - self._num_tokens[row] - 1  # never propose past max_tokens
            lengths.append(speculation.wanted(room) if speculation else 0)
            gains.append([speculation.expected(m) for m in range(lengths[-1] + 1)] if speculation else [1.0])
        width = self.cost.best_width(len(self.uids), gains) if any(lengths) else 1
        limits = [min(length, width - 1) for length in lengths]
        for row, limit in enumerate(limits):
            if not limit and (speculation := self.speculations.get(self.uids[row])) is not None:
                speculation.shadow()
        return limits

    def _speculative_next(self, limits: list[int]) -> list[GenerationBatch.Response]:
        """One step that feeds each row its next token and its proposal (at most `limits[row]` tokens), and
        verifies them."""
        last = self._next_tokens.tolist()
        started = time.perf_counter()  # what the step costs: the proposals (a draft's passes) and the check
        asks = {
            row: (self.speculations[uid], token, limit)
            for row, (uid, token, limit) in enumerate(zip(self.uids, last, limits, strict=True))
            if limit and uid in self.speculations
        }
        proposed = propose_all(asks)
        proposals = [proposed[row][0] if row in proposed else [] for row in range(len(last))]
        drawn = [proposed[row][1] if row in proposed else None for row in range(len(last))]
        if not any(proposals):
            return super().next()
        fed = [[token, *proposal] for token, proposal in zip(last, proposals, strict=True)]
        width = max(map(len, fed))
        inputs = mx.array([row + row[-1:] * (width - len(row)) for row in fed])  # the filler is never read
        logits = self.model(inputs, cache=self.prompt_cache)

        scored = [
            self._score_row(row, logits[row], fed[row], proposal, q)
            for row, (proposal, q) in enumerate(zip(proposals, drawn, strict=True))
        ]
        mx.eval([(s.accepted, s.candidates) for s in scored])  # one wait for every row's verdict
        outcomes = [self._settle_row(row, s) for row, s in enumerate(scored)]
        # Each row keeps what it fed up to its last accepted token.
        valid = [1 + outcome[0] for outcome in outcomes]
        kept = max(valid)
        for layer in self.prompt_cache:
            layer.trim(width - kept)
        self._realign([kept - rows for rows in valid])
        mx.eval([outcome[1:3] for outcome in outcomes], [layer.state for layer in self.prompt_cache])
        self.cost.observe(len(fed) * width, time.perf_counter() - started, pipelined=False)
        if self._timing is not None:
            self._timing.synchronous = True
        self._verified = True
        return self._respond(fed, valid, outcomes)

    def _realign(self, refused: list[int]) -> None:
        """Roll each row's `refused` last positions to its left edge, where they become left padding."""
        if not any(refused):
            return
        shifts = mx.array(refused)
        for layer in self.prompt_cache:  # BatchKVCache: a lone row refuses nothing the trim left
            end = layer._idx

            def roll(x: mx.array, end: int = end) -> mx.array:
                return dynamic_roll(x[..., :end, :], shifts[:, None], axis=2)

            quantized_layer = isinstance(layer.keys, tuple)  # BatchQuantizedKVCache: its triples
            layer.keys = tuple(map(roll, layer.keys)) if quantized_layer else roll(layer.keys)
            layer.values = tuple(map(roll, layer.values)) if quantized_layer else roll(layer.values)
            layer.left_padding = layer.left_padding + shifts
            layer.offset = layer.offset - shifts

    def _score_row(self, row: int, logits: mx.array, fed: list[int], proposal: list[int], drawn) -> _Scored:
        """The row's log-probabilities at its proposal's positions, through its logits processors (which
        see each proposed token in turn), and the lazy verdict on its proposal."""
        offered = len(proposal)
        rows = logits[: len(proposal) + 1]
        processors = self.logits_processors[row] or ()
        snapshots = []
        if processors:
            processed = []
            for j in range(len(proposal) + 1):
                if j and processed[-1][0, fed[j]].item() == -float("inf"):
                    # The constraints refuse this proposal: no processor may take it (a grammar would break).
                    proposal = proposal[: j - 1]
                    break
                snapshots.append([p.snapshot() for p in processors])
                scores = rows[j : j + 1]
                for processor in processors:
                    scores = processor(mx.array(fed[j : j + 1]), scores)
                if j and any(getattr(p, "complete", False) for p in processors):
                    # The output ends at this token: it may only be a step's last, where the runner looks.
                    for processor, state in zip(processors, snapshots[j], strict=True):
                        processor.restore(state)
                    proposal = proposal[: j - 1]
                    break
                processed.append(scores)
            rows = mx.concatenate(processed)
        logprobs = rows - mx.logsumexp(rows, axis=-1, keepdims=True)
        if not proposal:
            sampler = self.samplers[row] if self.samplers else self.fallback_sampler
            return _Scored(proposal, offered, logprobs, None, sampler(logprobs), snapshots)
        sampling = self.speculations[self.uids[row]].sampling
        if drawn is not None:
            drawn = drawn[: len(proposal)]  # the constraints may have cut the proposal
        return _Scored(proposal, offered, logprobs, *verify(logprobs, proposal, sampling, drawn), snapshots)

    def _settle_row(self, row: int, scored: _Scored) -> tuple[int, mx.array, mx.array, mx.array]:
        """(tokens accepted, next token, its log-probabilities, each fed token's log-probabilities); the
        processors are taken back to the accepted tokens."""
        if scored.accepted is None:
            return 0, scored.candidates[0], scored.logprobs[0], scored.logprobs
        flags = scored.accepted.tolist()
        taken = flags.index(False) if False in flags else len(scored.proposal)
        self.speculations[self.uids[row]].record(scored.offered, taken)  # what constraints cut was refused
        if scored.snapshots and taken < len(scored.proposal):
            processors = self.logits_processors[row]
            for processor, state in zip(processors, scored.snapshots[taken + 1], strict=True):
                processor.restore(state)
        return taken, scored.candidates[taken], scored.logprobs[taken], scored.logprobs

    def _respond(self, fed, valid, outcomes) -> list[GenerationBatch.Response]:
        """Output each row's newly decided tokens (its next token and the proposals it accepted), up to
        a stop or `max_tokens`, and set up the next step."""
        responses, keep = [], []
        next_tokens, next_logprobs = [], []
        for row, (taken, token, logprobs, fed_logprobs) in enumerate(outcomes):
            before = list(self.tokens[row])
            self.tokens[row] += fed[row][: valid[row]]
            output = fed[row][: 1 + taken]
            scores = [self._next_logprobs[row], *(fed_logprobs[j] for j in range(taken))]
            if self.logits_processors[row]:
                self._token_context[row].update_and_fetch(mx.array(output))
            finished = None
            for n, (out, score) in enumerate(zip(output, scores, strict=True)):
                self._num_tokens[row] += 1
                reason = "length" if self._num_tokens[row] >= self.max_tokens[row] else None
                if self._matchers[row].advance(out):
                    reason = "stop"
                if reason is not None:
                    through = fed[row][: n + 1]
                    finished = self._finished_row(row, before, through, valid[row], out, score, reason)
                    responses.append(finished)
                    break
                responses.append(self.Response(self.uids[row], out, score, None, None, None))
            if finished is None:
                keep.append(row)
            next_tokens.append(token)
            next_logprobs.append(logprobs)
        self._next_tokens = mx.stack(next_tokens).astype(mx.uint32)
        self._next_logprobs = next_logprobs
        if len(keep) < len(self.uids):
            self.filter(keep)
        return responses

    def _finished_row(self, row, before, through, kept, token, logprobs, reason) -> GenerationBatch.Response:
        """A row that ends inside its accepted run: its cache and tokens end at its last output token."""
        cache = self.extract_cache(row)
        if extra := kept - len(through):
            for layer in cache:
                layer.trim(extra)
        return self.Response(self.uids[row], token, logprobs, reason, cache, before + through)


class Generator(BatchGenerator):
    """mlx-lm's continuous batch over `DecodeBatch`."""

    def __init__(
        self, model: Any, cost: StepCost | None = None, kv: tuple[int, int] = (0, 64), **kwargs: Any
    ):
        """`cost`: what decides how wide verification steps are (by default measured as the engine runs);
        `kv`: the KV cache's bits (0: the model's own precision) and group size."""
        super().__init__(model, **kwargs)
        self._generation_batch = DecodeBatch.empty(self.model, self.sampler)
        self.kv = kv
        if cost is not None:
            self._generation_batch.cost = cost

    def insert_segments(self, segments, max_tokens=None, caches=None, *args: Any, **kwargs: Any):
        """mlx-lm's, with a quantized cache for each sequence that brings none, when `kv` asks for one."""
        bits, group_size = self.kv
        if bits:
            fresh = (quantized(make_prompt_cache(self.model), group_size, bits) for _ in segments)
            caches = [
                cache if cache is not None else next(fresh) for cache in caches or [None] * len(segments)
            ]
        return super().insert_segments(segments, max_tokens, caches, *args, **kwargs)

    def _next(self):
        self._generation_batch.prefilling = bool(self._unprocessed_sequences) or len(self._prompt_batch) > 0
        return super()._next()

    def join(self, cache: list, tokens: list[int], delta: int, max_tokens: int, sampler, processors) -> int:
        """Start decoding a sequence whose cache holds every token of its prompt but the last (a prompt with
        images, prefilled apart); `delta` shifts its positions. Returns its uid."""
        uid, self._uid_count = self._uid_count, self._uid_count + 1
        with mx.stream(self._stream), _shifted(self.model, [delta]):
            joining = GenerationBatch(
                self.model,
                [uid],
                mx.array(tokens[-1:]),
                _merge_caches([cache]),
                [list(tokens[:-1])],
                [sampler],
                self.sampler,
                [processors],
                [self._default_stop_sequences],
                [max_tokens],
            )
            self._generation_batch.extend(joining)
        if delta:
            self._generation_batch.deltas[uid] = delta
        return uid

    @property
    def room(self) -> bool:
        """Another sequence may join the decoding batch now."""
        return len(self._generation_batch) < self.completion_batch_size

    def speculate(self, uid: int, speculation: Speculation) -> None:
        """Let the sequence propose tokens from here on."""
        self._generation_batch.speculations[uid] = speculation

    def speculation(self, uid: int) -> Speculation | None:
        return self._generation_batch.speculations.get(uid)

    def remove(self, uids, return_prompt_caches=False):
        caches = super().remove(uids, return_prompt_caches)
        for uid in uids:
            self._generation_batch.drop(uid)
        return caches


def _shifted(model: Any, deltas: list[int]) -> Any:
    """`model.shifted(deltas)` for a vision model's language model; nothing to do for any other."""
    return model.shifted(deltas) if hasattr(model, "shifted") else contextlib.nullcontext()
