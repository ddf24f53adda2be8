"""The continuous batch in lockstep across a group: rank 0 decides each engine loop, every rank runs it.

Every rank runs the same engine (daemon/engine/runner.py) on its shard of the model, so each step's
collectives meet. What the loop does is a function of what enters it, plus the model's outputs (the same on
every rank: the logits are summed or gathered before sampling, from one shared random state). What enters it
is decided on rank 0 alone and shared at the top of each loop: the requests admitted (as their chat requests,
which each rank renders with its own tokenizer, and their resolved settings), the cancellations latched, and
whether to stop. What is timed is rank 0's alone: how wide a speculative step is (chosen from measured
step costs) is rank 0's choice, shared in the step (`AgreedCost`); the proposals themselves are the same
on every rank (copied from the same tokens, or drafted by the same replicated draft model). Kept out of a
group: the disk tier (its reads finish when they finish) and vision models.

Each rank checks, in every loop that takes something in, that it runs the sequences rank 0 runs and holds
as many cached prefixes, and that it rendered each request to the tokens rank 0 did; a rank that finds
otherwise stops, which ends the group.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from daemon.chat.request import ChatRequest
from daemon.engine.group import Group, GroupError
from daemon.engine.jobs import GenerationJob
from daemon.engine.prompt import Prompt
from daemon.engine.reuse import Part
from daemon.engine.sampling import SamplingParams
from daemon.engine.step_cost import StepCost


@dataclass(frozen=True)
class Admission:
    """A request rank 0 admitted, as every rank rebuilds its job."""

    number: int
    request: ChatRequest
    max_tokens: int
    sampling: SamplingParams
    stop_sequences: list[str]
    label: str
    tokens: str  # a digest of the prompt's tokens as rank 0 rendered it


@dataclass(frozen=True)
class Decision:
    """What one engine loop takes in."""

    admitted: list[Admission] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)  # the numbers of jobs whose cancellation was latched
    stop: bool = False
    state: tuple = ()  # rank 0's running sequences and cached prefixes as the loop began


Render = Callable[[ChatRequest], tuple[Prompt, list[Part]]]


class Lockstep:
    """One rank's side of the shared loop; `render` makes a follower's prompt from a chat request."""

    def __init__(self, group: Group, render: Render):
        self.group = group
        self._render = render
        self._numbers = itertools.count(1)
        self._jobs: dict[int, GenerationJob] = {}  # the jobs not yet ended, by number, on every rank
        self._number_of: dict[GenerationJob, int] = {}

    @property
    def leader(self) -> bool:
        return self.group.leader

    def exchange(self, incoming: list, latched: list[GenerationJob], state: tuple, stop: Any) -> list:
        """One loop's input on every rank. Rank 0 passes what it took from its inbox (jobs and `stop`) and
        the jobs whose cancellation it latched; the others pass nothing and get the same, as their own jobs.
        Raises `GroupError` on a rank that has drifted from rank 0."""
        self.group.busy()
        if self.leader:
            admitted = [self._admission(job) for job, _ in (i for i in incoming if i is not stop)]
            # Numbered first: a job cancelled before it was ever shared is admitted cancelled everywhere.
            cancelled = [self._number_of[job] for job in latched if job in self._number_of]
            decision = Decision(admitted, cancelled, stop in incoming, state)
            self.group.share(decision if decision != Decision(state=state) else None)
            return incoming
        decision = self.group.share(None) or Decision(state=state)
        if decision.state != state:
            raise GroupError(f"this rank runs {state}, rank 0 runs {decision.state}")
        for number in decision.cancelled:
            if (job := self._jobs.get(number)) is not None:
                job.cancelled = True
        items: list = [(self._job(admission), 0.0) for admission in decision.admitted]
        return [*items, stop] if decision.stop else items

    def ended(self, jobs: Iterable[GenerationJob]) -> None:
        """Forget the jobs that ended."""
        for job in jobs:
            if (number := self._number_of.pop(job, None)) is not None:
                del self._jobs[number]

    def _admission(self, job: GenerationJob) -> Admission:
        if job.request is None:
            raise GroupError("a job without its chat request cannot be shared with the group")
        number = next(self._numbers)
        self._jobs[number], self._number_of[job] = job, number
        return Admission(
            number,
            job.request,
            job.max_tokens,
            job.sampling,
            job.stop_sequences,
            job.label,
            _digest(job.prompt.tokens),
        )

    def _job(self, admission: Admission) -> GenerationJob:
        prompt, parts = self._render(admission.request)
        if _digest(prompt.tokens) != admission.tokens:
            raise GroupError(f"request {admission.label} renders to other tokens here than on rank 0")
        job = GenerationJob(
            prompt=prompt,
            max_tokens=admission.max_tokens,
            sampling=admission.sampling,
            stop_sequences=admission.stop_sequences,
            emit=_unheard,
            label=admission.label,
            parts=parts,
            request=admission.request,
        )
        self._jobs[admission.number], self._number_of[job] = job, admission.number
        return job


class AgreedCost(StepCost):
    """A group's step cost: each rank measures its own steps, and every rank takes rank 0's width."""

    def __init__(self, group: Group):
        super().__init__()
        self._group = group

    def best_width(self, rows: int, gains: Sequence[Sequence[float]]) -> int:
        width = super().best_width(rows, gains)
        return self._group.share(width if self._group.leader else None)


def _digest(tokens: list[int]) -> str:
    return hashlib.sha256(repr(tokens).encode()).hexdigest()


def _unheard(event: Any) -> None:
    """A follower's events: its client is rank 0's."""
