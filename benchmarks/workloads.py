"""The workloads, measured from the client side over HTTP: single stream, concurrency, a Claude Code-shaped
session, and prefill. Every target gets the same prompts, made once per run by `Workset.make`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import httpx

from benchmarks.client import Endpoint, StreamResult
from benchmarks.plan import Plan
from benchmarks.prompts import Conversation, PromptBuilder, Session
from benchmarks.stats import summary


class Progress(Protocol):
    def update(self, n: int = 1) -> Any: ...


@dataclass
class Workset:
    """Every prompt of a run. Each is different from its first words on, so no measurement reads another's
    cached prefix, except the session turns, whose reuse is the point."""

    warmup: Conversation
    single: list[Conversation]
    concurrency: dict[int, list[list[Conversation]]]  # level -> repeats -> one prompt per stream
    sessions: list[Session]
    prefill: dict[int, list[Conversation]]  # prompt size -> repeats

    @classmethod
    def make(cls, builder: PromptBuilder, plan: Plan, run_id: str) -> Workset:
        def prompt(size: int, tag: str) -> Conversation:
            return builder.user_prompt(size, f"{run_id}-{tag}")

        repeats = range(plan.repeats)
        return cls(
            warmup=prompt(16, "warmup"),
            single=[prompt(plan.single_prompt_tokens, f"single-{r}") for r in repeats],
            concurrency={
                level: [
                    [prompt(plan.concurrency_prompt_tokens, f"c{level}-{r}-{s}") for s in range(level)]
                    for r in repeats
                ]
                for level in plan.concurrency
            },
            sessions=[
                builder.session(plan.session_prefix_tokens, f"{run_id}-s{r}")
                for r in range(plan.session_repeats)
            ],
            prefill={size: [prompt(size, f"p{size}-{r}") for r in repeats] for size in plan.prefill_sizes},
        )

    def http_steps(self, plan: Plan, session_repeats: int) -> int:
        """How many measurements one HTTP target takes, for the progress bar."""
        return (
            1
            + len(self.single)
            + sum(len(runs) for runs in self.concurrency.values())
            + min(session_repeats, len(self.sessions)) * plan.session_turns
            + sum(len(runs) for runs in self.prefill.values())
        )


def measure(
    endpoint: Endpoint, work: Workset, plan: Plan, session_repeats: int, progress: Progress
) -> dict[str, Any]:
    """All HTTP workloads against one target, after one warm-up request."""
    with endpoint.client() as client:
        endpoint.stream(client, work.warmup, 4)
    progress.update()
    return {
        "single_stream": single_stream(endpoint, work.single, plan.single_max_tokens, progress),
        "concurrency": concurrency(endpoint, work.concurrency, plan.concurrency_max_tokens, progress),
        "session": session(endpoint, work.sessions[:session_repeats], plan, progress),
        "prefill": prefill(endpoint, work.prefill, progress),
    }


def single_stream(
    endpoint: Endpoint, prompts: list[Conversation], max_tokens: int, progress: Progress
) -> dict[str, Any]:
    results = []
    with endpoint.client() as client:
        for conversation in prompts:
            results.append(endpoint.stream(client, conversation, max_tokens))
            progress.update()
    return stream_summary(results)


def stream_summary(results: list[StreamResult]) -> dict[str, Any]:
    return {
        "ttft_s": summary(r.ttft for r in results),
        "decode_tps": summary(r.decode_tps for r in results),
        "prompt_tokens": summary(r.prompt_tokens for r in results),
        "output_tokens": summary(r.output_tokens for r in results),
    }


def concurrency(
    endpoint: Endpoint, levels: dict[int, list[list[Conversation]]], max_tokens: int, progress: Progress
) -> dict[str, Any]:
    out = {}
    for level, runs in levels.items():
        batches = []
        for prompts in runs:
            batches.append(_concurrent(endpoint, prompts, max_tokens))
            progress.update()
        out[str(level)] = batch_summary(batches)
    return out


def batch_summary(batches: list[list[StreamResult]]) -> dict[str, Any]:
    """Aggregate tokens/s: every stream's output over the wall time from the first send to the last end;
    per stream: each stream's own decode rate, pooled over the repeats."""
    return {
        "aggregate_tps": summary(
            sum(r.output_tokens for r in batch) / (max(r.done for r in batch) - min(r.sent for r in batch))
            for batch in batches
        ),
        "per_stream_tps": summary(r.decode_tps for batch in batches for r in batch),
        "ttft_s": summary(r.ttft for batch in batches for r in batch),
        "output_tokens": summary(r.output_tokens for batch in batches for r in batch),
    }


def _concurrent(endpoint: Endpoint, prompts: list[Conversation], max_tokens: int) -> list[StreamResult]:
    return concurrently(
        [
            (endpoint, partial(endpoint.stream, conversation=prompt, max_tokens=max_tokens))
            for prompt in prompts
        ]
    )


Request = Callable[[httpx.Client], StreamResult]


def concurrently(requests: list[tuple[Endpoint, Request]]) -> list[StreamResult]:
    """Each request on a client of its endpoint's own, all released at once; their results in order."""
    start = threading.Barrier(len(requests))

    def one(index: int) -> StreamResult:
        endpoint, request = requests[index]
        with endpoint.client() as client:
            start.wait()
            return request(client)

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(one, range(len(requests))))


def session(endpoint: Endpoint, sessions: list[Session], plan: Plan, progress: Progress) -> dict[str, Any]:
    """Per turn: time to first token, prompt and cached tokens, and the time over turn 1's."""
    turns: list[list[StreamResult]] = [[] for _ in range(plan.session_turns)]
    for conversation in sessions:
        with endpoint.client() as client:
            for number in range(1, plan.session_turns + 1):
                request = conversation.turn(number, plan.session_result_tokens)
                turns[number - 1].append(endpoint.stream(client, request, plan.session_max_tokens))
                progress.update()
    return {
        "turns": [
            {
                "turn": number,
                "ttft_s": summary(r.ttft for r in results),
                "prompt_tokens": summary(r.prompt_tokens for r in results),
                "cached_tokens": summary(r.cached_tokens for r in results),
                "ttft_over_turn1": summary(
                    r.ttft / first.ttft for r, first in zip(results, turns[0], strict=True)
                ),
            }
            for number, results in enumerate(turns, start=1)
        ]
    }


def prefill(endpoint: Endpoint, sizes: dict[int, list[Conversation]], progress: Progress) -> dict[str, Any]:
    """Prompt tokens computed per second until the first token, one output token per request."""
    out = {}
    with endpoint.client() as client:
        for size, prompts in sizes.items():
            results = []
            for conversation in prompts:
                results.append(endpoint.stream(client, conversation, 1))
                progress.update()
            out[str(size)] = prefill_summary(results)
    return out


def prefill_summary(results: list[StreamResult]) -> dict[str, Any]:
    return {
        "prefill_tps": summary(r.prefill_tps for r in results),
        "ttft_s": summary(r.ttft for r in results),
        "prompt_tokens": summary(r.prompt_tokens for r in results),
        "cached_tokens": summary(r.cached_tokens for r in results),
    }
