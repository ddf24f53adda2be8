"""The prompt cache's disk tier: blocks written, read back exactly, evicted by age under their byte bound and
skipped when torn or corrupt (on the tier itself, with real MLX arrays), and on the real server, two
conversations alternating under a RAM budget that holds one, and a turn after `kill -9` that reads its
prefix from disk."""

from __future__ import annotations

import logging
import signal
import stat
import time
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm.models.cache import KVCache

from daemon.engine.disk_cache import BLOCK_TOKENS, SUFFIX, DiskTier
from daemon.engine.prompt_cache import CacheHit, PromptCache
from tests.claude_code_request import claude_code_request
from tests.conftest import run_server, server_env
from tests.test_cache_and_batching import SCALE, ask, metric, next_turn, prompt_tokens

LAYERS = 2


def kv_state(tokens: int, seed: int = 0) -> list[KVCache]:
    """Two layers of bfloat16 KV state for `tokens` positions, as a sequence's prompt cache holds it."""
    mx.random.seed(seed)
    cache = []
    for _ in range(LAYERS):
        layer = KVCache()
        keys = mx.random.normal((1, 2, tokens, 8)).astype(mx.bfloat16)
        layer.update_and_fetch(keys, keys * 2)
        cache.append(layer)
    return cache


def written(tier: DiskTier) -> None:
    """Wait until the writer has written what was queued."""
    deadline = time.monotonic() + 30
    while (tier._pending or not tier._queue.empty()) and time.monotonic() < deadline:
        time.sleep(0.01)


def test_blocks_read_back_exactly_under_the_folders_of_the_user(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path / "tier", 2**30, "model-a")
    tokens = list(range(3 * BLOCK_TOKENS + 10))
    cache = kv_state(len(tokens))
    tier.store(tokens, cache)
    written(tier)
    names = tier.names(tokens)
    assert len(names) == 3 and tier.covered(names) == 3  # whole blocks only
    blocks = tier.read(names[1:])
    assert blocks is not None and blocks.count == 2
    cache_dir = tmp_path / "tier"
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in cache_dir.iterdir())

    ram_hit = CacheHit(cache, BLOCK_TOKENS, tier="ram")  # one whole block from RAM, the rest from disk
    restored = PromptCache("model-a", 2**30, tier).extend(ram_hit, blocks)
    assert restored.reused == 3 * BLOCK_TOKENS
    for mine, theirs in zip(restored.cache, cache, strict=True):
        assert mine.keys.dtype == mx.bfloat16
        assert mx.array_equal(mine.keys, theirs.keys[..., : 3 * BLOCK_TOKENS, :]).item()
        assert mx.array_equal(mine.values, theirs.values[..., : 3 * BLOCK_TOKENS, :]).item()
    tier.close()


