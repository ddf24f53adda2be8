"""The models and requests. A random-weight model copies nothing, so the benchmark trains its own (with the
tests' trainer, `tests/trained.py`): greedy decoding of each says two answers exactly, one that copies a
function from a file in its prompt (an edit turn) and one written free (a note about the sea). Two shapes,
each drafted by the next shape down, trained on the same answers: `mini`, the suite's CPU benchmark shape
(compute-bound here), and `tiny`, small enough that a step is mostly its fixed overhead, the nearest this
CPU comes to a Mac GPU's regime, where checking several tokens costs about what one does. Each arm is an
mlxd of its own on the same model (speculation off, prompt lookup, the draft); they take turns, each repeat
starting with the arm the last one ended with, so that drift cancels."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.client import Endpoint, StreamResult
from benchmarks.workloads import Progress, concurrently
from tests.trained import TRAINED_SHAPE, Example, trained_model

ARMS = ("off", "prompt-lookup", "draft")
SHAPES = {
    "mini": replace(
        TRAINED_SHAPE, hidden_size=256, intermediate_size=768, num_attention_heads=4, head_dim=64
    ),
    "tiny": TRAINED_SHAPE,
    "nano": replace(
        TRAINED_SHAPE, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1
    ),
}
DRAFTS = {"mini": "tiny", "tiny": "nano"}  # each model's draft: the next shape down, on the same answers

FILE = '''import math


def area(shape, size):
    """The area of a square, circle or triangle of the given size."""
    if shape == "square":
        return size * size
    if shape == "circle":
        return math.pi * size * size / 4
    if shape == "triangle":
        return math.sqrt(3) / 4 * size * size
    raise ValueError(f"unknown shape: {shape}")


def perimeter(shape, size):
    """The perimeter of a square, circle or triangle of the given size."""
    if shape == "square":
        return 4 * size
    if shape == "circle":
        return math.pi * size
    return 3 * size
'''
FUNCTION = FILE[FILE.index("def area") : FILE.index("\n\n\ndef perimeter")]
EDIT = Example(
    messages=(
        {
            "role": "user",
            "content": f"Here is shapes.py:\n\n{FILE}\nShow me the function area exactly as it is there.",
        },
    ),
    response=FUNCTION,
)
FREE = Example(
    messages=({"role": "user", "content": "Write a few sentences about the sea."},),
    response=(
        "The sea is never still. In the morning it lies grey and flat under the mist, by noon the wind has "
        "raised white caps across the bay, and at night the tide comes in with a low and steady roar."
    ),
)
WORKLOADS = {"edit": EDIT, "free": FREE}


@dataclass(frozen=True)
class Plan:
    name: str
    shapes: tuple[str, ...]
    streams: tuple[int, ...]  # concurrent requests at each level
    repeats: int  # batches of each arm at each level


FULL = Plan("full", shapes=("mini", "tiny"), streams=(1, 4), repeats=5)
SMOKE = Plan("smoke", shapes=("tiny",), streams=(1, 2), repeats=1)
PLANS = {plan.name: plan for plan in (FULL, SMOKE)}


@dataclass
class Sent:
    """One request as the client saw it."""

    shape: str
    workload: str
    arm: str
    streams: int
    repeat: int
    result: StreamResult


def settings(arm: str, draft: Path) -> dict[str, str]:
    """The arm's server's MLXD_ settings."""
    return {"MLXD_SPECULATIVE": arm} | ({"MLXD_DRAFT_MODEL": str(draft)} if arm == "draft" else {})


def model_for(shape: str, models_dir: Path) -> Path:
    """The shape's model trained to say both answers (minutes the first time, then kept)."""
    examples = tuple(WORKLOADS.values())
    return trained_model(examples, SHAPES[shape], cache_dir=models_dir)


def body(model: str, workload: str) -> dict[str, Any]:
    """Greedy, so that both arms decode the same tokens; the answer ends itself well before the limit."""
    return {
        "model": model,
        "max_tokens": 1024,
        "stream": True,
        "temperature": 0,
        "messages": list(WORKLOADS[workload].messages),
    }


def run(shape: str, endpoints: dict[str, Endpoint], plan: Plan, progress: Progress) -> list[Sent]:
    order = list(ARMS)
    sent = []
    for workload in WORKLOADS:
        for arm in ARMS:  # each server's prompt cache holds the prompt before anything is timed
            concurrently([(endpoints[arm], partial(endpoints[arm].messages, body=body("bench", workload)))])
        for streams in plan.streams:
            for repeat in range(plan.repeats):
                for arm in order:
                    endpoint = endpoints[arm]
                    request = partial(endpoint.messages, body=body(endpoint.model, workload))
                    results = concurrently([(endpoint, request)] * streams)
                    sent += [Sent(shape, workload, arm, streams, repeat, result) for result in results]
                    progress.update()
                order.reverse()
    return sent


def steps(plan: Plan) -> int:
    return len(plan.shapes) * len(WORKLOADS) * len(plan.streams) * plan.repeats * len(ARMS)
