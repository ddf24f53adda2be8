"""Prompt lookup: proposed continuations copied from the context. When the last few tokens of a sequence
(prompt and output so far) occurred earlier in it, the tokens that followed them there are proposed as its
next tokens; an Edit call repeating a file it just read, or a summary quoting the conversation, accepts long
runs of them."""

from __future__ import annotations

import numpy as np

MAX_NGRAM = 4  # the longest suffix matched; longer matches predict better and are tried first
MIN_NGRAM = 2  # a single repeated token is too weak a signal to spend a verification on


class PromptLookup:
    """One sequence's token history and the search over it; a `Proposer` (daemon/engine/speculation.py)."""

    guesses = True
    together = None

    def __init__(self, tokens: list[int]):
        self._tokens = np.zeros(max(1024, 2 * len(tokens)), dtype=np.int64)
        self._size = 0
        # The pairs of tokens that occur before the history's last one, so that `ready` is a set lookup.
        self._pairs: set[int] = set()
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        end = self._size + len(tokens)
        if end > len(self._tokens):
            grown = np.zeros(2 * end, dtype=np.int64)
            grown[: self._size] = self._tokens[: self._size]
            self._tokens = grown
        self._tokens[self._size : end] = tokens
        first = max(self._size - 2, 0)  # the pair that ended the history until now ends before it now
        self._size = end
        self._pairs.update(_pairs(self._tokens[first : end - 1]).tolist())

    def continuation(self, limit: int, last: int | None = None) -> list[int]:
        """Up to `limit` tokens that followed an earlier occurrence of the history's longest matching suffix
        (`last` taken as one more token of it, not yet kept); none without a match."""
        size = self._size
        if last is not None:
            self.extend([last])  # written past the end and taken back below: no copy of the history
            self._size -= 1
            size += 1
        history = self._tokens[:size]
        for n in range(min(MAX_NGRAM, size - 1), MIN_NGRAM - 1, -1):
            suffix = history[size - n :]
            # Earlier occurrences end before the suffix does: match its last token, then narrow by the others.
            ends = np.flatnonzero(history[n - 1 : size - 1] == suffix[-1]) + n - 1
            for back in range(1, n):
                ends = ends[history[ends - back] == suffix[-1 - back]]
            if len(ends):
                # The latest occurrence that `limit` tokens follow, else the one the most follow: in a loop
                # the latest is one period back, followed by little more than the suffix itself.
                whole = ends[size - 1 - ends >= limit]
                end = whole[-1] if len(whole) else ends[0]
                return history[end + 1 : end + 1 + limit].tolist()
        return []

    def ready(self) -> bool:
        """The history's end matches something earlier (the newest token may yet continue the match)."""
        if self._size < 2:
            return False
        return (int(self._tokens[self._size - 2]) << 32 | int(self._tokens[self._size - 1])) in self._pairs

    def guess(self, limit: int) -> list[int]:
        return self.continuation(limit)

    def propose(self, last: int, limit: int) -> tuple[list[int], None]:
        return self.continuation(limit, last), None

    def took(self, tokens: list[int]) -> None:
        self.extend(tokens)

    def settle(self, proposed: int, accepted: int) -> None:
        pass

    def leave(self) -> None:
        pass

    def finish(self) -> None:
        pass


def _pairs(tokens: np.ndarray) -> np.ndarray:
    """Each pair of consecutive tokens as one number."""
    return (tokens[:-1] << 32) | tokens[1:]
