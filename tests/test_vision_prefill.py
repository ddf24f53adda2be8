"""mlxd's image prefill against one pass of mlx-vlm's own model: a prompt with two images, prefilled in
small chunks from what a prefix cache might hold (nothing, part of the text, part of an image, past the
first image), then one decode step at the sequence's shifted positions, gives the logits the whole prompt
gives in one pass. For each family whose features mlxd passes on: Qwen2-VL's (embeddings and multimodal
positions), Qwen3-VL's (with its deepstack features), Gemma 3's (plain positions, a sliding-window
layer) and Mistral Small 3's (Pixtral images of different sizes, padded to one batch). Random tiny models:
no training needed."""

from __future__ import annotations

import json
import re

import mlx.core as mx
import pytest

from daemon.anthropic.requests import MessagesRequest, parse
from daemon.anthropic.translate import to_chat
from daemon.engine.demo_vision import (
    QWEN3_VL,
    VisionShape,
    build_gemma3_model,
    build_mistral3_model,
    build_vision_model,
)
from daemon.engine.model import load_weights, prepare_model
from daemon.engine.prompt import render
from daemon.engine.vision import stacked
from daemon.engine.vision_model import VisionPrefill
from tests.vision_model import image_block

FAMILIES = {
    "qwen2_vl": lambda path: build_vision_model(path, VisionShape()),
    "qwen3_vl": lambda path: build_vision_model(path, QWEN3_VL),
    "gemma3": build_gemma3_model,
    "mistral3": build_mistral3_model,
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    path = FAMILIES[request.param](tmp_path_factory.mktemp(request.param) / "model")
    prepared = prepare_model("vision", str(path), constrained=False)
    content = [
        {"type": "text", "text": "Compare these two pictures."},
        image_block("red", (64, 64)),
        {"type": "text", "text": "and"},
        image_block("blue", (128, 96)),
        {"type": "text", "text": "Which is warmer?"},
    ]
    body = {"model": "vision", "max_tokens": 4, "messages": [{"role": "user", "content": content}]}
    chat = to_chat(parse(MessagesRequest, json.dumps(body).encode()))
    prompt = prepared.vision.expand(render(prepared.tokenizer, chat, None, prepared.vision.placeholder))
    return load_weights(prepared, path).model, prompt


def one_pass(model, prompt) -> mx.array:
    """The last position's logits, mlx-vlm's way: every image encoded, the whole prompt in one call."""
    pixels = prompt.vision.pixels
    arrays = {name: mx.array(value) for name, value in stacked(pixels).items()}
    ids = mx.array([prompt.tokens])
    features = model.vlm.get_input_embeddings(
        ids, mask=mx.ones(ids.shape, dtype=mx.int32), **arrays
    ).to_dict()
    unused = {"rope_deltas", "attention_mask_4d"}  # a padding mask's outer product, for Gemma 3
    given = {name: value for name, value in features.items() if value is not None and name not in unused}
    return model.language(ids, **given).logits[0, -1]


def prefilled(model, prompt, reused: int, step: int = 3) -> mx.array:
    """The same logits through mlxd: a prefill in `step`-token chunks from a cache holding `reused` tokens,
    then the last prompt token decoded at the sequence's shifted positions."""
    cache = None
    if reused:
        whole = VisionPrefill(model, prompt.tokens, prompt.vision, 0, None, step=step, kv=(0, 64))
        while not whole.finished:
            whole.advance(idle=True)
        cache = whole.cache
        for layer in cache:
            layer.trim(layer.offset - reused)
    prefill = VisionPrefill(model, prompt.tokens, prompt.vision, reused, cache, step=step, kv=(0, 64))
    while not prefill.finished:
        prefill.advance(idle=True)
    with model.shifted([prefill.delta]):
        return model(mx.array([prompt.tokens[-1:]]), cache=prefill.cache)[0, -1]


def test_the_prefill_in_chunks_matches_one_pass(family) -> None:
    model, prompt = family
    first, second = prompt.vision.spans
    reference = one_pass(model, prompt)
    for reused in (0, first.start - 2, first.start + 2, second.start - 1, second.start + 3):
        difference = mx.abs(prefilled(model, prompt, reused) - reference).max().item()
        assert difference < 1e-3, (reused, difference)


def test_a_resent_image_is_processed_once(tmp_path, monkeypatch) -> None:
    """The processor runs once per image content (kept by its digest) until the bytes kept pass the limit."""
    from daemon.engine import vision as vision_module

    path = build_vision_model(tmp_path / "model", VisionShape())
    prepared = prepare_model("vision", str(path), constrained=False)
    vision, processed = prepared.vision, []
    one = vision._one
    monkeypatch.setattr(vision, "_one", lambda raw: processed.append(raw) or one(raw))

    def expanded(*colours: str):
        content = [image_block(colour) for colour in colours]
        body = {"model": "vision", "max_tokens": 4, "messages": [{"role": "user", "content": content}]}
        chat = to_chat(parse(MessagesRequest, json.dumps(body).encode()))
        return vision.expand(render(prepared.tokenizer, chat, None, vision.placeholder))

    first, again = expanded("red", "blue"), expanded("red", "blue")
    assert len(processed) == 2 and again.tokens == first.tokens and again.vision.key == first.vision.key
    monkeypatch.setattr(vision_module, "PROCESSED_BYTES", 1)  # room for one image: a new one drops the rest
    expanded("green")
    expanded("red")
    assert len(processed) == 4


def test_a_template_that_writes_no_placeholder_is_the_models_fault(tmp_path) -> None:
    """A prompt whose template wrote fewer image tokens than it has images: a server error naming the model's
    files, not a 400 blaming the request's text."""
    from dataclasses import replace

    from daemon.chat.request import Image
    from tests.images import encoded

    path = build_vision_model(tmp_path / "model", VisionShape())
    prepared = prepare_model("vision", str(path), constrained=False)
    body = {"model": "vision", "max_tokens": 4, "messages": [{"role": "user", "content": "No picture."}]}
    chat = to_chat(parse(MessagesRequest, json.dumps(body).encode()))
    prompt = render(prepared.tokenizer, chat, None, prepared.vision.placeholder)
    with pytest.raises(
        RuntimeError, match=re.escape("wrote the image token '<|image_pad|>' for 0 of 1 images")
    ):
        prepared.vision.expand(replace(prompt, images=(Image("image/png", encoded("PNG", (64, 64))),)))
