"""Usage as Anthropic reports it: the prompt is all `input_tokens` unless the request asks for caching; with
`cache_control` it splits into tokens read from and written to the cache. `message_start` and the final
`message_delta` agree, and the three input counts always add up to what `count_tokens` says."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from tests.conftest import RunningServer, run_server

MODEL = "tiny"
SYSTEM = "You are a careful assistant. " * 60  # long enough that a second turn reuses a real prefix
FIELDS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("usage")
    with run_server(home, "--model", str(tiny_model), "--model-name", MODEL) as running:
        yield running


def turns(cached: bool) -> list[list[dict]]:
    """Two turns of one conversation, the second extending the first."""
    text = {"type": "text", "text": "Write a line about the sea."}
    if cached:
        text["cache_control"] = {"type": "ephemeral"}
    first = [{"role": "user", "content": [text]}]
    second = [*first, {"role": "assistant", "content": "The sea."}, {"role": "user", "content": "Again."}]
    return [first, second]


def split(usage) -> dict[str, int]:
    return {field: getattr(usage, field) for field in FIELDS}


def streamed(client: anthropic.Anthropic, messages: list[dict]) -> tuple[dict, dict]:
    """(the usage of `message_start`, the usage of the final message) of one streamed answer."""
    system = [{"type": "text", "text": SYSTEM}]
    with client.messages.stream(model=MODEL, max_tokens=3, system=system, messages=messages) as stream:
        started = next(event for event in stream if event.type == "message_start").message.usage
        final = stream.get_final_message().usage
    return split(started), split(final)


@pytest.mark.parametrize("cached", [False, True], ids=["no-cache-control", "cache-control"])
def test_the_prompt_split_follows_cache_control(server: RunningServer, cached: bool) -> None:
    client = server.client()
    results = [streamed(client, messages) for messages in turns(cached)]
    for (started, final), messages in zip(results, turns(cached), strict=True):
        counted = client.messages.count_tokens(
            model=MODEL, system=[{"type": "text", "text": SYSTEM}], messages=messages
        ).input_tokens
        assert started == final
        assert sum(final.values()) == counted
    (_, first), (_, second) = results
    if cached:
        # The second turn read the first turn's prompt back; mlxd writes the rest of each prompt to the cache.
        assert second["cache_read_input_tokens"] >= len(SYSTEM.split()) // 2
        assert second["input_tokens"] == 0 and second["cache_creation_input_tokens"] > 0
    else:
        assert first["cache_read_input_tokens"] == second["cache_read_input_tokens"] == 0
        assert first["cache_creation_input_tokens"] == second["cache_creation_input_tokens"] == 0
