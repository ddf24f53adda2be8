"""Speculative decoding's per-sequence half: what a sequence proposes (its `Proposer`: prompt lookup or a
draft model), how many tokens it proposes as its acceptance goes, and the rule that accepts a proposal so that
the output is what decoding without speculation would give (token for token when greedy; the same
distribution when sampling)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import mlx.core as mx

from daemon.engine.sampling import SamplingParams

Proposal = tuple[list[int], mx.array | None]  # the tokens, and the distributions they were drawn from
LONGEST_PAUSE = 32  # steps a sequence whose proposals keep failing waits, at most, before it proposes again


class Proposer(Protocol):
    """Proposes a sequence's next tokens; told every token the sequence outputs and how each proposal
    fared."""

    def ready(self) -> bool:
        """Whether a proposal is worth asking for this step (before the sequence's newest token is known,
        so that a step in which nothing is proposed need not wait for it)."""
        ...

    guesses: bool  # whether `guess` can: a proposal that costs nothing to make can be tried without a pass

    def guess(self, limit: int) -> list[int]:
        """Up to `limit` tokens to follow the output, the first of them the one not yet known, where that
        costs next to nothing ([] where it would not: a draft would have to run)."""
        ...

    together: Any  # None, or what proposes for it and other sequences in one pass (see `propose_all`)

    def propose(self, last: int, limit: int) -> Proposal:
        """Up to `limit` tokens to follow the output and `last` (its newest token, not yet output), with the
        distribution each was drawn from (one row per token), or None for tokens proposed with certainty.
        A proposer that proposes `together` with others has it do this instead."""
        ...

    def took(self, tokens: list[int]) -> None: ...

    def settle(self, proposed: int, accepted: int) -> None: ...

    def leave(self) -> None:
        """The sequence left the decoding batch (ended, cancelled or failed): let go of what it shares."""
        ...

    def finish(self) -> None:
        """The sequence ended as its client asked (what it computed may serve the next turn)."""
        ...


@dataclass
class Speculation:
    """One sequence's proposer and proposal length, which doubles while proposals are accepted whole,
    shrinks to what was accepted, and pauses (for longer each time) after proposals fail outright, so that
    text the proposer cannot predict costs no verification."""

    proposer: Proposer
    sampling: SamplingParams
    most: int  # the longest proposal
    length: int = 2  # of the next proposal
    rate: float = 0.5  # of proposed tokens accepted, recently (at first a guess)
    proposed: int = 0
    accepted: int = 0
    offer: int = 0  # the proposal length it could offer this step (`wanted`), paused or not
    _misses: int = 0
    _pause: int = 0
    _shadow: list[int] = field(default_factory=list)  # a guess at its next outputs, checked as they come
    _seen: int = 0  # of the guess, the outputs that matched it
    trusted: bool | None = None  # its proposals are worth verifying; None: not until a guess comes true

    def __post_init__(self) -> None:
        if self.trusted is None:
            self.trusted = not self.proposer.guesses  # a draft cannot be tried without its passes

    def wanted(self, room: int) -> int:
        """The longest proposal it would verify this step, at most `room` (what `max_tokens` leaves): 0
        while it pauses or its proposer is not ready."""
        self.offer = max(0, min(self.length, self.most, room)) if self.proposer.ready() else 0
        if self._pause:
            self._pause -= 1
            return 0
        return self.offer if self.trusted else 0

    def shadow(self) -> None:
        """This step verifies nothing for it: guess its next outputs instead, and learn from how they
        compare what verifying would have accepted (free for greedy decoding, a fair estimate when
        sampling), so that a sequence that copies is found out without paying for a verification."""
        if not self._shadow and self.offer:
            guess = self.proposer.guess(self.offer + 1)
            self._shadow, self._seen = (guess, 0) if len(guess) > 1 else ([], 0)  # a guess that proposes

    def expected(self, length: int) -> float:
        """Tokens a step outputs when it verifies `length` of them: its own, and each proposed one accepted
        if all before it were."""
        return sum(self.rate**j for j in range(length + 1))

    def took(self, tokens: list[int]) -> None:
        """The tokens the sequence output this step, in order."""
        self.proposer.took(tokens)
        for token in tokens:
            if not self._shadow:
                return
            if self._seen < len(self._shadow) and token == self._shadow[self._seen]:
                self._seen += 1
                if self._seen < len(self._shadow):
                    continue
            # The guess's first token is the one in flight when it was made: the rest is its proposal.
            if self._seen:
                self._learn((self._seen - 1) / (len(self._shadow) - 1))
                self.trusted = self.trusted or self._seen > 1
            self._shadow = []

    def record(self, proposed: int, accepted: int) -> None:
        self.proposer.settle(proposed, accepted)
        self.proposed += proposed
        self.accepted += accepted
        self._shadow = []
        self._learn(accepted / proposed)
        if accepted == proposed:
            self.length = min(2 * self.length, self.most)
        else:
            self.length = max(1, accepted + 1)
        if accepted:
            self._misses = 0
        else:
            self._misses += 1
            self._pause = min(2 ** (self._misses + 1), LONGEST_PAUSE)

    def _learn(self, accepted_share: float) -> None:
        self.rate = 0.8 * self.rate + 0.2 * accepted_share


def propose_all(asks: dict[int, tuple[Speculation, int, int]]) -> dict[int, Proposal]:
    """Each asking row's proposal, from (its speculation, newest token, most tokens wanted). Proposers that
    propose `together` (a draft model's sequences) are asked in one go, so that one pass serves them all."""
    proposals, shared = {}, {}
    for row, (speculation, last, limit) in asks.items():
        proposer = speculation.proposer
        if proposer.together is None:
            proposals[row] = proposer.propose(last, limit)
        else:
            shared.setdefault(proposer.together, {})[row] = (proposer, last, limit)
    for together, rows in shared.items():
        drafted = together.propose({proposer: (last, limit) for proposer, last, limit in rows.values()})
        proposals.update({row: drafted[proposer] for row, (proposer, _, _) in rows.items()})
    return proposals


def verify(
    logprobs: mx.array, proposal: list[int], sampling: SamplingParams, drawn: mx.array | None = None
) -> tuple[mx.array, mx.array]:
    """Lazy (accepted flags, candidate next tokens) for one sequence: `logprobs` has one row per proposed
    token plus one, row j the distribution of the token after the j-th fed one. Candidate j is the token
    taken when proposal j is the first refused; the last is the token after a proposal accepted whole.

    Greedy: a proposal is accepted where it is the argmax. Sampling, the standard speculative-sampling rule,
    which leaves each token's distribution p as sampling without speculation has it: a token x drawn from q
    (`drawn`, one row per token; None: proposed with certainty, as prompt lookup does) is accepted with
    probability min(1, p(x) / q(x)); when refused, the token is drawn from max(0, p - q), renormalised."""
    proposed = mx.array(proposal)
    if sampling.greedy:
        choices = mx.argmax(logprobs, axis=-1)
        return choices[:-1] == proposed, choices
    scores = sampling.filtered(logprobs) * (1 / sampling.temperature)
    p = mx.softmax(scores[:-1], axis=-1)
    rows = mx.arange(len(proposal))
    if drawn is None:
        q = mx.zeros_like(p)
        q[rows, proposed] = 1.0
    else:
        q = _widen(drawn, p.shape[-1])
    accepted = mx.random.uniform(shape=(len(proposal),)) < p[rows, proposed] / q[rows, proposed]
    # A row whose whole mass sat on the proposal is never refused; its (all -inf) draw is never read.
    refused = mx.log(mx.maximum(p - q, 0.0))
    candidates = mx.random.categorical(mx.concatenate([refused, scores[-1:]]), axis=-1)
    return accepted, candidates


def _widen(q: mx.array, width: int) -> mx.array:
    """A draft's distributions over the target's logits (a model may pad its vocabulary)."""
    if q.shape[-1] >= width:
        return q[..., :width]
    return mx.concatenate([q, mx.zeros((q.shape[0], width - q.shape[-1]), dtype=q.dtype)], axis=-1)
