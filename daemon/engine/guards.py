"""Fault isolation inside a batch step: one request's sampler and logits processors run inside mlx-lm's step
for the whole batch, so each is wrapped to turn its exception into a fault of that request alone, which
the runner then ends while the rest of the batch goes on."""

from __future__ import annotations

import logging
import random
import secrets
from collections.abc import Callable
from typing import Any

import mlx.core as mx

log = logging.getLogger(__name__)

Fault = Callable[[BaseException], None]


_seeds: random.Random = secrets.SystemRandom()


def seed_random_state(seed: int) -> None:
    """Seed MLX, and every later reset, from `seed`: a group's processes, seeded alike, stay alike."""
    global _seeds
    _seeds = random.Random(seed)
    mx.random.seed(seed)


def reset_random_state() -> None:
    """Give MLX a fresh random key. A sampler that raises while mlx-lm's compiled sampling is being traced
    leaves the global key as a placeholder that can never be evaluated, which would fail every later
    sampled request; reseeding repairs it."""
    mx.random.seed(_seeds.getrandbits(63))


def guard_sampler(sampler: Callable[[mx.array], mx.array], on_fault: Fault) -> Callable[[mx.array], mx.array]:
    """The sampler, or greedy decoding for the step in which it raised (that token is never used: the
    runner ends the request before reading it)."""

    def sample(logprobs: mx.array) -> mx.array:
        try:
            return sampler(logprobs)
        except Exception as error:
            reset_random_state()
            on_fault(error)
            return mx.argmax(logprobs, axis=-1)

    return sample


class GuardedProcessor:
    """A logits processor that returns the logits unchanged for the step in which it raised, reporting the
    fault; its snapshots pass through."""

    def __init__(self, processor: Callable[[Any, mx.array], mx.array], on_fault: Fault):
        self._processor = processor
        self._on_fault = on_fault

    def __call__(self, context: Any, logits: mx.array) -> mx.array:
        try:
            return self._processor(context, logits)
        except Exception as error:
            self._on_fault(error)
            return logits

    @property
    def complete(self) -> bool:
        """The processor holds the response complete (a grammar that allows nothing more)."""
        return getattr(self._processor, "complete", False)

    def snapshot(self) -> Any:
        return self._processor.snapshot()  # type: ignore[attr-defined]

    def restore(self, state: Any) -> None:
        self._processor.restore(state)  # type: ignore[attr-defined]
