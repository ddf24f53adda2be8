"""Images in a vision model's prompt, through its own processor (mlx-vlm's, read from the model's files).

The chat template writes each image as the model's placeholder (what it writes for an `{"type": "image"}`
part); the processor then says what each image becomes: the tokens standing for it and the pixel arrays
its vision tower reads. `Vision.expand` splices those tokens in, image by image, so the prompt's tokens,
its length (`count_tokens`, the context check) and its prefix-cache key are exactly what the model will
process. In the key, the first tokens of each image's span are replaced by its content's digest, so that a
cached prefix is reused only with the same images. What the processor made of an image is kept (up to
`PROCESSED_BYTES`) by that digest too, since a client resends the same screenshot every turn.
"""

from __future__ import annotations

import base64
import hashlib
import io
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from daemon.chat.errors import invalid_request

if TYPE_CHECKING:
    from daemon.engine.prompt import Prompt

# Key tokens stand for image content: above any vocabulary, below 2**32 (the disk tier packs uint32).
_KEY_BASE = 1 << 31
_KEY_BITS = 31
_NOT_PIXELS = {"input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids"}
PROCESSED_BYTES = 256 * 2**20  # of processed images kept, least recently used dropped first (~13 screenshots)


@dataclass(frozen=True)
class ImageSpan:
    """Where one image's tokens lie in the prompt."""

    start: int
    end: int


@dataclass(frozen=True)
class VisionInputs:
    """What a prompt's images are to the model: their spans, each one's processor arrays (numpy, as the
    processor gives them), and the prompt's prefix-cache key."""

    spans: tuple[ImageSpan, ...]
    pixels: tuple[dict[str, Any], ...]
    key: tuple[int, ...]


class Vision:
    """A vision model's image handling on the request side: its processor and placeholder."""

    def __init__(self, path: Path, tokenizer: Any):
        from mlx_vlm.utils import load_processor

        self.processor = load_processor(path, add_detokenizer=False)
        # The token the processor expands into an image's: Gemma 3's writes `<start_of_image>` (its
        # `boi_token`) and expands it around its soft image tokens; the others expand their image token.
        self.image_token = getattr(self.processor, "boi_token", None) or self.processor.image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.placeholder = _placeholder(tokenizer, self.image_token)
        self._processed: OrderedDict[bytes, tuple[list[int], dict[str, Any], int]] = OrderedDict()
        self._processed_bytes = 0
        self._lock = threading.Lock()  # prompts render on several threads

    def expand(self, prompt: Prompt) -> Prompt:
        """The prompt with each image's own tokens in place of its placeholder, in order (its images are
        validated already). Raises `RequestError` when the text holds the model's image token itself,
        which would take an image's place, and RuntimeError when the template did not write it for each
        image (a model whose processor expands another token)."""
        if not prompt.images:
            return prompt
        tokens = prompt.tokens
        found = [i for i, token in enumerate(tokens) if token == self.image_token_id]
        if len(found) < len(prompt.images):  # the model's own files, not the request, are at fault
            raise RuntimeError(
                f"the chat template wrote the image token {self.image_token!r} for {len(found)} of "
                f"{len(prompt.images)} images; this model's processor and template do not agree"
            )
        if len(found) > len(prompt.images):
            raise invalid_request(
                f"the request's text holds the model's image token {self.image_token!r} "
                f"({len(found) - len(prompt.images)} times outside images); remove it from the text"
            )
        out, key, spans, pixels, last = [], [], [], [], 0
        for at, image in zip(found, prompt.images, strict=True):
            raw = base64.b64decode(image.data)
            digest = hashlib.sha256(raw).digest()
            ids, arrays = self._kept(digest, raw)
            out += tokens[last:at]
            key += tokens[last:at]
            spans.append(ImageSpan(len(out), len(out) + len(ids)))
            out += ids
            key += _named(ids, digest)
            pixels.append(arrays)
            last = at + 1
        out += tokens[last:]
        key += tokens[last:]
        return replace(prompt, tokens=out, vision=VisionInputs(tuple(spans), tuple(pixels), tuple(key)))

    def _kept(self, digest: bytes, raw: bytes) -> tuple[list[int], dict[str, Any]]:
        """The image processed, from what is kept when it was seen before."""
        with self._lock:
            if (kept := self._processed.get(digest)) is not None:
                self._processed.move_to_end(digest)
                return kept[0], kept[1]
        ids, arrays = self._one(raw)
        size = sum(value.nbytes for value in arrays.values())
        with self._lock:
            if digest not in self._processed:
                self._processed[digest] = (ids, arrays, size)
                self._processed_bytes += size
            while self._processed_bytes > PROCESSED_BYTES and len(self._processed) > 1:
                self._processed_bytes -= self._processed.popitem(last=False)[1][2]
        return ids, arrays

    def _one(self, raw: bytes) -> tuple[list[int], dict[str, Any]]:
        """One image's tokens, as the processor expands its placeholder token, and its arrays."""
        from PIL import Image

        with Image.open(io.BytesIO(raw)) as opened:
            image = opened.convert("RGB")
        processed = self.processor(text=[self.image_token], images=[image], return_tensors="np")
        expanded = [int(token) for token in processed["input_ids"][0]]
        bare = self.processor.tokenizer(self.image_token)["input_ids"]
        at = bare.index(self.image_token_id)  # what the tokenizer adds around it (a BOS) is not the image's
        ids = expanded[at : len(expanded) - (len(bare) - at - 1)]
        # numpy, as arrays passed to the encoder's thread must be (mlx-vlm's own processors give MLX arrays)
        return ids, {name: np.asarray(value) for name, value in processed.items() if name not in _NOT_PIXELS}


def stacked(pixels: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Several images' processor arrays as one call's: joined along the first axis, each padded at its end to
    the largest in the others (Pixtral's pixels differ in height and width; its `image_sizes` say how much of
    each is the image, as its processor pads a batch)."""
    joined = {}
    for name in pixels[0]:
        arrays = [p[name] for p in pixels]
        largest = np.max([a.shape[1:] for a in arrays], axis=0)
        padded = [
            np.pad(a, [(0, 0), *zip([0] * len(largest), largest - a.shape[1:], strict=True)]) for a in arrays
        ]
        joined[name] = np.concatenate(padded)
    return joined


def _named(ids: list[int], digest: bytes) -> list[int]:
    """The key of an image's span: its first tokens carry the digest, 31 bits each."""
    number = int.from_bytes(digest, "big")
    count = len(digest) * 8 // _KEY_BITS
    words = [_KEY_BASE | ((number >> (_KEY_BITS * i)) & (_KEY_BASE - 1)) for i in range(count)]
    return words[: len(ids)] + ids[len(words) :]


def _placeholder(tokenizer: Any, image_token: str) -> str:
    """What the chat template writes for an image part (with the markers around the image token that the
    model was trained with); the bare image token when the template takes no image parts."""
    before, after = "\x01mlxd-before\x01", "\x01mlxd-after\x01"
    content = [{"type": "text", "text": before}, {"type": "image"}, {"type": "text", "text": after}]
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False)
    except Exception:  # a template that takes no list content: the processor's own token is all there is
        return image_token
    start, end = text.find(before), text.find(after)
    written = text[start + len(before) : end] if 0 <= start < end else ""
    return written if image_token in written else image_token
