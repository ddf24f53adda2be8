"""The disk tier under the prefix cache: KV state in blocks of `BLOCK_TOKENS` tokens, a file each, named by
a hash chained over every token up to and including the block (seeded with the model and its KV setting),
so one file serves every prompt that begins with those tokens.

- Blocks are written in the background soon after their state is computed (when the prompt cache stores
  it), so a crash or `kill -9` loses only writes still queued.
- A prompt whose leading blocks lie on disk beyond what RAM holds reads them back (`read`), on a thread of
  the caller's choosing, so a long read need not hold up other streams.
- At most `max_bytes` are kept; the least recently used blocks go first (their files' times carry the order
  across restarts).
- Each file is written whole under a temporary name, synced, then renamed, and carries a CRC of its
  tensors: a torn or corrupt file is skipped and removed, never loaded. Files are the user's alone.
- A folder that cannot be made, or a write that fails (a full disk), leaves the prompt cache RAM-only with
  a warning.

Only models whose every layer keeps a plain KV cache (mlx-lm's `KVCache`, or mlxd's quantized one) have a
disk tier: their state slices by position. The engine thread makes the slices (MLX work stays on its
thread); the writer only copies evaluated buffers to files.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

BLOCK_TOKENS = 256
SUFFIX = ".kvblock"
FORMAT = "mlxd-kv-2"
_FLUSH_SECONDS = 10.0  # at shutdown, how long queued writes may still take


@dataclass
class DiskStats:
    """What the tier did since the model loaded, for `/metrics` and `mlxd ps`."""

    bytes_written: int = 0
    bytes_read: int = 0
    blocks_skipped: int = 0  # torn or corrupt files found and removed


@dataclass(frozen=True)
class Blocks:
    """KV state read from disk, `count` blocks: each array's blocks in order, as numpy arrays, named
    `k<layer>.<part>` and `v<layer>.<part>` (one part for a plain cache, three for a quantized one: data,
    scales, biases); bfloat16 arrays come as their 16-bit patterns."""

    arrays: dict[str, list[Any]]
    count: int
    quantized: tuple[int, int] | None  # (bits, group size) of a quantized cache; None: a plain one


class DiskTier:
    def __init__(self, folder: Path, max_bytes: int, key: str):
        self.folder = folder
        self.max_bytes = max_bytes
        self.stats = DiskStats()
        self._seed = hashlib.sha256(f"{FORMAT}|{key}".encode()).digest()
        self._index: OrderedDict[str, int] = OrderedDict()  # name → bytes, least recently used first
        self._bytes = 0  # the index's total
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self.writable = self._open()
        self._writer = threading.Thread(target=self._write_all, name="kv-disk-writer", daemon=True)
        self._writer.start()

    @property
    def nbytes(self) -> int:
        return self._bytes

    def names(self, tokens: list[int]) -> list[str]:
        """The file name of each whole block of `tokens` (a request's prompt is named on every fetch and
        store: its tokens are packed once, not per block)."""
        packed = np.asarray(tokens, dtype=np.uint32).tobytes()
        width = BLOCK_TOKENS * 4
        names, digest = [], self._seed
        for end in range(width, len(packed) + 1, width):
            digest = hashlib.sha256(digest + packed[end - width : end]).digest()
            names.append(digest.hex()[:40] + SUFFIX)
        return names

    def covered(self, names: list[str]) -> int:
        """How many of the leading blocks lie on disk, in a row."""
        with self._lock:
            return next((i for i, name in enumerate(names) if name not in self._index), len(names))

    def store(self, tokens: list[int], cache: list[Any]) -> None:
        """Queue the whole blocks of `tokens` not yet on disk; called on the engine thread, whose MLX work
        it does (slicing and evaluating), so the writer only copies bytes."""
        import mlx.core as mx

        if not self.writable:
            return
        tokens = tokens[: cache[0].offset]  # the last token's state may not be computed yet
        with self._lock:
            todo = [
                (i, name)
                for i, name in enumerate(self.names(tokens))
                if name not in self._index and name not in self._pending
            ]
            self._pending.update(name for _, name in todo)
        for i, name in todo:
            start, end = i * BLOCK_TOKENS, (i + 1) * BLOCK_TOKENS
            arrays = {}
            for layer, c in enumerate(cache):
                for side, state in (("k", c.keys), ("v", c.values)):
                    for part, array in enumerate(state if isinstance(state, tuple) else (state,)):
                        arrays[f"{side}{layer}.{part}"] = _raw(array[..., start:end, :])
            mx.eval(list(arrays.values()))
            bits = getattr(cache[0], "bits", None)
            self._queue.put((name, arrays, f"{bits}/{cache[0].group_size}" if bits else ""))

    def read(self, names: list[str]) -> Blocks | None:
        """The blocks named, in order, as far as they read whole (a block that does not is removed, and the
        rest is left to compute); None when not even the first does. Safe from any thread."""
        from safetensors import safe_open

        arrays: dict[str, list[Any]] = {}
        quantized, count = "", 0
        for name in names:
            path = self.folder / name
            try:
                with safe_open(str(path), framework="numpy") as file:
                    meta = file.metadata() or {}
                    tensors = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118 (a safe_open file is not a dict)
                if meta.get("format") != FORMAT or int(meta["crc"]) != _crc(tensors):
                    raise ValueError("its checksum does not match: a torn or corrupt write")
            except Exception as error:  # a file that does not read whole is never used
                self._drop(name, f"skipping prompt cache block {path}: {error}")
                break
            quantized = meta.get("quantized", "")
            for key, tensor in tensors.items():
                arrays.setdefault(key, []).append(tensor)
            self.stats.bytes_read += path.stat().st_size
            self._touch(name, path)
            count += 1
        if not count:
            return None
        bits, _, group_size = quantized.partition("/")
        return Blocks(arrays, count, (int(bits), int(group_size)) if quantized else None)

    def close(self) -> None:
        """Let queued writes finish (for a while), then stop the writer."""
        self._queue.put(None)
        self._writer.join(timeout=_FLUSH_SECONDS)
        if self._writer.is_alive():
            log.warning("gave up on %d prompt cache blocks still to write at shutdown", self._queue.qsize())

    def _open(self) -> bool:
        """Make the folder and index what an earlier run left; False (RAM-only) if it cannot be made."""
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            files = [(p.stat().st_mtime, p.name, p.stat().st_size) for p in self.folder.glob(f"*{SUFFIX}")]
            for stale in [*self.folder.glob("*.tmp"), *self.folder.glob("prefix-*.safetensors")]:
                stale.unlink()  # torn writes, and the whole-prefix files of mlxd before the disk tier
        except OSError as error:
            log.warning("the prompt cache stays in RAM only: cannot use %s: %s", self.folder, error)
            return False
        for _, name, size in sorted(files):
            self._index[name] = size
        self._bytes = sum(self._index.values())
        return True

    def _write_all(self) -> None:
        while (item := self._queue.get()) is not None:
            name, arrays, quantized = item
            try:
                if self.writable:
                    self._write(name, arrays, quantized)
            except Exception as error:  # a full disk, mostly (safetensors wraps the OSError)
                self.writable = False
                log.warning("the prompt cache stays in RAM only from now: writing %s failed: %s", name, error)
            finally:
                with self._lock:
                    self._pending.discard(name)

    def _write(self, name: str, arrays: dict[str, Any], quantized: str) -> None:
        import numpy as np
        from safetensors.numpy import save_file

        tensors = {key: np.ascontiguousarray(value) for key, value in arrays.items()}
        metadata = {"format": FORMAT, "quantized": quantized, "crc": str(_crc(tensors))}
        path, partial = self.folder / name, self.folder / f"{name}.tmp"
        try:
            save_file(tensors, str(partial), metadata=metadata)
            partial.chmod(0o600)
            with open(partial, "rb") as written:
                os.fsync(written.fileno())
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        size = path.stat().st_size
        self.stats.bytes_written += size
        with self._lock:
            self._index[name] = size
            self._bytes += size
            victims = []
            while self._bytes > self.max_bytes and len(self._index) > 1:
                victim, freed = self._index.popitem(last=False)
                self._bytes -= freed
                victims.append(victim)
        for victim in victims:
            (self.folder / victim).unlink(missing_ok=True)

    def _touch(self, name: str, path: Path) -> None:
        with self._lock:
            if name in self._index:
                self._index.move_to_end(name)
        with contextlib.suppress(OSError):  # the order is kept in memory; a restart would see the old time
            os.utime(path)

    def _drop(self, name: str, message: str) -> None:
        log.warning("%s", message)
        self.stats.blocks_skipped += 1
        with self._lock:
            self._bytes -= self._index.pop(name, 0)
        (self.folder / name).unlink(missing_ok=True)


def _raw(array: Any) -> Any:
    """`array` as numpy can hold it: bfloat16 as its 16-bit patterns."""
    import mlx.core as mx

    return array.view(mx.uint16) if array.dtype == mx.bfloat16 else array


def _crc(tensors: dict[str, Any]) -> int:
    crc = 0
    for key in sorted(tensors):
        crc = zlib.crc32(memoryview(tensors[key]).cast("B"), crc)
    return crc
