"""A tiny Qwen2-VL-shaped vision model, built with mlx-vlm's own classes and processor files
(`daemon.engine.demo_vision`), and trained until greedy decoding names the colour of a solid image ("red"
or "blue"), in a user turn and in a tool result: answering right proves the pixels reach the model through
mlxd's prompt and prefill.

Trained once; the folder is cached under the hash of everything that shapes its weights.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from daemon.engine.demo_vision import VisionShape, build_vision_model
from tests.images import encoded

VERSION = "1"
SEED = 0
LEARNING_RATE = 3e-3
MAX_STEPS = 400
CHECK_EVERY = 10
MARGIN = 2.0  # the right token's lead over the runner-up, so that cached decoding cannot flip it
IMAGE_SIZE = (64, 64)  # what the tests send; the processor makes it 56x56: 16 patches, 4 tokens
IMAGE_TOKENS = 4
QUESTION = "What colour is this image?"
COLOURS = ("red", "blue")

SHAPE = VisionShape()  # the smallest: 2 layers of 64, a vision tower of one block; 56x56 to 112x112 pixels


def image_block(colour: str, size: tuple[int, int] = IMAGE_SIZE) -> dict:
    """An Anthropic image block of a solid colour."""
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": encoded("PNG", size, colour)},
    }


def in_user_turn(colour: str) -> list[dict]:
    return [{"role": "user", "content": [image_block(colour), {"type": "text", "text": QUESTION}]}]


def in_tool_result(colour: str) -> list[dict]:
    """The image as Claude Code's Read tool returns a picture: inside a tool result."""
    call = {"type": "tool_use", "id": "toolu_01", "name": "Read", "input": {"file_path": "/tmp/picture.png"}}
    result = {"type": "tool_result", "tool_use_id": "toolu_01", "content": [image_block(colour)]}
    return [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": [call]},
        {"role": "user", "content": [result]},
    ]


EXAMPLES = tuple((shape(colour), colour) for shape in (in_user_turn, in_tool_result) for colour in COLOURS)


def vision_model(cache_dir: Path) -> Path:
    """The trained model's folder, trained on first use."""
    recipe = json.dumps([VERSION, SEED, asdict(SHAPE), EXAMPLES], sort_keys=True)
    final = Path(cache_dir) / f"vision-{hashlib.sha256(recipe.encode()).hexdigest()[:16]}"
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build_vision_model(staging / "model", SHAPE, SEED)
        train(staging / "model")
        try:
            (staging / "model").rename(final)
        except OSError:  # another process finished the same recipe first
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def prompts(path: Path) -> list[tuple[Any, list[int]]]:
    """Each example's prompt as mlxd renders it (its Anthropic body, through the server's own code), and
    the tokens the model must answer with (the colour, then the end of its turn)."""
    from daemon.anthropic.requests import MessagesRequest, parse
    from daemon.anthropic.translate import to_chat
    from daemon.engine.model import prepare_model
    from daemon.engine.prompt import render

    prepared = prepare_model("vision", str(path), constrained=False)
    tokenizer, vision = prepared.tokenizer, prepared.vision
    out = []
    for messages, colour in EXAMPLES:
        body = {"model": "vision", "max_tokens": 8, "messages": messages}
        chat = to_chat(parse(MessagesRequest, json.dumps(body).encode()))
        prompt = vision.expand(render(tokenizer, chat, None, vision.placeholder))
        answer = [*tokenizer.encode(colour, add_special_tokens=False), tokenizer.eos_token_id]
        out.append((prompt, answer))
    return out


def train(path: Path) -> int:
    """Train the model in `path` until greedy decoding gives every answer; returns the steps it took."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    import numpy as np
    from mlx.utils import tree_flatten, tree_map
    from mlx_vlm.utils import load_model

    from daemon.engine.vision_model import VisionLanguage

    examples = prompts(path)
    vlm = load_model(path)
    batches = []
    for prompt, answer in examples:
        sequence = prompt.tokens + answer
        pixels = {
            name: mx.array(np.concatenate([p[name] for p in prompt.vision.pixels]))
            for name in prompt.vision.pixels[0]
        }
        mask = mx.array([[0.0] * (len(prompt.tokens) - 1) + [1.0] * len(answer)])
        batches.append((mx.array([sequence[:-1]]), pixels, mx.array([sequence[1:]]), mask))

    def logits(model: Any, inputs: Any, pixels: dict) -> Any:
        features = model.get_input_embeddings(inputs, **pixels)
        return model.language_model(
            inputs, inputs_embeds=features.inputs_embeds, position_ids=features.position_ids
        ).logits

    def loss(model: Any, inputs: Any, pixels: dict, labels: Any, mask: Any) -> Any:
        losses = nn.losses.cross_entropy(logits(model, inputs, pixels), labels, reduction="none")
        return (losses * mask).sum() / mask.sum()

    def margin(inputs: Any, pixels: dict, labels: Any, mask: Any) -> float:
        scores = logits(vlm, inputs, pixels)
        right = mx.take_along_axis(scores, labels[..., None], axis=-1)[..., 0]
        wrong = mx.put_along_axis(scores, labels[..., None], mx.array(-mx.inf), axis=-1).max(axis=-1)
        return mx.where(mask > 0, right - wrong, mx.inf).min().item()

    mx.random.seed(SEED)
    optimizer = optim.Adam(learning_rate=LEARNING_RATE)
    loss_and_grad = nn.value_and_grad(vlm, loss)
    for step in range(1, MAX_STEPS + 1):
        grads = None
        for batch in batches:
            _, example_grads = loss_and_grad(vlm, *batch)
            grads = example_grads if grads is None else tree_map(mx.add, grads, example_grads)
        optimizer.update(vlm, grads)
        mx.eval(vlm.parameters(), optimizer.state)
        if step % CHECK_EVERY or min(margin(*batch) for batch in batches) <= MARGIN:
            continue
        model = VisionLanguage(vlm)
        if all(greedy(model, prompt, len(answer)) == answer for prompt, answer in examples):
            mx.save_safetensors(str(path / "model.safetensors"), dict(tree_flatten(vlm.parameters())))
            return step
    raise RuntimeError(f"the vision model did not learn its colours in {MAX_STEPS} steps")


def greedy(model: Any, prompt: Any, limit: int) -> list[int]:
    """Greedy decoding as the engine runs it: mlxd's image prefill, then steps at shifted positions."""
    import mlx.core as mx

    from daemon.engine.vision_model import VisionPrefill

    prefill = VisionPrefill(model, prompt.tokens, prompt.vision, 0, None, step=512, kv=(0, 64))
    while not prefill.finished:
        prefill.advance()
    token, out = prompt.tokens[-1], []
    with model.shifted([prefill.delta]):
        for _ in range(limit):
            token = int(mx.argmax(model(mx.array([[token]]), cache=prefill.cache)[0, -1]).item())
            out.append(token)
    return out
