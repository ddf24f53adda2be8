"""Tiny models trained until greedy decoding says exactly what each example asks, for end-to-end tests.

A recipe trains once; its model folder is cached on disk under the hash of everything that shapes its weights.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from daemon.engine.demo_model import ModelShape, build_model

# Bump whenever the training below changes what a recipe produces, so that stale caches are not reused.
TRAINING_VERSION = "2"
# Measured on a 2-core CPU: hidden 64 converges in as few steps as hidden 128 at half the cost per step.
TRAINED_SHAPE = ModelShape(
    hidden_size=64,
    num_hidden_layers=2,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)
SEED = 0
LEARNING_RATE = 2e-3
MAX_STEPS = 300
CHECK_EVERY = 5
# The right token must lead the runner-up by this much, so that the small numeric differences of decoding
# with a KV cache cannot flip a greedy choice.
MARGIN = 2.0
EOS = "<|im_end|>"

Batch = tuple[Any, Any, Any]


@dataclass(frozen=True)
class Example:
    """One prompt (chat messages, tools, thinking switch) and the exact response the model must give."""

    messages: tuple
    response: str
    tools: tuple | None = None
    enable_thinking: bool = False
    opening: str = ""  # text the server puts after the rendered prompt (a forced tool call's opening)


class NotConvergedError(RuntimeError):
    pass


def trained_model(
    examples: Sequence[Example],
    shape: ModelShape = TRAINED_SHAPE,
    cache_dir: Path = Path(__file__).parent / ".models",
) -> Path:
    """Return a model folder that greedily reproduces every example's response, training it if not cached."""
    cache_dir = Path(cache_dir)
    final = cache_dir / recipe_hash(examples, shape)
    if final.is_dir():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=cache_dir))
    try:
        model_dir = build_model(staging / "model", shape, seed=SEED)
        train(model_dir, examples)
        (model_dir / "recipe.json").write_text(json.dumps(_recipe(examples, shape), indent=2, sort_keys=True))
        try:
            model_dir.rename(final)
        except OSError:
            # Another process finished the same recipe first; its folder is just as good.
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _recipe(examples: Sequence[Example], shape: ModelShape) -> dict:
    return {
        "examples": [asdict(example) for example in examples],
        "shape": asdict(shape),
        "seed": SEED,
        "version": TRAINING_VERSION,
    }


def recipe_hash(examples: Sequence[Example], shape: ModelShape = TRAINED_SHAPE) -> str:
    recipe = json.dumps(_recipe(examples, shape), sort_keys=True)
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def train(model_dir: Path, examples: Sequence[Example]) -> int:
    """Train the model in `model_dir` in place until it says every response; returns the steps it took."""
    import mlx.core as mx
    import mlx.optimizers as optim
    import mlx_lm
    from mlx.utils import tree_flatten

    model, tokenizer = mlx_lm.load(str(model_dir))
    prompts = [prompt_ids(tokenizer, example) for example in examples]
    targets = [target_ids(tokenizer, example) for example in examples]
    batches = [_batch(prompt, target) for prompt, target in zip(prompts, targets, strict=True)]

    mx.random.seed(SEED)
    optimizer = optim.Adam(learning_rate=LEARNING_RATE)
    loss = float("nan")
    for step in range(1, MAX_STEPS + 1):
        loss = _step(model, optimizer, batches)
        if step % CHECK_EVERY == 0 and _says_all(model, batches, prompts, targets):
            weights = dict(tree_flatten(model.parameters()))
            mx.save_safetensors(str(model_dir / "model.safetensors"), weights)
            return step
    raise NotConvergedError(
        f"training did not converge in {MAX_STEPS} steps (last loss {loss:.4f}); "
        "try fewer or shorter examples, a larger shape, or another learning rate"
    )


def prompt_ids(tokenizer: Any, example: Example) -> list[int]:
    """The prompt tokens an example is trained on: its messages rendered by the model's chat template."""
    rendered = tokenizer.apply_chat_template(
        list(example.messages),
        tools=list(example.tools) if example.tools is not None else None,
        add_generation_prompt=True,
        enable_thinking=example.enable_thinking,
    )
    return list(rendered) + tokenizer.encode(example.opening, add_special_tokens=False)


def target_ids(tokenizer: Any, example: Example) -> list[int]:
    """The tokens the model must generate: the response, then EOS."""
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    return [*tokenizer.encode(example.response, add_special_tokens=False), eos_id]


def _batch(prompt: list[int], target: list[int]) -> Batch:
    """Next-token inputs and labels for one example, with a mask that is 1 only where a label is response."""
    import mlx.core as mx

    sequence = prompt + target
    mask = [0.0] * (len(prompt) - 1) + [1.0] * len(target)
    return mx.array([sequence[:-1]]), mx.array([sequence[1:]]), mx.array([mask])


def _step(model: Any, optimizer: Any, batches: list[Batch]) -> float:
    """One optimizer step on the summed gradients of all examples; returns the mean loss."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_map

    # One example at a time: padding every prompt to the longest (a prompt with tools is ~10x a plain one)
    # costs more on a CPU than the overhead of the separate calls.
    loss_and_grad = nn.value_and_grad(model, _loss)
    total, grads = mx.array(0.0), None
    for batch in batches:
        loss, example_grads = loss_and_grad(model, *batch)
        total = total + loss
        grads = example_grads if grads is None else tree_map(mx.add, grads, example_grads)
    optimizer.update(model, grads)
    mx.eval(total, model.parameters(), optimizer.state)
    return total.item() / len(batches)


def _loss(model: Any, inputs: Any, labels: Any, mask: Any) -> Any:
    import mlx.nn as nn

    losses = nn.losses.cross_entropy(model(inputs), labels, reduction="none")
    return (losses * mask).sum() / mask.sum()


def _says_all(model: Any, batches: list[Batch], prompts: list[list[int]], targets: list[list[int]]) -> bool:
    """Whether every response wins by the margin under teacher forcing and comes out of greedy decoding."""
    if min(_margin(model, *batch) for batch in batches) <= MARGIN:
        return False
    pairs = zip(prompts, targets, strict=True)
    return all(_greedy(model, prompt, len(target)) == target for prompt, target in pairs)


def _margin(model: Any, inputs: Any, labels: Any, mask: Any) -> float:
    """The smallest lead, over the response positions, of the right token's logit over the best wrong one."""
    import mlx.core as mx

    logits = model(inputs)
    right = mx.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    wrong = mx.put_along_axis(logits, labels[..., None], mx.array(-mx.inf), axis=-1).max(axis=-1)
    return mx.where(mask > 0, right - wrong, mx.inf).min().item()


def _greedy(model: Any, prompt: list[int], limit: int) -> list[int]:
    """The first `limit` tokens of greedy decoding with a KV cache, as the server decodes."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    return [int(token) for token, _ in generate_step(mx.array(prompt), model, max_tokens=limit)]
