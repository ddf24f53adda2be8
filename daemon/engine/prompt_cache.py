"""Prefix reuse across requests: mlx-lm's `LRUPromptCache` under a byte budget in RAM, over a disk tier
(daemon.engine.disk_cache) that keeps prefixes across evictions and restarts.

Used only from the engine thread, except `read`, which runs wherever the engine sends it.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mlx_lm.models.cache import KVCache, LRUPromptCache, can_trim_prompt_cache, trim_prompt_cache

from daemon.engine.disk_cache import BLOCK_TOKENS, Blocks, DiskTier
from daemon.engine.quantized_cache import QuantizedCache

log = logging.getLogger(__name__)

_MAX_ENTRIES = 64


@dataclass(frozen=True)
class CacheHit:
    cache: list[Any] | None
    reused: int
    on_disk: list[str] = field(default_factory=list)  # blocks to read beyond what RAM gave
    tier: str | None = None  # where the reused state came from: "ram" or "disk" (in part, at least)


class PromptCache:
    def __init__(self, model_key: str, max_bytes: int, disk: DiskTier | None = None):
        self.model_key = model_key
        self.max_bytes = max_bytes
        self.disk = disk
        self.hits = {"ram": 0, "disk": 0}  # requests that reused cached state, by where it came from
        self._lru = LRUPromptCache(max_size=_MAX_ENTRIES, max_bytes=max_bytes)

    @property
    def nbytes(self) -> int:
        return self._lru.nbytes

    @property
    def entries(self) -> int:
        return len(self._lru)

    @property
    def disk_bytes(self) -> int:
        return self.disk.nbytes if self.disk is not None else 0

    def fetch(self, tokens: list[int]) -> CacheHit:
        """A copy of the KV state of the longest prefix of `tokens` in RAM, and the blocks on disk that
        reach further (see `read`); at least one token is left to process, since generation starts from
        the logits of the last prompt token."""
        if self.max_bytes == 0:  # the prompt cache is off
            return CacheHit(None, 0)
        hit = self._fetch_ram(tokens)
        if self.disk is None or (hit.cache is not None and not _sliceable(hit.cache)):
            return hit
        names = self.disk.names(tokens[:-1])
        kept = hit.reused // BLOCK_TOKENS if hit.cache is not None else 0
        covered = self.disk.covered(names)
        if covered * BLOCK_TOKENS <= hit.reused:
            return hit
        return replace(hit, on_disk=names[kept:covered])

    def _fetch_ram(self, tokens: list[int]) -> CacheHit:
        cache, rest = self._lru.fetch_nearest_cache(self.model_key, tokens)
        if cache is None:
            return CacheHit(None, 0)
        if not rest:
            if not can_trim_prompt_cache(cache):
                return CacheHit(None, 0)
            trim_prompt_cache(cache, 1)
            rest = tokens[-1:]
        return CacheHit(cache, len(tokens) - len(rest), tier="ram")

    def read(self, hit: CacheHit) -> Blocks | None:
        """The disk blocks `hit` names, read from any thread (see `DiskTier.read`)."""
        assert self.disk is not None
        return self.disk.read(hit.on_disk)

    def extend(self, hit: CacheHit, blocks: Blocks | None) -> CacheHit:
        """`hit` with the blocks read from disk after the whole blocks RAM gave; as it was if none read."""
        import mlx.core as mx

        if blocks is None:
            return replace(hit, on_disk=[])
        kept = hit.reused // BLOCK_TOKENS * BLOCK_TOKENS if hit.cache is not None else 0
        parts = 3 if blocks.quantized else 1
        cache = []
        for layer in range(sum(key.startswith("k") for key in blocks.arrays) // parts):
            state = {}
            for side in ("k", "v"):
                read = [_restored(blocks.arrays[f"{side}{layer}.{part}"]) for part in range(parts)]
                if kept:
                    ram = getattr(hit.cache[layer], "keys" if side == "k" else "values")  # type: ignore[index]
                    ram = ram if isinstance(ram, tuple) else (ram,)
                    read = [
                        mx.concatenate([r[..., :kept, :], d], axis=2) for r, d in zip(ram, read, strict=True)
                    ]
                state[side] = tuple(read) if blocks.quantized else read[0]
            restored = (
                QuantizedCache(blocks.quantized[1], blocks.quantized[0]) if blocks.quantized else KVCache()
            )
            restored.keys, restored.values = state["k"], state["v"]
            restored.offset = kept + blocks.count * BLOCK_TOKENS
            cache.append(restored)
        return CacheHit(cache, kept + blocks.count * BLOCK_TOKENS, tier="disk")

    def counts(self) -> dict[str, int]:
        """Hits by tier and bytes to and from disk, since the model loaded."""
        stats = self.disk.stats if self.disk is not None else None
        return {
            "ram_hits": self.hits["ram"],
            "disk_hits": self.hits["disk"],
            "disk_read_bytes": stats.bytes_read if stats else 0,
            "disk_written_bytes": stats.bytes_written if stats else 0,
        }

    def count(self, hit: CacheHit) -> None:
        """Count a request's hit by its tier."""
        if hit.tier is not None:
            self.hits[hit.tier] += 1

    def store(self, tokens: list[int], cache: list[Any], kind: str = "assistant") -> None:
        """Keep the state of `tokens` in RAM, and queue its whole blocks for the disk."""
        if self.max_bytes == 0 or not tokens:
            return
        if self.disk is not None and _sliceable(cache):
            self.disk.store(list(tokens), cache)
        self._lru.insert_cache(self.model_key, list(tokens), cache, cache_type=kind)

    def shrink_to(self, max_bytes: int) -> None:
        """Evict least-recently-used entries until the cache fits `max_bytes`."""
        self._lru.trim_to(n_bytes=max_bytes)

    def close(self) -> None:
        """Finish the disk writes still queued (for a while)."""
        if self.disk is not None:
            self.disk.close()


