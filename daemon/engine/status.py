"""What `mlxd ps` and `GET /v1/admin/ps` show of each model."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelStatus:
    """What `mlxd ps` shows of a model."""

    name: str
    aliases: tuple[str, ...]
    source: str
    state: str  # "loaded", "loading" or "unloaded"
    pinned: bool
    ttl: float  # 0: never unloaded for idleness
    weight_bytes: int
    cache_bytes: int
    kv_bytes: int  # KV state held: its sequences' and its prompt cache's (as of its last step)
    disk_cache_bytes: int
    cache_counts: dict[str, int]  # `PromptCache.counts`: hits by tier, bytes to and from disk
    idle_seconds: float | None  # None while a request is in flight or when unloaded
    active_sequences: int
    queued: int
    requests_served: int  # accepted since the daemon started, those in flight included
    context_length: int | None
    last_error: str | None
