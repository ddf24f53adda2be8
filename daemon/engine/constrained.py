"""The logits processor that holds one sequence to its grammar: each step it feeds the token just generated to
the sequence's own llguidance matcher and masks the logits to the tokens the grammar allows next.

The mask is computed on the CPU while the model's step runs: the processor starts the step's evaluation
before it asks for the previous token and computes the mask, and only the masking waits for both. A
reasoning section is left free: the grammar takes over once it has closed.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import mlx.core as mx
import numpy as np
from llguidance.numpy import fill_next_token_bitmask

log = logging.getLogger(__name__)


class GrammarConstraint:
    """Called once per generated token with the context ending in the token just fed to the model (the
    first time, the prompt's last token: nothing generated yet)."""

    def __init__(
        self,
        matcher: Any,
        vocab_size: int,
        *,
        reasoning: tuple[int, int] | None = None,
        in_reasoning: bool = False,
    ):
        self.matcher = matcher
        self.complete = False  # the grammar allows nothing more but an end: the response is whole
        self.tokens = 0  # tokens masked
        self.mask_seconds = 0.0
        self._words = np.full((1, (vocab_size + 31) // 32), -1, dtype=np.int32)
        # (start, end) token of a reasoning section the model may open before its answer; None: none.
        self._reasoning = reasoning
        self._free = in_reasoning
        self._first = True
        self._may_reason = reasoning is not None and not in_reasoning
        self._broken = False
        self._consumed = 0  # tokens the matcher took, so that a snapshot can take them back

    def snapshot(self) -> tuple:
        return self._consumed, self.complete, self._free, self._first, self._may_reason, self._broken

    def restore(self, state: tuple) -> None:
        consumed, self.complete, self._free, self._first, self._may_reason, self._broken = state
        if self._consumed > consumed:
            self.matcher.rollback(self._consumed - consumed)
        self._consumed = consumed

    def accepts(self, tokens: list[int]) -> int:
        """How many of `tokens` the grammar allows from here, without taking them (for proposed tokens)."""
        return len(tokens) if self._free else self.matcher.validate_tokens(tokens)

    def __call__(self, context: mx.array, logits: mx.array) -> mx.array:
        if self._broken or self.complete:
            return logits
        mx.async_eval(logits)  # the model's step runs while the previous token is read and the mask made
        last = int(context[-1].item())
        if self._first:
            self._first = False
        elif not self._advance(last):
            return logits
        if self._free:  # reasoning, before or still
            return logits
        return self._masked(logits)

    def _advance(self, token: int) -> bool:
        """Take the token just generated; False when this step is not constrained."""
        if self._free:
            # The reasoning's end marker is not the grammar's: the answer after it is.
            self._free = token != self._reasoning[1]  # type: ignore[index]
            return not self._free
        if self._may_reason and token == self._reasoning[0]:  # type: ignore[index]
            self._free = True
            self._may_reason = False
            return False
        self._may_reason = False
        if not self.matcher.consume_token(token):
            log.error(
                "the grammar refused token %d (%s); no longer constraining", token, self.matcher.get_error()
            )
            self._broken = True
            return False
        self._consumed += 1
        self.complete = self.matcher.is_stopped()
        return not self.complete

    def _masked(self, logits: mx.array) -> mx.array:
        started = time.perf_counter()
        fill_next_token_bitmask(self.matcher, self._words)
        words = self._words.view(np.uint32)
        if self._may_reason:
            start = self._reasoning[0]  # type: ignore[index]
            words[0, start // 32] |= np.uint32(1 << (start % 32))
        allowed = np.unpackbits(words.view(np.uint8), bitorder="little")[: logits.shape[-1]]
        self.mask_seconds += time.perf_counter() - started
        self.tokens += 1
        if not allowed.any():
            # Only a token beyond the model's logits would do (an end token the model cannot write).
            self.complete = True
            return logits
        return mx.where(mx.array(allowed.view(np.bool_))[None], logits, -mx.inf)
