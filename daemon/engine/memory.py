"""How much memory models take: sizes read from their weight files and the KV state they hold, the plan that
makes room for one more under the memory budget, and handing memory back after an unload."""

from __future__ import annotations

import gc
from dataclasses import dataclass

from daemon.config.units import format_bytes


class NoRoom(Exception):
    """A model that does not fit in the memory budget; `retry` says whether it will once models in use go
    idle (False: it never fits as configured)."""

    def __init__(self, message: str, *, retry: bool):
        super().__init__(message)
        self.retry = retry


@dataclass(frozen=True)
class Resident:
    """A loaded model, as the budget sees it: `bytes` of weights and KV state, `kv_bytes` of them KV."""

    name: str
    bytes: int
    pinned: bool
    busy: bool
    last_used: float
    kv_bytes: int = 0

    def describe(self) -> str:
        kv = f", {format_bytes(self.kv_bytes)} of it KV" if self.kv_bytes else ""
        note = ", pinned" if self.pinned else ", in use" if self.busy else ""
        return f"{self.name} ({format_bytes(self.bytes)}{kv}{note})"


def plan_room(name: str, needed: int, budget: int, residents: list[Resident]) -> list[Resident]:
    """The residents to unload, least recently used first, so that `needed` more bytes fit in `budget`
    (0: no limit). Pinned models and models in use are never chosen; raises `NoRoom` when that is not
    enough."""
    if budget == 0:
        return []
    free = budget - sum(r.bytes for r in residents)
    chosen: list[Resident] = []
    for resident in sorted((r for r in residents if not (r.pinned or r.busy)), key=lambda r: r.last_used):
        if free >= needed:
            break
        chosen.append(resident)
        free += resident.bytes
    if free >= needed:
        return chosen
    loaded = ", ".join(r.describe() for r in residents) or "nothing"
    summary = f"model {name} needs {format_bytes(needed)}; the memory budget is {format_bytes(budget)}"
    if needed > budget - sum(r.bytes for r in residents if r.pinned):
        raise NoRoom(
            f"{summary} and loaded are: {loaded}. It cannot fit, so do not retry: raise memory_budget_bytes, "
            "or unpin models, or choose a smaller model",
            retry=False,
        )
    raise NoRoom(
        f"{summary} and the models loaded are in use: {loaded}. Retry once they are idle", retry=True
    )


def release_memory() -> None:
    """Hand the memory of dropped arrays back: collect them now, then empty MLX's buffer cache, which
    would otherwise keep their buffers for reuse."""
    import mlx.core as mx

    gc.collect()
    mx.clear_cache()


def active_memory() -> int:
    """Bytes MLX holds in arrays right now, across every model."""
    import mlx.core as mx

    return mx.get_active_memory()
