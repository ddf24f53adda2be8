"""Prompt lookup: proposed continuations copied from the context. When the last few tokens of a sequence
(prompt and output so far) occurred earlier in it, the tokens that followed them there are proposed as its
next tokens; an Edit call repeating a file it just read, or a summary quoting the conversation, accepts long
runs of them."""

from __future__ import annotations

import numpy as np

MAX_NGRAM = 4  # the longest suffix matched; longer matches predict better and are tried first
MIN_NGRAM = 2  # a single repeated token is too weak a signal to spend a verification on


class PromptLookup:
    """One sequence's token history and the search over it; fed every token the sequence takes."""

    def __init__(self, tokens: list[int]):
        self._tokens = np.zeros(max(1024, 2 * len(tokens)), dtype=np.int64)
        self._size = 0
        self.extend(tokens)

    def __len__(self) -> int:
        return self._size

    def extend(self, tokens: list[int]) -> None:
        end = self._size + len(tokens)
        if end > len(self._tokens):
            grown = np.zeros(2 * end, dtype=np.int64)
            grown[: self._size] = self._tokens[: self._size]
            self._tokens = grown
        self._tokens[self._size : end] = tokens
        self._size = end

    def propose(self, limit: int, last: int | None = None) -> list[int]:
        """Up to `limit` tokens that followed the most recent earlier occurrence of the history's longest
        matching suffix (`last` taken as one more token of it, not yet kept); none without a match."""
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
                return history[ends[-1] + 1 : ends[-1] + 1 + limit].tolist()
        return []
