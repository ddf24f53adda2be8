"""A draft model as a sequence's proposer: a small model of the same vocabulary decodes a few tokens ahead,
and the main model verifies them in one pass. A sequence's draft KV state is caught up on its prompt a chunk
per engine step (so a long prompt never holds the batch up), then drafts as a row of the model's
`DraftRows` beside the other sequences', is rolled back to what the main model accepted, and is stored in a
prompt cache of its own at the end, so that the next turn starts from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import KVCache, make_prompt_cache

from daemon.engine.draft_rows import DraftRows
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
    check_cache(loaded.model, str(path))
    cache = PromptCache(f"{key}-draft-{loaded.fingerprint}", cache_bytes // 4)
    return Draft(loaded.model, cache, limits.prefill_step_size)


class NotPlainAttention(ValueError):
    """A draft model whose KV cache is not plain attention's, which its rows could not roll back."""


def check_cache(model: Any, draft_source: str) -> None:
    """Refuse a draft whose layers cache anything but plain attention (sliding windows, state-space layers):
    its refused drafts could not be trimmed off, nor its sequences' states batched."""
    kinds = {type(layer).__name__ for layer in make_prompt_cache(model)}
    if kinds != {KVCache.__name__}:
        raise NotPlainAttention(
            f"draft model {draft_source} caches {', '.join(sorted(kinds))}: a draft needs plain attention"
        )


@dataclass
class Draft:
    """The draft model of a served model: its weights, the prompt cache its sequences share, and the rows
    through which they draft together."""

    model: Any
    cache: PromptCache
    prefill_step_size: int
    rows: DraftRows = field(init=False)

    def __post_init__(self) -> None:
        self.rows = DraftRows(self.model)


class DraftProposer:
    """One sequence's draft: the tokens of its history, and the draft's KV state of the first `cached` (its
    own `kv`, or a row of the model's `DraftRows` while it drafts there)."""

    guesses = False

    def __init__(self, draft: Draft, prompt: list[int], sampling: SamplingParams):
        self._draft = draft
        self.together = draft.rows
        self.sampling = sampling
        hit = draft.cache.fetch(prompt)
        self.kv: list | None = hit.cache if hit.cache is not None else make_prompt_cache(draft.model)
        self.cached = hit.reused
        self.history = list(prompt)
        self.fresh = self.drafted = self.kept = 0  # the last pass, as `DraftRows` describes them

    def ready(self) -> bool:
        """Within a prefill chunk of the history: the next pass feeds the rest. Further behind (a long
        prompt), it catches up a chunk per call on its own state, so that the other streams go on."""
        self.together.settle()
        if len(self.history) - self.cached <= self._draft.prefill_step_size:
            return True
        self.together.leave(self)
        chunk = self.history[self.cached : self.cached + self._draft.prefill_step_size]
        self._draft.model(mx.array([chunk]), cache=self.kv)
        mx.eval([layer.state for layer in self.kv])
        self.cached += len(chunk)
        return False

    def guess(self, limit: int) -> list[int]:
        return []

    def took(self, tokens: list[int]) -> None:
        self.history += tokens

    def settle(self, proposed: int, accepted: int) -> None:
        self.kept = accepted

    def leave(self) -> None:
        self.together.leave(self)

    def finish(self) -> None:
        """Keep the draft's KV state for the next turn, which starts with this one's prompt and output."""
        self.together.leave(self)
        beyond = self.cached - len(self.history)  # accepted tokens fed after the output ended (a stop)
        if beyond > 0:
            for layer in self.kv:
                layer.trim(beyond)
            self.cached = len(self.history)
        if self.cached:
            self._draft.cache.store(self.history[: self.cached], self.kv)

    def draw(self, logits: mx.array) -> tuple[mx.array, mx.array]:
        """Its next token from the draft's `logits` (one row), drawn as the main model samples, and the
        distribution it came from."""
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        scores = self.sampling.filtered(logprobs) * (1 / self.sampling.temperature)
        return mx.random.categorical(scores, axis=-1)[0], mx.softmax(scores, axis=-1)
