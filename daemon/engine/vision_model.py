"""A vision model on the engine thread: mlx-vlm's model (vision tower, projector, language model) with its
language model made to step like an mlx-lm model in the continuous batch, and the prefill that brings a
prompt with images into a sequence's KV cache.

Positions. Models with multimodal rotary positions (the Qwen-VL family) give an image fewer positions than
tokens, so every later token sits `delta` positions off its index: the language model is always handed
its positions, each row's cache offset plus its row's `delta` (0 for a prompt without images), never left
to the per-model state mlx-vlm keeps for one sequence. The batch says which rows are shifted by setting
`deltas` around its steps (`shifted`).

Prefill. A prompt with images is processed apart from the batch, one unit of work per engine loop so that
other streams keep stepping: its uncached tokens in chunks, the images' embeddings taken from the vision
tower, which runs on a thread and MLX stream of its own (`Encoder`) while the engine goes on, and only on
images the prefix cache does not already cover; then it joins the batch to decode.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.cache import make_prompt_cache

from daemon.engine.quantized_cache import quantized
from daemon.engine.vision import VisionInputs, stacked

# What of mlx-vlm's image features a prefill in chunks passes on: the embeddings, positions, and Qwen3-VL's
# deepstack features (which its language model aligns with each chunk by the cache's offset). A model
# whose features hold anything else is refused (its images would be misread).
_CHUNKED = {"inputs_embeds", "position_ids", "rope_deltas", "visual_pos_masks", "deepstack_visual_embeds"}
# Gemma 3's `attention_mask_4d` is the outer product of the padding mask it is given (all ones here): the
# causal masks its language model makes itself are the ones it needs.
_UNNEEDED = {"attention_mask_4d"}


class VisionLanguage:
    """mlx-vlm's language model, called as mlx-lm calls a model: `model(tokens, cache=...)` → logits."""

    def __init__(self, vlm: Any):
        _evaluate_constants(vlm)
        self.vlm = vlm
        self.language = vlm.language_model
        self.args = getattr(self.language, "args", None) or self.language.config  # its vocab_size, for one
        self.multimodal_positions = hasattr(self.language, "get_rope_index")
        self.deltas: mx.array | None = None  # per row, while a batch with shifted rows steps
        self.encoder = Encoder()

    @property
    def layers(self) -> Any:
        return self.language.layers

    def make_cache(self) -> list[Any]:
        if hasattr(self.language, "make_cache"):
            return self.language.make_cache()
        return make_prompt_cache(self.language)

    @contextlib.contextmanager
    def shifted(self, deltas: list[int]) -> Iterator[None]:
        """Steps taken inside shift each row's positions by its delta."""
        self.deltas = mx.array(deltas) if any(deltas) else None
        try:
            yield
        finally:
            self.deltas = None

    def __call__(self, inputs: mx.array, cache: Any = None, **kwargs: Any) -> mx.array:
        if self.multimodal_positions and "position_ids" not in kwargs:
            kwargs["position_ids"] = self._positions(inputs.shape, cache)
        return self.language(inputs, cache=cache, **kwargs).logits

    def _positions(self, shape: tuple[int, ...], cache: Any) -> mx.array:
        rows, length = shape
        offset = cache[0].offset if cache else 0
        start = offset if isinstance(offset, mx.array) else mx.array([offset] * rows)
        if self.deltas is not None:
            start = start + self.deltas
        positions = start[:, None] + mx.arange(length)[None]
        return mx.broadcast_to(positions[None], (3, rows, length))


def _evaluate_constants(vlm: Any) -> None:
    """Evaluate the arrays a model computes when it is built and keeps outside its parameters (Pixtral's
    rotary table, held by a plain object). They are lazy on the loading thread's stream, and MLX evaluates a
    graph only on the thread whose streams made it, not on the encoder's or the engine's."""
    found = []
    for _, module in vlm.named_modules():
        for value in vars(module).values():
            if hasattr(value, "__dict__") and not isinstance(value, nn.Module):
                found += [array for array in vars(value).values() if isinstance(array, mx.array)]
    mx.eval(found)


