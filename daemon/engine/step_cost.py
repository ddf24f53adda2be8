"""What a decoding step costs, measured as the engine runs, and the choice it informs: how wide a verification
step pays. On a Mac's GPU a step is bound by reading the weights, so a few more tokens cost little and
speculation pays; on a compute-bound backend every token costs its arithmetic, and the same proposals would
slow decoding down. Measuring, rather than assuming either, makes speculation pay wherever it runs and stand
aside where it cannot.

Three things are measured: mlx-lm's pipelined step by its period (from its start to the next step's: it
computes the next token while the engine reads the last, so its cost is what it adds to the period); a
verifying step by its own duration, fitted as fixed + per_token x tokens fed; and the engine's work per output
token between steps (decoding, streaming), which a verifying step does not overlap with anything."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

FORGET = 0.98  # weight of the past, per observation: a few hundred steps make up an estimate
PLAIN_SAMPLES = 8  # plain steps measured before a wide one is weighed against them
FIRST_PROBE = 16  # steps until a wide step is tried again though the estimate says it would lose; doubles
LAST_PROBE = 1024  # each time it still does, up to this


class StepCost:
    def __init__(self) -> None:
        self._pipelined: dict[int, float] = {}  # rows -> seconds per step, a moving average
        self._first: dict[int, list[float]] = {}  # rows -> the first steps' seconds, until it is known
        self._sums = [0.0] * 5  # of verifying steps: weight, Σn, Σt, Σn², Σnt
        self._host: float | None = None  # seconds of the engine's own work per output token
        self._probe_in = FIRST_PROBE
        self._probe_every = FIRST_PROBE

    def observe_host(self, seconds_per_token: float) -> None:
        known = self._host
        self._host = seconds_per_token if known is None else FORGET * known + (1 - FORGET) * seconds_per_token

    def observe(self, tokens: int, seconds: float, *, pipelined: bool) -> None:
        """A step that fed `tokens` (rows x width) took `seconds`; `pipelined`: a plain step's period."""
        if pipelined:
            # The median of the first steps, then a moving average: no odd first step sets the estimate.
            if (known := self._pipelined.get(tokens)) is not None:
                self._pipelined[tokens] = FORGET * known + (1 - FORGET) * seconds
            elif len(first := self._first.setdefault(tokens, [])) < PLAIN_SAMPLES - 1:
                first.append(seconds)
            else:
                self._pipelined[tokens] = statistics.median([*self._first.pop(tokens), seconds])
            return
        weight, n, t, nn, nt = (value * FORGET for value in self._sums)
        self._sums = [weight + 1, n + tokens, t + seconds, nn + tokens * tokens, nt + tokens * seconds]

    def fit(self) -> tuple[float, float] | None:
        """Verifying steps' (fixed seconds, seconds per token); None until two widths were seen."""
        weight, n, t, nn, nt = self._sums
        spread = weight * nn - n * n
        if weight == 0 or spread <= 1e-9 * max(nn, 1.0) * weight:
            return None
        per_token = max((weight * nt - n * t) / spread, 0.0)
        return max((t - per_token * n) / weight, 0.0), per_token

    def best_width(self, rows: int, gains: Sequence[Sequence[float]]) -> int:
        """The step width (tokens fed per row) with the most expected output per second:
        `gains[i][w - 1]` is row i's expected output at width w. Until the cost of wide steps is known, and
        now and then while the estimate says they lose, the widest is tried, so that the estimate follows
        what changes (a context that grows makes each token dearer). Plain steps of as many rows are measured
        first, where they have not been yet: a wide step's worth is relative to theirs."""
        widest = max(len(row) for row in gains)
        fit = self.fit()
        if fit is not None and rows not in self._pipelined:
            return 1
        self._probe_in -= 1
        if fit is None or self._probe_in <= 0:
            self._probe_in = self._probe_every
            self._probe_every = min(2 * self._probe_every, LAST_PROBE)
            return widest
        best, value = 1, self._rate(rows, gains, 1, fit)
        for width in range(2, widest + 1):
            if (rate := self._rate(rows, gains, width, fit)) > value:
                best, value = width, rate
        if best > 1:
            self._probe_every = FIRST_PROBE  # wide steps pay: probing again soon costs little
        return best

    def _rate(
        self, rows: int, gains: Sequence[Sequence[float]], width: int, fit: tuple[float, float]
    ) -> float:
        """Expected output per second at `width`. A plain step runs pipelined when that was measured; a wider
        one verifies, with the engine's work on its output after it."""
        output = sum(row[min(width, len(row)) - 1] for row in gains)
        if width == 1 and (seconds := self._pipelined.get(rows)) is not None:
            return output / seconds
        fixed, per_token = fit
        seconds = fixed + per_token * rows * width + (self._host or 0.0) * output
        return output / seconds if seconds > 0 else 0.0
