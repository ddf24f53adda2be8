"""The requests and their order. Both arms send Claude Code's captured request (`tests/claude_code_request`:
its system blocks, history and dozen tools) with `tool_choice: any`, each to an mlxd of its own on the same
model: constrained, to one that holds the forced call to the grammar of every tool; unconstrained, to one
started with MLXD_CONSTRAINED_DECODING=false, which forces the call by ending the prompt with its opening
(a few tokens more) and decodes it free. Either server holds the call back until it is whole, so the two
differ in the grammar alone: its mask, and the logits processor that applies it. (`tool_choice: none` on
the constrained server would keep the prompt but change the output: text streamed token by token instead
of a call held back.) The servers take turns, each repeat starting with the one the last ended with, so
that drift cancels; only one computes at a time."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from benchmarks.client import Endpoint, StreamResult
from benchmarks.workloads import Progress, concurrently
from tests.claude_code_request import claude_code_request

ARMS = ("constrained", "unconstrained")
SETTINGS = {"constrained": {}, "unconstrained": {"MLXD_CONSTRAINED_DECODING": "false"}}


@dataclass(frozen=True)
class Plan:
    name: str
    streams: tuple[int, ...]  # concurrent requests at each level
    repeats: int  # batches of each arm at each level
    max_tokens: int  # per request: what decode is measured over
    scale: float  # of the captured request's text: 1 is Claude Code's size, below shrinks its descriptions
    compile_max_tokens: int = 4  # of the two requests that time the grammar's compile, cold then kept

    @property
    def steps(self) -> int:
        """Measurements one after another, for the progress bar."""
        return 3 + len(self.streams) * self.repeats * len(ARMS)


FULL = Plan("full", streams=(1, 4), repeats=6, max_tokens=96, scale=1.0)
SMOKE = Plan("smoke", streams=(1, 4), repeats=1, max_tokens=8, scale=0.05)
PLANS = {plan.name: plan for plan in (FULL, SMOKE)}


@dataclass
class Sent:
    """One request as the client saw it: what it measured ("prime", "cold", "kept" or "decode"), the
    server it went to, and its batch."""

    label: str
    arm: str
    streams: int
    repeat: int
    result: StreamResult


def body(model: str, plan: Plan, max_tokens: int, choice: str = "any") -> dict[str, Any]:
    """The captured request, greedy and without reasoning (a reasoning section is left free of the grammar,
    so with it the constrained arm would decode partly unconstrained)."""
    request = claude_code_request(model, max_tokens=max_tokens, scale=plan.scale)
    request.pop("thinking")
    return request | {"temperature": 0, "tool_choice": {"type": choice}}


def run(endpoints: dict[str, Endpoint], plan: Plan, progress: Progress) -> list[Sent]:
    """Both servers' prompt caches filled at once (the constrained one's with `tool_choice: none`: the same
    prompt, no grammar yet), the two requests that time the compile, then each level's batches."""
    primes = [
        (endpoints[arm], partial(endpoints[arm].messages, body=body(endpoints[arm].model, plan, 1, choice)))
        for arm, choice in zip(ARMS, ("none", "any"), strict=True)
    ]
    sent = [Sent("prime", arm, 1, 0, result) for arm, result in zip(ARMS, concurrently(primes), strict=True)]
    progress.update()
    constrained = endpoints["constrained"]
    with constrained.client() as client:
        for label in ("cold", "kept"):
            result = constrained.messages(client, body(constrained.model, plan, plan.compile_max_tokens))
            sent.append(Sent(label, "constrained", 1, 0, result))
            progress.update()
    order = list(ARMS)
    for streams in plan.streams:
        for repeat in range(plan.repeats):
            for arm in order:
                endpoint = endpoints[arm]
                request = partial(endpoint.messages, body=body(endpoint.model, plan, plan.max_tokens))
                results = concurrently([(endpoint, request)] * streams)
                sent += [Sent("decode", arm, streams, repeat, result) for result in results]
                progress.update()
            order.reverse()
    return sent
