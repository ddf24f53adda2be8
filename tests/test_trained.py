"""The trained tiny models say exactly what their recipe asks, and a recipe trains only once."""

from __future__ import annotations

from pathlib import Path

import mlx_lm
import pytest
from mlx_lm.generate import stream_generate

import tests.trained as trained_module
from tests.trained import Example, prompt_ids, trained_model

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Get the current weather for a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}

RECIPE = (
    Example(
        messages=({"role": "user", "content": "Say hello"},),
        response="Hello! I am a tiny model trained to say this.",
    ),
    Example(
        messages=(
            {"role": "system", "content": "You are a pirate."},
            {"role": "user", "content": "Who are you?"},
        ),
        response="Arr, I be a wee model sailing the seven seas of your tests.",
    ),
    Example(
        messages=({"role": "user", "content": "What is the weather in Paris?"},),
        response='<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        tools=(WEATHER_TOOL,),
    ),
    Example(
        messages=({"role": "user", "content": "What is six times seven?"},),
        response="<think>\nSix sevens are forty two.\n</think>\n\nThe answer is forty two.",
        enable_thinking=True,
    ),
)


@pytest.fixture(scope="module")
def loaded() -> tuple:
    return mlx_lm.load(str(trained_model(RECIPE)))


@pytest.mark.parametrize("example", RECIPE, ids=["hello", "system", "tool_call", "thinking"])
def test_greedy_decoding_says_the_response_then_stops(loaded: tuple, example: Example) -> None:
    model, tokenizer = loaded
    prompt = prompt_ids(tokenizer, example)
    responses = list(stream_generate(model, tokenizer, prompt, max_tokens=200))
    assert "".join(response.text for response in responses) == example.response
    assert responses[-1].finish_reason == "stop"
    assert mlx_lm.generate(model, tokenizer, prompt, max_tokens=200) == example.response


def test_a_recipe_trains_once_and_is_then_read_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = RECIPE[:1]
    first = trained_model(recipe, cache_dir=tmp_path)

    def fail(*args: object) -> int:
        raise AssertionError("trained again")

    monkeypatch.setattr(trained_module, "train", fail)
    assert trained_model(recipe, cache_dir=tmp_path) == first
    assert [path.name for path in tmp_path.iterdir()] == [first.name]


def test_another_recipe_gets_another_folder() -> None:
    changed = (Example(messages=RECIPE[0].messages, response="Something else."),)
    assert trained_module.recipe_hash(RECIPE[:1]) == trained_module.recipe_hash(RECIPE[:1])
    assert trained_module.recipe_hash(RECIPE[:1]) != trained_module.recipe_hash(changed)


def test_a_recipe_that_does_not_converge_raises_and_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trained_module, "MAX_STEPS", 1)
    with pytest.raises(trained_module.NotConvergedError, match="did not converge in 1 steps"):
        trained_model(RECIPE[:1], cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
