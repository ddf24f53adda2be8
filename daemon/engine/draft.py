"""A draft model as a sequence's proposer: a small model of the same vocabulary decodes a few tokens ahead,
and the main model verifies them in one pass. The draft keeps its own KV cache per sequence, caught up on the
prompt a chunk per engine step (so a long prompt never holds the batch up), trimmed back to what the main
model accepted, and stored in a prompt cache of its own at the end, so that the next turn starts from it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

from daemon.engine.jobs import EngineLimits
from daemon.engine.model import PreparedModel, load_weights, prepare_model
from daemon.engine.prompt_cache import PromptCache
from daemon.engine.sampling import SamplingParams
from daemon.store.files import resolve_path


class VocabularyMismatch(ValueError):
    """A draft model whose tokens are not the main model's."""


def check_vocabulary(main: Any, draft: Any, draft_source: str) -> None:
    """Refuse a draft whose token ids mean other text than the main model's (both are tokenizer wrappers)."""
    ours, theirs = main._tokenizer.get_vocab(), draft._tokenizer.get_vocab()
    if ours == theirs:
        return
    if len(ours) != len(theirs):
        detail = f"{len(theirs):,} tokens against {len(ours):,}"
    else:
        token = next(token for token, index in ours.items() if theirs.get(token) != index)
        detail = f"token {token!r} is {theirs.get(token)} there and {ours[token]} here"
    raise VocabularyMismatch(f"draft model {draft_source} has another vocabulary ({detail})")


def prepare_draft(name: str, source: str, tokenizer: Any) -> tuple[PreparedModel, Path]:
    """The draft model's tokenizer and folder (downloaded if need be) for the model `name`, whose tokenizer
    is `tokenizer`; `VocabularyMismatch` unless their vocabularies are one."""
    draft = prepare_model(f"{name} (draft)", source, constrained=False)
    check_vocabulary(tokenizer, draft.tokenizer, source)
    return draft, resolve_path(source)


def load_draft(
    prepared: PreparedModel, path: Path, key: str, cache_bytes: int, limits: EngineLimits
) -> Draft:
    """The draft's weights, with a prompt cache of its own: a quarter of the model's `cache_bytes`, keyed
    by the model's `key` and the draft's own fingerprint."""
    loaded = load_weights(prepared, path)
    cache = PromptCache(f"{key}-draft-{loaded.fingerprint}", cache_bytes // 4)
    return Draft(loaded.model, cache, limits.prefill_step_size)


@dataclass
class Draft:
    """The draft model of a served model: its weights and the prompt cache its sequences share."""

    model: Any
    cache: PromptCache
    prefill_step_size: int


class DraftProposer:
    """One sequence's draft: the tokens of its history, and the draft's KV state of the first `_cached`."""

    guesses = False

    def __init__(self, draft: Draft, prompt: list[int], sampling: SamplingParams):
        self._draft = draft
        self._sampling = sampling
        hit = draft.cache.fetch(prompt)
        self._kv = hit.cache if hit.cache is not None else make_prompt_cache(draft.model)
        self._cached = hit.reused
        self._history = list(prompt)
        self._drafted = 0  # tokens the draft's cache holds past the history, from the last proposal

    @property
    def cached_tokens(self) -> int:
        """Of the history, the tokens whose KV state the draft holds."""
        return self._cached

    def ready(self) -> bool:
        """Within a prefill chunk of the history: the proposal's one pass feeds the rest. Further behind (a
        long prompt), it catches up a chunk per call, so that the other streams go on meanwhile."""
        behind = len(self._history) - self._cached
        if behind > self._draft.prefill_step_size:
            self._feed(self._history[self._cached : self._cached + self._draft.prefill_step_size])
            mx.eval([layer.state for layer in self._kv])
            return False
        return True

    def guess(self, limit: int) -> list[int]:
        return []

    def propose(self, last: int, limit: int) -> tuple[list[int], mx.array | None]:
        logits = self._feed([*self._history[self._cached :], last])
        tokens, rows = [], []
        for i in range(limit):
            token, q = self._draw(logits)
            tokens.append(token)
            rows.append(q)
            if i < limit - 1:
                logits = self._feed(token[None], mark=False)
        self._drafted = limit - 1  # the last drafted token was never fed
        mx.eval(tokens, rows)
        drawn = None if self._sampling.greedy else mx.concatenate(rows)
        return [int(token.item()) for token in tokens], drawn

    def took(self, tokens: list[int]) -> None:
        self._history += tokens

    def settle(self, proposed: int, accepted: int) -> None:
        """Keep the draft's state of what was accepted: `last` and the accepted drafted tokens."""
        kept = min(accepted, self._drafted)
        trim_prompt_cache(self._kv, self._drafted - kept)
        self._cached += kept
        self._drafted = 0

    def finish(self) -> None:
        """Keep the draft's KV state for the next turn, which starts with this one's prompt and output."""
        beyond = self._cached - len(self._history)  # accepted tokens fed after the output ended (a stop)
        if beyond > 0:
            trim_prompt_cache(self._kv, beyond)
            self._cached = len(self._history)
        if self._cached:
            self._draft.cache.store(self._history[: self._cached], self._kv)

    def _feed(self, tokens: list[int] | mx.array, mark: bool = True) -> mx.array:
        """The draft's logits after `tokens` (lazy); `mark`: they are history (counted in `_cached`)."""
        inputs = tokens[None] if isinstance(tokens, mx.array) else mx.array([tokens])
        logits = self._draft.model(inputs, cache=self._kv)[:, -1, :]
        if mark:
            self._cached += inputs.shape[1]
        return logits

    def _draw(self, logits: mx.array) -> tuple[mx.array, mx.array]:
        """The draft's next token (argmax when greedy, else drawn as the main model samples) and the
        distribution it came from (one row)."""
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        if self._sampling.greedy:
            return mx.argmax(logprobs, axis=-1)[0], logprobs
        scores = self._sampling.filtered(logprobs) * (1 / self._sampling.temperature)
        return mx.random.categorical(scores, axis=-1)[0], mx.softmax(scores, axis=-1)
