"""Fault isolation inside a batch step: one request's sampler and logits processors run inside mlx-lm's step
for the whole batch, so each is wrapped to turn its exception into a fault of that request alone, which
the runner then ends while the rest of the batch goes on."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any

import mlx.core as mx

log = logging.getLogger(__name__)

Fault = Callable[[BaseException], None]


def reset_random_state() -> None:
    """Give MLX a fresh random key. A sampler that raises while mlx-lm's compiled sampling is being traced
    leaves the global key as a placeholder that can never be evaluated, which would fail every later
    sampled request; reseeding repairs it."""
    mx.random.seed(secrets.randbits(63))


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


def guard_processor(processor: Callable[[Any, mx.array], mx.array], on_fault: Fault):
    """The logits processor, or the logits unchanged for the step in which it raised."""

    def process(context: Any, logits: mx.array) -> mx.array:
        try:
            return processor(context, logits)
        except Exception as error:
            on_fault(error)
            return logits

    return process
