"""A quantized KV cache inside the continuous batch. mlx-lm has `QuantizedKVCache` for one sequence (keys and
values as `mx.quantize` triples: packed data, scales, biases; attention through `quantized_matmul`), but its
batch caches hold plain arrays only. `BatchQuantizedKVCache` is mlx-lm's `BatchKVCache` over those triples:
the same left padding, growth, filtering, extension, extraction and merging, each applied to every array
of a triple; `QuantizedCache` is the per-sequence cache that merges into it. mlx-lm's attention picks the
quantized path for any cache that has `bits`.

Keys and values are quantized as they are written, in groups of `group_size` along the head dimension
(which it must divide), so a sequence never holds them at full precision.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
from mlx.utils import tree_map
from mlx_lm.models.cache import BatchKVCache, KVCache, QuantizedKVCache, dynamic_roll

Triple = tuple[mx.array, mx.array, mx.array]


class QuantizedCache(QuantizedKVCache):
    """One sequence's quantized KV cache, which merges into a batch's like mlx-lm's `KVCache`."""

    def size(self) -> int:
        return self.offset

    @classmethod
    def merge(cls, caches: list[QuantizedCache]) -> BatchQuantizedKVCache:
        return BatchQuantizedKVCache.merge(caches)


class BatchQuantizedKVCache(BatchKVCache):
    def __init__(self, left_padding: list[int], group_size: int = 64, bits: int = 8):
        super().__init__(left_padding)
        self.group_size = group_size
        self.bits = bits

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[Triple, Triple]:
        prev, steps = self._idx, keys.shape[2]
        if self.keys is None or prev + steps > self.keys[0].shape[2]:
            grow = (self.step + steps - 1) // self.step * self.step
            new_keys, new_values = (self._zeros(x, grow) for x in (keys, values))
            if self.keys is None:
                self.keys, self.values = new_keys, new_values
            else:
                kept = (
                    tree_map(lambda x: x[..., :prev, :], self.keys),
                    tree_map(lambda x: x[..., :prev, :], self.values),
                )
                self.keys = tuple(
                    mx.concatenate(pair, axis=2) for pair in zip(kept[0], new_keys, strict=True)
                )
                self.values = tuple(
                    mx.concatenate(pair, axis=2) for pair in zip(kept[1], new_values, strict=True)
                )
        self.offset = self.offset + steps
        self._idx += steps
        for stored, fresh in ((self.keys, keys), (self.values, values)):
            for array, part in zip(stored, self._quantize(fresh), strict=True):
                array[..., prev : self._idx, :] = part
        return self.keys_and_values()

    def keys_and_values(self) -> tuple[Triple, Triple]:
        return tree_map(lambda x: x[..., : self._idx, :], self.keys), tree_map(
            lambda x: x[..., : self._idx, :], self.values
        )

    def finalize(self) -> None:
        if self._right_padding is not None:
            padding = self._right_padding[:, None]
            self.keys = tree_map(lambda x: dynamic_roll(x, padding, axis=2), self.keys)
            self.values = tree_map(lambda x: dynamic_roll(x, padding, axis=2), self.values)
            self.offset = self.offset - self._right_padding
            self.left_padding += self._right_padding
            self._right_padding = None

    def filter(self, batch_indices: Any) -> None:
        if self.keys is not None:
            self.keys = tree_map(lambda x: x[batch_indices], self.keys)
            self.values = tree_map(lambda x: x[batch_indices], self.values)
        self.offset = self.offset[batch_indices]
        self.left_padding = self.left_padding[batch_indices]
        shift = min(self.left_padding.tolist())
        if shift > 0 and self.keys is not None:  # drop the padding every row has
            self.keys = tree_map(lambda x: x[..., shift:, :], self.keys)
            self.values = tree_map(lambda x: x[..., shift:, :], self.values)
            self._idx -= shift
            self.left_padding -= shift

    def extend(self, other: BatchQuantizedKVCache) -> None:
        if self.keys is None and other.keys is None:
            self.left_padding = mx.concatenate([self.left_padding, other.left_padding])
            self.offset = mx.concatenate([self.offset, other.offset])
            return
        idx = max(self._idx, other._idx)
        size = max(c.keys[0].shape[2] for c in (self, other) if c.keys is not None)
        template = self if self.keys is not None else other

        def padded(c: BatchQuantizedKVCache) -> tuple[Triple, Triple, mx.array, mx.array]:
            rows = c.offset.shape[0]
            keys = c.keys if c.keys is not None else template._empty(template.keys, rows)
            values = c.values if c.values is not None else template._empty(template.values, rows)
            left = idx - c._idx
            right = size - keys[0].shape[2] - left

            def pad(x: mx.array) -> mx.array:
                if right < 0:
                    x = x[..., :right, :]
                return mx.pad(x, [(0, 0), (0, 0), (left, max(right, 0)), (0, 0)]) if left or right > 0 else x

            return tree_map(pad, keys), tree_map(pad, values), c.offset, c.left_padding + left

        mine, theirs = padded(self), padded(other)
        self.keys = tuple(mx.concatenate(pair) for pair in zip(mine[0], theirs[0], strict=True))
        self.values = tuple(mx.concatenate(pair) for pair in zip(mine[1], theirs[1], strict=True))
        self.offset = mx.concatenate([mine[2], theirs[2]])
        self.left_padding = mx.concatenate([mine[3], theirs[3]])
        self._idx = idx

    def extract(self, idx: int) -> QuantizedCache:
        cache = QuantizedCache(self.group_size, self.bits)
        padding = self.left_padding.tolist()[idx]
        cache.keys = tree_map(lambda x: mx.contiguous(x[idx : idx + 1, :, padding : self._idx]), self.keys)
        cache.values = tree_map(
            lambda x: mx.contiguous(x[idx : idx + 1, :, padding : self._idx]), self.values
        )
        cache.offset = self._idx - padding
        return cache

    @classmethod
    def merge(cls, caches: list[QuantizedCache]) -> BatchQuantizedKVCache:
        group_size, bits = caches[0].group_size, caches[0].bits
        lengths = [c.offset for c in caches]
        longest = max(lengths)
        if longest == 0:
            return cls([0] * len(caches), group_size, bits)
        padding = [longest - length for length in lengths]
        full = next(c for c in caches if c.keys is not None)
        keys = tree_map(
            lambda x: mx.zeros((len(caches), x.shape[1], longest, x.shape[3]), x.dtype), full.keys
        )
        values = tree_map(
            lambda x: mx.zeros((len(caches), x.shape[1], longest, x.shape[3]), x.dtype), full.values
        )
        for row, (pad, c) in enumerate(zip(padding, caches, strict=True)):
            if c.keys is None:
                continue
            for stored, own in ((keys, c.keys), (values, c.values)):
                for array, part in zip(stored, own, strict=True):
                    array[row : row + 1, :, pad : pad + c.offset] = part[..., : c.offset, :]
        cache = cls(padding, group_size, bits)
        cache.keys, cache.values = keys, values
        cache.offset = cache.offset + longest
        cache._idx = longest
        return cache

    @property
    def nbytes(self) -> int:
        if self.keys is None:
            return 0
        return sum(array.nbytes for array in (*self.keys, *self.values))

    def _quantize(self, x: mx.array) -> Triple:
        return mx.quantize(x, group_size=self.group_size, bits=self.bits)

    def _zeros(self, like: mx.array, steps: int) -> Triple:
        """Room for `steps` positions of `like`'s rows and heads, quantized."""
        batch, heads, _, dim = like.shape
        per_word = 32 // self.bits
        groups = dim // self.group_size
        return (
            mx.zeros((batch, heads, steps, dim // per_word), mx.uint32),
            mx.zeros((batch, heads, steps, groups), like.dtype),
            mx.zeros((batch, heads, steps, groups), like.dtype),
        )

    @staticmethod
    def _empty(triple: Triple, rows: int) -> Triple:
        return tree_map(lambda x: mx.zeros((rows, x.shape[1], 0, x.shape[3]), x.dtype), triple)


def quantized(cache: list[Any], group_size: int, bits: int) -> list[Any]:
    """A fresh prompt cache with each plain attention layer's made quantized (others stay as they are)."""
    return [QuantizedCache(group_size, bits) if type(layer) is KVCache else layer for layer in cache]
