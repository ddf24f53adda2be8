"""The continuous batch with vision prompts in it: sequences whose positions are shifted by different
amounts (images of different sizes), decoding beside a text prompt's sequence, each decode exactly as it
does alone (greedy, on the trained tiny vision model)."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx

from daemon.anthropic.requests import MessagesRequest, parse
from daemon.anthropic.translate import to_chat
from daemon.engine.decode_batch import Generator
from daemon.engine.model import load_weights, prepare_model
from daemon.engine.prompt import render
from daemon.engine.vision_model import VisionPrefill
from tests.vision_model import QUESTION, greedy, image_block

LIMIT = 6


def prompt(prepared, content: list[dict] | str):
    body = {"model": "vision", "max_tokens": LIMIT, "messages": [{"role": "user", "content": content}]}
    chat = to_chat(parse(MessagesRequest, json.dumps(body).encode()))
    vision = prepared.vision
    return vision.expand(render(prepared.tokenizer, chat, None, vision.placeholder))


def test_shifted_rows_decode_in_the_batch_as_they_do_alone(vision: Path) -> None:
    prepared = prepare_model("vision", str(vision), constrained=False)
    model = load_weights(prepared, vision).model
    shown = [
        prompt(prepared, [image_block(colour, size), {"type": "text", "text": QUESTION}])
        for colour, size in (("red", (64, 64)), ("blue", (112, 56)), ("red", (112, 112)))
    ]
    text = prompt(prepared, "Describe the picture you cannot see.")
    alone = [greedy(model, p, LIMIT) for p in shown]
    generator = Generator(model, stop_tokens=[], completion_batch_size=8, prefill_batch_size=8)
    outputs: dict[int, list[int]] = {}
    (text_uid,) = generator.insert_segments([[text.tokens]], max_tokens=[LIMIT])
    outputs[text_uid] = []
    deltas = []
    for shown_prompt in shown:
        prefill = VisionPrefill(
            model, shown_prompt.tokens, shown_prompt.vision, 0, None, step=512, kv=(0, 64)
        )
        while not prefill.finished:
            prefill.advance()
        deltas.append(prefill.delta)
        outputs[generator.join(prefill.cache, shown_prompt.tokens, prefill.delta, LIMIT, None, [])] = []
    while any(len(tokens) < LIMIT for tokens in outputs.values()):
        for response in generator.next()[1]:
            outputs[response.uid].append(response.token)
    generator.close()
    assert len(set(deltas)) == 3  # the rows are shifted by three different amounts
    assert [outputs[uid] for uid in outputs if uid != text_uid] == alone
    # The text row, alone, decodes the same tokens as beside the shifted rows.
    solo = Generator(model, stop_tokens=[])
    solo.insert_segments([[text.tokens]], max_tokens=[LIMIT])
    tokens: list[int] = []
    while len(tokens) < LIMIT:
        tokens += [r.token for r in solo.next()[1]]
    solo.close()
    assert tokens == outputs[text_uid]
    mx.clear_cache()
