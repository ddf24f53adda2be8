"""How big each workload is in a full, quick or smoke run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    name: str
    repeats: int  # of every measurement, except the sessions below
    single_prompt_tokens: int
    single_max_tokens: int
    concurrency: tuple[int, ...]
    concurrency_prompt_tokens: int
    concurrency_max_tokens: int
    session_prefix_tokens: int  # system prompt and tools, Claude Code's is about 12k
    session_turns: int
    session_result_tokens: int  # the tool result each turn after the first appends
    session_max_tokens: int
    session_repeats: int
    peer_session_repeats: int  # a peer without prefix reuse pays the whole prefix every turn
    prefill_sizes: tuple[int, ...]
    prefill_step_size: int = 1024  # mlxd's default, given to every engine so all prefill alike

    @property
    def reduced(self) -> bool:
        return self.name != "full"

    @property
    def max_sequences(self) -> int:
        return max(self.concurrency)


FULL = Plan(
    name="full",
    repeats=3,
    single_prompt_tokens=256,
    single_max_tokens=128,
    concurrency=(1, 2, 4, 8),
    concurrency_prompt_tokens=64,
    concurrency_max_tokens=64,
    session_prefix_tokens=12000,
    session_turns=6,
    session_result_tokens=400,
    session_max_tokens=16,
    session_repeats=3,
    peer_session_repeats=1,
    prefill_sizes=(512, 2048, 8192),
)
QUICK = Plan(
    name="quick",
    repeats=2,
    single_prompt_tokens=128,
    single_max_tokens=32,
    concurrency=(1, 2, 4, 8),
    concurrency_prompt_tokens=32,
    concurrency_max_tokens=16,
    session_prefix_tokens=2000,
    session_turns=3,
    session_result_tokens=150,
    session_max_tokens=8,
    session_repeats=2,
    peer_session_repeats=1,
    prefill_sizes=(512, 2048),
)
SMOKE = Plan(
    name="smoke",
    repeats=1,
    single_prompt_tokens=32,
    single_max_tokens=6,
    concurrency=(1, 2),
    concurrency_prompt_tokens=16,
    concurrency_max_tokens=4,
    session_prefix_tokens=2000,  # about the least a dozen tools with their schemas take
    session_turns=2,
    session_result_tokens=30,
    session_max_tokens=4,
    session_repeats=1,
    peer_session_repeats=1,
    prefill_sizes=(128,),
)
PLANS = {plan.name: plan for plan in (FULL, QUICK, SMOKE)}
