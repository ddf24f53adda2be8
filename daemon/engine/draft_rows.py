"""A draft model's passes for every sequence it drafts for at once: the sequences' draft KV states are rows
of one batch, so that a step in which four sequences propose k tokens runs the draft k times, not 4k times.

A sequence joins the rows the first time it proposes (its own KV state merged in) and leaves them when it
leaves the decoding batch, or when it falls more than a prefill chunk behind and catches up on its own
(its row extracted). One member alone keeps its own per-sequence cache, as the decoding batch's lone
sequence does. A pass feeds each member what it has not fed yet (its new history, then the newest token
where it proposes), right-padded to the longest and rolled into left padding after as mlx-lm's prompt
processing does, and then drafts one token per member per step. Rolling the drafts back is one trim for
all the rows, to the row that kept fewest; the accepted tokens another row loses by it are fed again at its
next pass, which costs a pass nothing on a GPU, where copying every row's KV state would."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import mlx.core as mx
from mlx_lm.generate import _merge_caches

from daemon.engine.speculation import Proposal

if TYPE_CHECKING:
    from daemon.engine.draft import DraftProposer

Ask = tuple[int, int]  # a sequence's newest token (not yet output) and how many tokens it wants proposed


class DraftRows:
    """The members' KV states and the pass that drafts for them. A member's `fresh`, `drafted` and `kept`
    describe the last pass: what it fed of its history, the drafted tokens fed after, and how many of those
    its verification accepted; `settle` turns them into its `cached` count before anything else runs."""

    def __init__(self, model: Any):
        self.model = model
        self.members: list[DraftProposer] = []
        self._cache: list | None = None  # two members or more: their states as mlx-lm's batch caches
        self._unsettled = False  # the last pass's drafts are still in the rows

    def propose(self, asks: dict[DraftProposer, Ask]) -> dict[DraftProposer, Proposal]:
        """Each asking sequence's proposal and, when it samples, the distributions they were drawn from."""
        self.settle()
        for proposer in asks:
            self._join(proposer)
        members = self.members
        cache = self._cache if self._cache is not None else members[0].kv
        fed = [[*p.history[p.cached :], *([asks[p][0]] if p in asks else [])] for p in members]
        width = max(map(len, fed))
        padding = [width - len(row) for row in fed]
        if any(padding):
            for layer in cache:
                layer.prepare(right_padding=padding)
        logits = self.model(
            mx.array([row + [0] * pad for row, pad in zip(fed, padding, strict=True)]), cache=cache
        )
        if any(padding):
            for layer in cache:
                layer.finalize()
        # Each row's logits after its own last token (a row that fed nothing reads a padding's: never used).
        logits = logits[mx.arange(len(fed)), mx.array([max(len(row) - 1, 0) for row in fed])]
        most = max(limit for _, limit in asks.values())
        sampled = [row for row, p in enumerate(members) if p in asks and not p.sampling.greedy]
        steps, distributions = [], {row: [] for row in sampled}
        for step in range(most):
            tokens = mx.argmax(logits, axis=-1)
            if sampled:
                drawn = {row: members[row].draw(logits[row : row + 1]) for row in sampled}
                for row, (_, q) in drawn.items():
                    distributions[row].append(q)
                tokens = mx.stack([drawn[row][0] if row in drawn else tokens[row] for row in range(len(fed))])
            steps.append(tokens)
            if step < most - 1:
                logits = self.model(tokens[:, None], cache=cache)[:, -1, :]
        drafts = mx.stack(steps, axis=1)
        mx.eval(drafts, distributions)
        for p, row in zip(members, fed, strict=True):
            p.fresh, p.drafted, p.kept = len(row), most - 1, 0  # the last drafted token was never fed
        self._unsettled = True
        proposals, drafted = {}, drafts.tolist()
        for row, p in enumerate(members):
            if p in asks:
                limit = asks[p][1]
                q = mx.concatenate(distributions[row][:limit]) if row in distributions else None
                proposals[p] = (drafted[row][:limit], q)
        return proposals

    def settle(self) -> None:
        """Keep of the last pass what every row keeps: its fed history and newest token, and its accepted
        drafts up to the fewest any row kept (the rest it feeds again next time)."""
        if not self._unsettled:
            return
        self._unsettled = False
        members = self.members
        least = min(min(p.kept, p.drafted) for p in members)
        for layer in self._cache if self._cache is not None else members[0].kv:
            layer.trim(members[0].drafted - least)
        for p in members:
            p.cached += p.fresh + least
            p.fresh = p.drafted = p.kept = 0

    def leave(self, proposer: DraftProposer) -> None:
        """The proposer's row, as its own KV state again."""
        self.settle()
        if proposer not in self.members:
            return
        row = self.members.index(proposer)
        self.members.pop(row)
        if self._cache is None:  # it was alone, on its own state
            return
        proposer.kv = [layer.extract(row) for layer in self._cache]
        if len(self.members) == 1:
            self.members[0].kv = [layer.extract(1 - row) for layer in self._cache]
            self._cache = None
            return
        keep = [i for i in range(len(self.members) + 1) if i != row]
        for layer in self._cache:
            layer.filter(keep)

    def _join(self, proposer: DraftProposer) -> None:
        if proposer in self.members:
            return
        if self.members:
            if self._cache is None:
                self._cache = _merge_caches([self.members[0].kv, proposer.kv])
                self.members[0].kv = None
            else:
                for layer, joining in zip(self._cache, _merge_caches([proposer.kv]), strict=True):
                    layer.extend(joining)
            proposer.kv = None
        self.members.append(proposer)
