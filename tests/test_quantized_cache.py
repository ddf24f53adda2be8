"""The quantized KV cache: the batch cache against one sequence's (merging rows of different lengths,
growing, filtering, extending, extracting), its blocks on disk read back exactly, and on the real server a
model trained to say its answers saying them word for word with `kv_bits = 8`, alone and in a batch, its
KV state at the bytes per token the setting promises."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import mlx_lm
import pytest

from daemon.engine.disk_cache import BLOCK_TOKENS, SUFFIX, DiskTier
from daemon.engine.draft import Draft
from daemon.engine.prompt_cache import CacheHit, PromptCache
from daemon.engine.quantized_cache import BatchQuantizedKVCache, QuantizedCache
from daemon.store.files import kv_bytes_per_token
from tests.conftest import (
    COPY,
    COUNT,
    HELLO,
    MODELS,
    STORY,
    TRAINED_EXAMPLES,
    RunningServer,
    run_server,
    server_env,
)
from tests.models import endless_model
from tests.test_cache_and_batching import ask, run_together, trained_request
from tests.test_speculative import DRAFT_SHAPE, generate
from tests.trained import TRAINED_SHAPE, prompt_ids, trained_model

GROUP = 32
HEADS, DIM = 2, 64
# The trained shape with heads wide enough to quantize in groups of 32 (the tests' usual heads have 16).
WIDE_HEADS = replace(TRAINED_SHAPE, num_attention_heads=2, num_key_value_heads=1, head_dim=32)


def kv(rows: int, steps: int, seed: int) -> mx.array:
    return mx.random.normal((rows, HEADS, steps, DIM), key=mx.random.key(seed))


def dequantized(triple) -> mx.array:
    return mx.dequantize(*triple, group_size=GROUP, bits=8)


def sequence(steps: list[int], seed: int) -> QuantizedCache:
    """One sequence's cache fed chunks of `steps` positions."""
    cache = QuantizedCache(GROUP, 8)
    for n, chunk in enumerate(steps):
        cache.update_and_fetch(kv(1, chunk, seed + n), kv(1, chunk, seed + 100 + n))
    return cache


def same(batch: BatchQuantizedKVCache, row: int, reference: QuantizedCache) -> bool:
    mine = batch.extract(row)
    assert mine.offset == reference.offset
    keys = dequantized(mine.keys), dequantized(reference.keys)[..., : reference.offset, :]
    values = dequantized(mine.values), dequantized(reference.values)[..., : reference.offset, :]
    return all(mx.array_equal(a, b).item() for a, b in (keys, values))


def test_the_batch_cache_keeps_each_rows_state_as_one_sequence_would() -> None:
    short, long = sequence([3], 1), sequence([300], 2)  # past one growth step of 256
    batch = QuantizedCache.merge([short, long])
    assert isinstance(batch, BatchQuantizedKVCache) and batch.left_padding.tolist() == [297, 0]
    # One decode step for both rows, and the same for each sequence alone.
    keys, values = kv(2, 1, 7), kv(2, 1, 8)
    batch.update_and_fetch(keys, values)
    short.update_and_fetch(keys[:1], values[:1])
    long.update_and_fetch(keys[1:], values[1:])
    assert same(batch, 0, short) and same(batch, 1, long)

    third = QuantizedCache.merge([sequence([40], 3)])
    batch.filter([1])
    batch.extend(third)
    assert same(batch, 0, long) and same(batch, 1, sequence([40], 3))
    assert batch.nbytes < sum(x.nbytes for x in (keys, values)) * 400  # held quantized, not at full width


def test_quantized_blocks_read_back_exactly(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path / "tier", 2**30, "q")
    cache = [sequence([2 * BLOCK_TOKENS + 5], seed) for seed in (10, 20)]
    tokens = list(range(cache[0].offset))
    tier.store(tokens, cache)
    tier.close()
    names = tier.names(tokens)
    blocks = tier.read(names)
    assert blocks is not None and blocks.count == 2 and blocks.quantized == (8, GROUP)
    restored = PromptCache("q", 2**30, tier).extend(CacheHit(None, 0), blocks)
    assert restored.reused == 2 * BLOCK_TOKENS
    for mine, theirs in zip(restored.cache, cache, strict=True):
        assert isinstance(mine, QuantizedCache) and (mine.bits, mine.group_size) == (8, GROUP)
        for a, b in zip((*mine.keys, *mine.values), (*theirs.keys, *theirs.values), strict=True):
            assert mx.array_equal(a[..., : 2 * BLOCK_TOKENS, :], b[..., : 2 * BLOCK_TOKENS, :]).item()


