"""Speculative decoding's per-sequence half: what a sequence proposes, how many tokens it proposes as its
acceptance goes, and the rule that accepts a proposal so that the output is what decoding without speculation
would give (token for token when greedy; the same distribution when sampling)."""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

from daemon.engine.lookup import PromptLookup
from daemon.engine.sampling import SamplingParams

LONGEST_PAUSE = 32  # steps a sequence whose proposals keep failing waits, at most, before it proposes again


@dataclass
class Speculation:
    """One sequence's prompt lookup and its proposal length, which doubles while proposals are accepted
    whole, shrinks to what was accepted, and pauses (for longer each time) after proposals fail outright,
    so that text that copies nothing costs no verification."""

    lookup: PromptLookup
    sampling: SamplingParams
    most: int  # the longest proposal
    length: int = 4  # of the next proposal
    proposed: int = 0
    accepted: int = 0
    _misses: int = 0
    _pause: int = 0

    def ready(self) -> bool:
        """Worth a look this step: not paused, and the history's end matches something earlier (checked
        before the sequence's newest token is known, so that a step without proposals need not wait)."""
        if self._pause:
            self._pause -= 1
            return False
        return bool(self.lookup.propose(1))

    def propose(self, last: int) -> list[int]:
        return self.lookup.propose(min(self.length, self.most), last)

    def took(self, tokens: list[int]) -> None:
        """The tokens the sequence output this step, in order."""
        self.lookup.extend(tokens)

    def record(self, proposed: int, accepted: int) -> None:
        self.proposed += proposed
        self.accepted += accepted
        if accepted == proposed:
            self.length = min(2 * self.length, self.most)
        else:
            self.length = max(1, accepted + 1)
        if accepted:
            self._misses = 0
        else:
            self._misses += 1
            self._pause = min(2**self._misses, LONGEST_PAUSE)


def verify(logprobs: mx.array, proposal: list[int], sampling: SamplingParams) -> tuple[mx.array, mx.array]:
    """Lazy (accepted flags, candidate next tokens) for one sequence: `logprobs` has one row per proposed
    token plus one, row j the distribution of the token after the j-th fed one. Candidate j is the token
    taken when proposal j is the first refused; the last is the token after a proposal accepted whole.

    Greedy: a proposal is accepted where it is the argmax. Sampling: a proposed token x, proposed with
    certainty (prompt lookup), is accepted with probability p(x); when refused, the token is drawn from p
    without x, renormalised: the standard speculative-sampling rule, which leaves each token's distribution
    p as sampling without speculation has it."""
    proposed = mx.array(proposal)
    if sampling.greedy:
        choices = mx.argmax(logprobs, axis=-1)
        return choices[:-1] == proposed, choices
    scores = sampling.filtered(logprobs) * (1 / sampling.temperature)
    probabilities = mx.softmax(scores, axis=-1)
    rows = mx.arange(len(proposal))
    taken = probabilities[rows, proposed]
    accepted = mx.random.uniform(shape=(len(proposal),)) < taken
    refused = scores[:-1]
    refused[rows, proposed] = -mx.inf
    # A row whose whole mass sat on the proposal is never refused; its (all -inf) draw is never read.
    candidates = mx.random.categorical(mx.concatenate([refused, scores[-1:]]), axis=-1)
    return accepted, candidates