def model_cache(loaded: Any, max_bytes: int, disk_dir: Path | None, disk_bytes: int) -> PromptCache:
    """The prompt cache of a `LoadedModel`: `max_bytes` in RAM (0: no cache), over a disk tier in a folder of
    its own under `disk_dir` (none without a folder, bytes for it, or a RAM tier), keyed by its weights and
    its KV setting, so that no other model's or setting's state is ever read."""
    disk = None
    if disk_dir is not None and disk_bytes and max_bytes:
        key = f"{loaded.fingerprint}|kv={loaded.kv[0]}/{loaded.kv[1]}"
        disk = DiskTier(disk_dir / loaded.fingerprint, disk_bytes, key)
    return PromptCache(loaded.fingerprint, max_bytes, disk)


class DiskReads:
    """Disk reads for jobs whose prefix lies on disk, one at a time on a thread of their own, so other
    sequences go on decoding meanwhile; `wake` is called when one is done."""

    def __init__(self, cache: PromptCache, wake: Any):
        self._cache, self._wake = cache, wake
        self._pool: ThreadPoolExecutor | None = None
        self._reads: list[tuple[Any, float, CacheHit, Future]] = []

    @property
    def pending(self) -> bool:
        return bool(self._reads)

    def start(self, job: Any, submitted: float, hit: CacheHit) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kv-disk-reader")
        future = self._pool.submit(self._cache.read, hit)
        future.add_done_callback(lambda _: self._wake())
        self._reads.append((job, submitted, hit, future))

    def done(self) -> list[tuple[Any, float, CacheHit]]:
        """The jobs whose read finished, each with its hit extended by what was read (a read that failed
        leaves the hit as RAM gave it: the rest is computed)."""
        finished, waiting = [], []
        for read in self._reads:  # one pass: a read that finishes meanwhile waits for the next call
            (finished if read[3].done() else waiting).append(read)
        self._reads, out = waiting, []
        for job, submitted, hit, future in finished:
            try:
                hit = self._cache.extend(hit, future.result())
            except Exception:
                log.exception("could not read the prompt cache from disk; computing it instead")
                hit = replace(hit, on_disk=[])
            out.append((job, submitted, hit))
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _sliceable(cache: list[Any]) -> bool:
    """Whether the state slices by position, as the disk tier keeps it: every layer a plain KV cache, of
    one kind (mlx-lm's `KVCache`, or mlxd's quantized one)."""
    return len({type(c) for c in cache}) == 1 and type(cache[0]) in (KVCache, QuantizedCache)


def _restored(blocks: list[Any]) -> Any:
    """Blocks of one array read from disk as one MLX array; 16-bit patterns are bfloat16 (no cache holds
    integers of that width)."""
    import mlx.core as mx
    import numpy as np

    joined = mx.concatenate([mx.array(block) for block in blocks], axis=2)
    return joined.view(mx.bfloat16) if blocks[0].dtype == np.uint16 else joined
