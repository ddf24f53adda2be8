"""Prefix reuse across requests: mlx-lm's `LRUPromptCache` under a byte budget, plus saving the most
valuable long prefixes to disk at shutdown and restoring them when the model loads (warm restart).

Used only from the engine thread.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlx_lm.models.cache import (
    LRUPromptCache,
    can_trim_prompt_cache,
    load_prompt_cache,
    save_prompt_cache,
    trim_prompt_cache,
)

log = logging.getLogger(__name__)

# Below this many tokens a prefix is cheap to recompute and not worth a file.
MIN_SAVED_TOKENS = 256
_MAX_ENTRIES = 64


@dataclass(frozen=True)
class CacheHit:
    cache: list[Any] | None
    reused: int


@dataclass(frozen=True)
class Persistence:
    """Where a model's prefixes are saved at shutdown, and how many bytes of them at most."""

    folder: Path
    max_bytes: int


class PromptCache:
    def __init__(self, model_key: str, max_bytes: int, persistence: Persistence | None = None):
        self.model_key = model_key
        self.max_bytes = max_bytes
        self.persistence = persistence
        self._lru = LRUPromptCache(max_size=_MAX_ENTRIES, max_bytes=max_bytes)
        # Every sequence stored, so the longest still present can be found at shutdown.
        self._stored: dict[tuple[int, ...], None] = {}

    @property
    def nbytes(self) -> int:
        return self._lru.nbytes

    @property
    def entries(self) -> int:
        return len(self._lru)

    def fetch(self, tokens: list[int]) -> CacheHit:
        """A copy of the KV state of the longest cached prefix of `tokens`; at least one token is left to
        process, since generation starts from the logits of the last prompt token."""
        if self.max_bytes == 0:
            return CacheHit(None, 0)
        cache, rest = self._lru.fetch_nearest_cache(self.model_key, tokens)
        if cache is None:
            return CacheHit(None, 0)
        if not rest:
            if not can_trim_prompt_cache(cache):
                return CacheHit(None, 0)
            trim_prompt_cache(cache, 1)
            rest = tokens[-1:]
        return CacheHit(cache, len(tokens) - len(rest))

    def store(self, tokens: list[int], cache: list[Any], kind: str = "assistant") -> None:
        if self.max_bytes == 0 or not tokens:
            return
        self._lru.insert_cache(self.model_key, list(tokens), cache, cache_type=kind)
        key = tuple(tokens)
        self._stored.pop(key, None)
        self._stored[key] = None
        while len(self._stored) > 4 * _MAX_ENTRIES:  # keys only; the LRU decides what stays cached
            del self._stored[next(iter(self._stored))]

    def shrink_to(self, max_bytes: int) -> None:
        """Evict least-recently-used entries until the cache fits `max_bytes`."""
        self._lru.trim_to(n_bytes=max_bytes)

    def save(self) -> int:
        """Write the longest cached prefixes to the persistence folder, within its byte cap; returns how
        many were saved. Never raises: a disk that is full or not writable costs the warm restart only."""
        if self.persistence is None:
            return 0
        folder = self.persistence.folder
        try:
            saved = self._save(folder, self.persistence.max_bytes)
        except Exception as error:
            log.error("could not save the prompt cache in %s: %s", folder, error)
            return 0
        if saved:
            log.info("saved %d prompt cache prefixes for warm restart in %s", saved, folder)
        return saved

    def _save(self, folder: Path, budget: int) -> int:
        # Each file is written whole under a temporary name, then renamed over the last shutdown's file of
        # that name, so a crash at any point leaves only complete files where `restore` looks. They hold
        # what prompts said, so only the user may read them.
        partial = folder / ".partial"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial.mkdir(mode=0o700, exist_ok=True)
        written: set[str] = set()
        for tokens in sorted(self._stored, key=len, reverse=True):
            if len(tokens) < MIN_SAVED_TOKENS:
                break
            cache, rest = self._lru.fetch_nearest_cache(self.model_key, list(tokens))
            if cache is None or rest:
                continue  # evicted since, or folded into a longer entry
            size = sum(c.nbytes for c in cache)
            if size > budget:
                continue
            name = f"prefix-{len(written)}.safetensors"
            metadata = {"model_key": self.model_key, "tokens": json.dumps(list(tokens))}
            save_prompt_cache(str(partial / name), cache, metadata)
            (partial / name).chmod(0o600)
            os.replace(partial / name, folder / name)
            budget -= size
            written.add(name)
        for old in folder.glob("*.safetensors"):
            if old.name not in written:
                old.unlink()  # the rest of the last shutdown's files
        return len(written)

    def restore(self) -> int:
        """Load what `save` wrote for this model; files that are corrupt or for another model are skipped,
        and so is a folder that cannot be read."""
        if self.persistence is None:
            return 0
        restored = 0
        try:
            paths = sorted(self.persistence.folder.glob("*.safetensors"))
        except OSError as error:
            log.warning("ignoring saved prompt caches in %s: %s", self.persistence.folder, error)
            return 0
        for path in paths:
            try:
                cache, metadata = load_prompt_cache(str(path), return_metadata=True)
                if metadata.get("model_key") != self.model_key:
                    raise ValueError("it was saved for a different model")
                tokens = json.loads(metadata["tokens"])
                if not isinstance(tokens, list) or not tokens:
                    raise ValueError("it names no tokens")
            except Exception as error:  # any unreadable file is skipped, never fatal
                log.warning("ignoring saved prompt cache %s: %s", path, error)
                continue
            self.store(tokens, cache, kind="system")
            restored += 1
        if restored:
            log.info("restored %d prompt cache prefixes from %s", restored, self.persistence.folder)
        return restored