class Encoder:
    """The vision tower's own thread and MLX stream (MLX evaluates each thread's streams apart), so that an
    image's encode never holds up the batch; what it returns is evaluated, as arrays passed between
    threads must be."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="vision-encoder")
        self._stream: Any = None

    def submit(self, vlm: Any, tokens: list[int], start: int, pixels: dict[str, np.ndarray]) -> Future:
        """The embeddings of `tokens[start:]` with the images `pixels` hold, what else the language model
        takes of them (aligned with the whole prompt), and the seconds they took."""
        return self._pool.submit(self._encode, vlm, tokens, start, pixels)

    def _encode(self, vlm: Any, tokens: list[int], start: int, pixels: dict[str, np.ndarray]) -> tuple:
        started = time.perf_counter()
        if self._stream is None:
            self._stream = mx.new_stream(mx.default_device())
        with mx.stream(self._stream):
            arrays = {name: mx.array(value) for name, value in pixels.items()}
            ids = mx.array([tokens[start:]])
            features = vlm.get_input_embeddings(ids, mask=mx.ones(ids.shape, dtype=mx.int32), **arrays)
            given = {name for name, value in features.to_dict().items() if value is not None}
            if unsupported := sorted(given - _CHUNKED - _UNNEEDED):
                raise NotImplementedError(
                    f"this model's image features need {', '.join(unsupported)}, which mlxd does not pass yet"
                )
            extra: dict[str, Any] = {}
            if (
                features.visual_pos_masks is not None
            ):  # over the whole prompt: none before `start` is an image's
                before = mx.zeros((1, start), dtype=features.visual_pos_masks.dtype)
                extra["visual_pos_masks"] = mx.concatenate([before, features.visual_pos_masks], axis=1)
            if features.deepstack_visual_embeds is not None:
                extra["deepstack_visual_embeds"] = list(features.deepstack_visual_embeds)
            mx.eval(features.inputs_embeds, extra)
        return features.inputs_embeds, extra, time.perf_counter() - started

    def close(self) -> None:
        """Release the thread's MLX streams on it (left to its teardown, they abort the process); end it."""
        self._pool.submit(_release, self._stream).result()
        self._pool.shutdown()


def _release(stream: Any) -> None:
    if stream is not None:
        mx.synchronize(stream)
    mx.clear_streams()


class VisionPrefill:
    """One prompt with images on its way into a sequence's KV cache, from what the prefix cache held."""

    def __init__(
        self,
        model: VisionLanguage,
        tokens: list[int],
        vision: VisionInputs,
        reused: int,
        cache: list[Any] | None,
        *,
        step: int,
        kv: tuple[int, int],
    ):
        self.model = model
        self.tokens = tokens
        self.vision = vision
        self.done = reused
        self.delta = 0
        self.encode_seconds = 0.0  # of the vision tower and projector, for the images it ran on
        bits, group_size = kv
        fresh = model.make_cache()
        self.cache = cache if cache is not None else quantized(fresh, group_size, bits) if bits else fresh
        self._step = step
        self._embeds: mx.array | None = None  # from `_embedded` on
        self._features: dict[str, Any] = {}  # what else the language model takes with them
        self._embedded = len(tokens)  # where the embeddings begin
        self._encoding: Future | None = None  # the vision tower's run, until it is taken
        self._positions: mx.array | None = None
        self._started = False

    @property
    def finished(self) -> bool:
        """The positions are known, the embeddings taken, and the cache holds every prompt token but the
        last, which the batch's first step feeds."""
        return self._started and self._encoding is None and self.done >= len(self.tokens) - 1

    def advance(self, *, idle: bool = False) -> None:
        """One unit of the prefill: its start, or a chunk of tokens (text before the first image the cache
        lacks goes on while the vision tower runs; what follows waits for it, a little at a time when the
        engine is `idle`, so that new requests are still taken)."""
        if not self._started:
            self._started = True
            self._start()
            return
        if self._encoding is not None and self.done >= self._embedded:
            if not self._encoding.done():
                if idle:
                    wait([self._encoding], timeout=0.1)
                return
            self._embeds, self._features, self.encode_seconds = self._encoding.result()
            self._encoding = None
        if self.done >= len(self.tokens) - 1:
            return
        end = min(self.done + self._step, len(self.tokens) - 1)
        kwargs: dict[str, Any] = {}
        if self.done < self._embedded:  # plain tokens, up to the first image the cache lacks
            end = min(end, self._embedded)
        elif self._embeds is not None:
            kwargs["inputs_embeds"] = self._embeds[:, self.done - self._embedded : end - self._embedded]
            kwargs.update(self._features)
        if self._positions is not None:
            kwargs["position_ids"] = self._positions[..., self.done : end]
        self.model(mx.array([self.tokens[self.done : end]]), cache=self.cache, **kwargs)
        mx.eval([layer.state for layer in self.cache])
        self.done = end

    def _start(self) -> None:
        """Positions for the whole prompt, and the vision tower set to run from the first image the cache
        lacks on (only on those images)."""
        spans, pixels = self.vision.spans, self.vision.pixels
        if self.model.multimodal_positions:
            grid = mx.array(np.concatenate([p["image_grid_thw"] for p in pixels]))
            positions, delta = self.model.language.get_rope_index(mx.array([self.tokens]), grid, None, None)
            self._positions, self.delta = positions, int(np.asarray(delta).reshape(-1)[0])
        needed = [i for i, span in enumerate(spans) if span.end > self.done]
        if needed:
            self._embedded = spans[needed[0]].start
            wanted = stacked([pixels[i] for i in needed])
            self._encoding = self.model.encoder.submit(self.model.vlm, self.tokens, self._embedded, wanted)