@pytest.fixture(scope="module")
def wide_model() -> Path:
    return trained_model(TRAINED_EXAMPLES, shape=WIDE_HEADS, cache_dir=MODELS)


@pytest.fixture(scope="module")
def quantized_server(wide_model: Path, tmp_path_factory) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("kv8")
    env = server_env(home, MLXD_KV_BITS="8", MLXD_KV_GROUP_SIZE=str(GROUP))
    with run_server(home, "--model", str(wide_model), "--model-name", "trained", env=env) as server:
        yield server


def test_a_trained_model_says_its_answers_with_an_8_bit_kv_cache(quantized_server: RunningServer) -> None:
    requests = [trained_request(e) for e in (STORY, HELLO, COUNT, STORY)]
    with quantized_server.http() as http:
        solo = [ask(http, r)["content"][0]["text"] for r in requests]
        again = ask(http, requests[0])  # turn 2: the quantized prefix, from the prompt cache
    assert solo == [STORY.response, HELLO.response, COUNT.response, STORY.response]
    assert again["content"][0]["text"] == STORY.response
    together = [r["content"][0]["text"] for r in run_together(quantized_server, requests)]
    assert together == solo


def test_the_kv_state_takes_the_bytes_per_token_its_setting_promises(
    quantized_server: RunningServer, wide_model: Path
) -> None:
    long = trained_request(HELLO, max_tokens=4, messages=[{"role": "user", "content": "word " * 700}])
    with quantized_server.http() as http:
        ask(http, long)
        listed = http.get("/v1/models").json()["data"][0]
    config = json.loads((wide_model / "config.json").read_text())
    promised = kv_bytes_per_token(config, 8, GROUP)
    assert promised is not None and promised < kv_bytes_per_token(config) * 0.55
    assert listed["kv_bytes_per_token"] == promised
    home = quantized_server.log_path.parent  # the server's own folder
    blocks = list((home / "data" / "prompt-cache").rglob(f"*{SUFFIX}"))
    assert blocks
    measured = min(path.stat().st_size for path in blocks) / BLOCK_TOKENS
    assert promised <= measured < promised * 1.1  # what is on disk, less the file's small header


@pytest.mark.parametrize("proposer", ["lookup", "draft"])
def test_speculation_on_the_quantized_cache_keeps_what_the_model_says(
    wide_model: Path, tmp_path: Path, proposer: str
) -> None:
    """In the engine, the trained answers decoded together, with proposals from prompt lookup or from a
    draft of random weights."""
    model, tokenizer = mlx_lm.load(str(wide_model))
    examples = (COPY, STORY, HELLO)  # the first copies its prompt: lookup has runs to propose
    prompts = [prompt_ids(tokenizer, e) for e in examples]
    limits = [len(tokenizer.encode(e.response, add_special_tokens=False)) for e in examples]
    draft = None
    if proposer == "draft":
        other, _ = mlx_lm.load(str(endless_model(tmp_path / "draft", DRAFT_SHAPE, seed=5)))
        draft = Draft(other, PromptCache("draft", 2**26), 512)
    said, counts = generate(model, prompts, limits, speculate=True, kv=(8, GROUP), draft=draft)
    assert [tokenizer.decode(tokens) for tokens in said] == [e.response for e in examples]
    # Lookup accepts runs in the copying row while the others propose nothing: the rows keep different
    # lengths, and the refused positions roll (a test that fails when any array of a triple is left out).
    # The random draft's proposals are refused.
    assert sum(c.accepted if draft is None else c.proposed - c.accepted for c in counts) > 0


def test_a_group_size_that_does_not_divide_the_heads_is_a_clear_error(tmp_path: Path, trained: Path) -> None:
    env = server_env(tmp_path, MLXD_KV_BITS="8", MLXD_KV_GROUP_SIZE="32")  # the usual heads have 16
    args = ("--model", str(trained), "--model-name", "trained")
    with run_server(tmp_path, *args, env=env) as server, server.http() as http:
        refused = http.post("/v1/messages", json=trained_request(HELLO))
    assert refused.status_code == 500
    message = refused.json()["error"]["message"]
    assert "kv_group_size 32 does not divide the model's head size 16" in message
