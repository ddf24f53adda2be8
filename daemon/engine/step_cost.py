"""What a decoding step costs as a function of the tokens it feeds the model, measured as the engine runs, and
the choice it informs: how wide a verification step pays. On a Mac's GPU a step is bound by reading the
weights, so a few more tokens cost little and speculation pays; on a compute-bound backend every token costs
its arithmetic, and the same proposals would slow decoding down. Measuring, rather than assuming either,
makes speculation pay wherever it runs and stand aside where it cannot."""

from __future__ import annotations

from collections.abc import Sequence

FORGET = 0.98  # weight of the past in the fit, per observation: a few hundred steps make up the estimate
FIRST_PROBE = 16  # steps until the widest step is tried again though the estimate says it would lose; doubles
LAST_PROBE = 1024  # each time it still does, up to this


class StepCost:
    """A least-squares fit of seconds = fixed + per_token x tokens, with older steps weighing less."""

    def __init__(self) -> None:
        self._sums = [0.0] * 5  # weight, Σn, Σt, Σn², Σnt
        self._probe_in = FIRST_PROBE
        self._probe_every = FIRST_PROBE

    def observe(self, tokens: int, seconds: float) -> None:
        weight, n, t, nn, nt = (value * FORGET for value in self._sums)
        self._sums = [weight + 1, n + tokens, t + seconds, nn + tokens * tokens, nt + tokens * seconds]

    def seconds(self, tokens: int) -> float | None:
        """The fit's estimate; None until steps of more than one width were seen."""
        fit = self.fit()
        return None if fit is None else fit[0] + fit[1] * tokens

    def fit(self) -> tuple[float, float] | None:
        """(fixed seconds, seconds per token)."""
        weight, n, t, nn, nt = self._sums
        spread = weight * nn - n * n
        if weight == 0 or spread <= 1e-9 * max(nn, 1.0) * weight:
            return None
        per_token = max((weight * nt - n * t) / spread, 0.0)
        return max((t - per_token * n) / weight, 0.0), per_token

    def best_width(self, rows: int, gains: Sequence[Sequence[float]], least: int = 1) -> int:
        """The step width (tokens fed per row, at least `least`) with the most expected output per second:
        `gains[i][w - 1]` is row i's expected output at width w. Until the cost of wider steps is known, and
        now and then while the estimate says they lose, the widest is tried, so that the estimate follows
        what changes (a context that grows makes each token dearer)."""
        widest = max(least, *(len(row) for row in gains))
        plain = self.seconds(rows * least)
        self._probe_in -= 1
        if plain is None or self._probe_in <= 0:
            self._probe_in = self._probe_every
            self._probe_every = min(2 * self._probe_every, LAST_PROBE)
            return widest
        best, value = least, sum(row[min(least, len(row)) - 1] for row in gains) / plain
        for width in range(least + 1, widest + 1):
            if (rate := self._rate(rows, gains, width)) > value:
                best, value = width, rate
        if best > least:
            self._probe_every = FIRST_PROBE  # wide steps pay: probing again soon costs little
        return best

    def _rate(self, rows: int, gains: Sequence[Sequence[float]], width: int) -> float:
        """Expected output per second at `width`. The batch's cache keeps only what every row accepted, so
        what a row accepted beyond the least is fed again at its next step: that costs its tokens too."""
        fixed, per_token = self.fit() or (0.0, 0.0)
        output = [row[min(width, len(row)) - 1] for row in gains]
        again = sum(output) - len(output) * min(output)
        seconds = fixed + per_token * (rows * width + again)
        return sum(output) / seconds if seconds > 0 else 0.0
