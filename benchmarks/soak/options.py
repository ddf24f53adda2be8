"""The soak's settings: one frozen set shared by the traffic, the sampling and the checks after."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Options:
    clients: int = 8
    duration_s: float = 1800
    max_tokens: int = 64  # each generation asks for 1 to this many
    short_words: int = 12
    long_words: int = 300
    request_timeout_s: float = 120  # the longest any one request may take, streamed or not
    max_requests: int = 100_000  # per client
    sample_every_s: float = 5
    warmup_fraction: float = 0.2
    rss_tolerance: float = 0.10
    max_slope_mib_per_min: float = 1.0
    drain_timeout_s: float = 15
    seed: int = 0
