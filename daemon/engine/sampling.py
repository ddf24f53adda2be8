"""Sampling settings: what the request says, else what the model recommends, else Anthropic's defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p, make_sampler

from daemon.chat.request import SAMPLING_FIELDS

ANTHROPIC_TEMPERATURE = 1.0


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = ANTHROPIC_TEMPERATURE
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None

    def sampler(self, vocab_size: int | None = None):
        """mlx-lm's sampler for these settings; temperature 0 is its greedy argmax. A `top_k` that keeps
        the whole vocabulary filters nothing (mlx-lm refuses it rather than ignoring it)."""
        return make_sampler(
            temp=self.temperature,
            top_p=self.top_p or 0.0,
            top_k=self._top_k(vocab_size),
            min_p=self.min_p or 0.0,
        )

    def filtered(self, logprobs: mx.array) -> mx.array:
        """The log-probabilities `sampler` draws from (divided by the temperature there): mlx-lm's filters,
        applied as its sampler applies them."""
        if 0 < (self.top_p or 0.0) < 1.0:
            logprobs = apply_top_p(logprobs, self.top_p)
        if self.min_p:
            logprobs = apply_min_p(logprobs, self.min_p, 1)
        if top_k := self._top_k(logprobs.shape[-1]):
            logprobs = apply_top_k(logprobs, top_k)
        return logprobs

    def _top_k(self, vocab_size: int | None) -> int:
        top_k = self.top_k or 0
        return 0 if vocab_size is not None and top_k >= vocab_size else top_k

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def model_defaults(generation_config: dict[str, Any]) -> dict[str, Any]:
    """The sampling values a model's `generation_config.json` recommends, in our names."""
    if generation_config.get("do_sample") is False:
        return {"temperature": 0.0}
    picked = {name: generation_config.get(name) for name in SAMPLING_FIELDS}
    return {name: value for name, value in picked.items() if value is not None}


def resolve(requested: dict[str, Any], defaults: dict[str, Any]) -> SamplingParams:
    """Each value from the request when it set one, else from the model's defaults."""
    chosen = {**defaults, **{name: value for name, value in requested.items() if value is not None}}
    return SamplingParams(**chosen)