def test_a_block_names_the_tokens_before_it_and_the_model(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    tier = DiskTier(tmp_path / "a-file" / "tier", 1, "model-a")  # a folder it cannot make: RAM only
    other = DiskTier(tmp_path / "a-file" / "tier", 1, "model-b")
    tokens = list(range(2 * BLOCK_TOKENS))
    changed = [7, *tokens[1:]]
    assert not tier.writable
    assert tier.names(tokens)[1] != tier.names(changed)[1]  # the second block follows from the first
    assert tier.names(tokens)[0] != other.names(tokens)[0]
    assert tier.names(tokens[:-1]) == tier.names(tokens)[:1]


def test_the_least_recently_used_blocks_go_first(tmp_path: Path) -> None:
    probe = DiskTier(tmp_path / "probe", 2**30, "m")
    probe.store(list(range(BLOCK_TOKENS)), kv_state(BLOCK_TOKENS))
    written(probe)
    block = probe.nbytes
    probe.close()

    tier = DiskTier(tmp_path / "tier", int(2.5 * block), "m")
    a, b, c = (list(range(k * 10_000, k * 10_000 + BLOCK_TOKENS)) for k in range(3))
    for tokens in (a, b):
        tier.store(tokens, kv_state(BLOCK_TOKENS))
        written(tier)
    assert tier.read(tier.names(a)) is not None  # a is now more recent than b
    tier.store(c, kv_state(BLOCK_TOKENS))
    written(tier)
    assert [tier.covered(tier.names(t)) for t in (a, b, c)] == [1, 0, 1]
    assert len(list((tmp_path / "tier").glob(f"*{SUFFIX}"))) == 2
    tier.close()

    again = DiskTier(tmp_path / "tier", int(2.5 * block), "m")  # a restart finds them in the same order
    assert [again.covered(again.names(t)) for t in (a, b, c)] == [1, 0, 1]
    again.close()


@pytest.mark.parametrize(
    "damage",
    [lambda data: data[: len(data) // 2], lambda data: data[:-100] + bytes(100)],
    ids=["torn", "corrupt"],
)
def test_a_damaged_block_is_skipped_and_removed(
    tmp_path: Path, damage: Callable[[bytes], bytes], caplog: pytest.LogCaptureFixture
) -> None:
    tier = DiskTier(tmp_path / "tier", 2**30, "m")
    tokens = list(range(3 * BLOCK_TOKENS))
    tier.store(tokens, kv_state(len(tokens)))
    written(tier)
    names = tier.names(tokens)
    second = tmp_path / "tier" / names[1]
    second.write_bytes(damage(second.read_bytes()))
    (tmp_path / "tier" / "leftover.kvblock.tmp").write_bytes(b"half a write")
    with caplog.at_level(logging.WARNING):
        blocks = tier.read(names)
    assert blocks is not None and blocks.count == 1  # the blocks after it are not used either
    assert "skipping prompt cache block" in caplog.text and names[1] in caplog.text
    assert not second.exists() and tier.covered(names) == 1 and tier.stats.blocks_skipped == 1
    tier.close()
    DiskTier(tmp_path / "tier", 2**30, "m").close()
    assert not (tmp_path / "tier" / "leftover.kvblock.tmp").exists()  # a torn write is cleared at start


def conversation(topic: str) -> dict:
    request = {**claude_code_request("tiny", max_tokens=4, scale=SCALE), "stream": False, "temperature": 0}
    first_user = request["messages"][0]
    return {**request, "messages": [{**first_user, "content": f"{topic}: {first_user['content']}"}]}


def whole_blocks(tokens: int) -> int:
    """The tokens a prompt of `tokens` can read from disk: its whole blocks, one token left to compute."""
    return (tokens - 1) // BLOCK_TOKENS * BLOCK_TOKENS


def test_conversations_alternating_past_the_ram_budget_read_their_prefixes_from_disk(
    tiny_model: Path, tmp_path: Path
) -> None:
    # About 0.5 KB per token and 3k tokens each: RAM holds one conversation, not two.
    env = server_env(tmp_path, MLXD_PROMPT_CACHE_BYTES=str(2_000_000))
    args = ("--model", str(tiny_model), "--model-name", "tiny")
    with run_server(tmp_path, *args, env=env) as server, server.http() as http:
        requests = {"a": conversation("Project A"), "b": conversation("Project B")}
        answers = {name: ask(http, request) for name, request in requests.items()}
        for turn in range(2):
            for name in ("a", "b"):
                request = next_turn(requests[name], answers[name], f"Next step {turn}.")
                answer = ask(http, request)
                before = prompt_tokens(answers[name]["usage"])
                assert answer["usage"]["cache_read_input_tokens"] >= whole_blocks(before), (name, turn)
                requests[name], answers[name] = request, answer
        metrics = http.get("/metrics").text
    assert metric(metrics, 'mlxd_prompt_cache_hits_total{model="tiny",tier="disk"}') >= 3
    assert metric(metrics, 'mlxd_prompt_cache_disk_io_bytes_total{direction="read",model="tiny"}') > 0


def test_after_kill_9_the_next_turn_reads_its_prefix_from_disk(tiny_model: Path, tmp_path: Path) -> None:
    env = server_env(tmp_path)
    args = ("--model", str(tiny_model), "--model-name", "tiny")
    request = conversation("Kill")
    blocks = tmp_path / "data" / "prompt-cache"
    with run_server(tmp_path, *args, env=env) as server:
        with server.http() as http:
            first = ask(http, request)
        expected = whole_blocks(prompt_tokens(first["usage"]) + 1) // BLOCK_TOKENS
        deadline = time.monotonic() + 30  # written soon after computed, in the background
        while len(list(blocks.rglob(f"*{SUFFIX}"))) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        server.process.send_signal(signal.SIGKILL)
        assert server.process.wait(timeout=60) == -signal.SIGKILL
    with run_server(tmp_path, *args, env=env) as server, server.http() as http:
        again = ask(http, request)
        second = ask(http, next_turn(request, again, "And then?"))
    assert again["content"] == first["content"]  # greedy: the state read back is the state computed
    assert again["usage"]["cache_read_input_tokens"] >= whole_blocks(prompt_tokens(first["usage"]))
    assert second["usage"]["cache_read_input_tokens"] >= prompt_tokens(first["usage"])
