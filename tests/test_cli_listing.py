"""What the CLI prints of the daemon's replies and of the models on this machine, checked on literal input."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

from daemon.cli.listing import facts_lines, inventory_lines, loaded_line, ps_lines, unloaded_line
from daemon.store.files import kv_bytes_per_token
from daemon.store.inventory import CachedModel, ConfiguredModel, ModelFacts

MiB = 2**20


def status(name: str, state: str, **fields: object) -> dict[str, object]:
    """One model of `GET /v1/admin/ps`'s reply: unloaded and never asked for unless `fields` say otherwise."""
    defaults = {
        "weight_bytes": 0,
        "cache_bytes": 0,
        "disk_cache_bytes": 0,
        "cache_counts": {"ram_hits": 0, "disk_hits": 0, "disk_read_bytes": 0, "disk_written_bytes": 0},
        "idle_seconds": None,
        "active_sequences": 0,
        "queued": 0,
        "requests_served": 0,
        "pinned": False,
        "ttl": 0.0,
        "last_error": None,
    }
    return {"name": name, "state": state, **defaults, **fields}


PS_REPLY = {
    "models": [
        status("alpha", "unloaded", ttl=600.0),
        status(
            "beta",
            "loaded",
            weight_bytes=799129,
            cache_bytes=2048,
            disk_cache_bytes=3 * MiB,
            cache_counts={
                "ram_hits": 9,
                "disk_hits": 2,
                "disk_read_bytes": MiB,
                "disk_written_bytes": 3 * MiB,
            },
            idle_seconds=75.4,
            requests_served=12,
            last_error="boom",
        ),
        status(
            "endless",
            "loaded",
            weight_bytes=5 * MiB,
            active_sequences=2,
            queued=1,
            requests_served=3,
            pinned=True,
        ),
    ],
    "memory_budget_bytes": 2**30,
    "weight_bytes": 799129 + 5 * MiB,
    "kv_bytes": 2 * MiB,
    "active_memory_bytes": 3 * MiB,
}


def test_ps_shows_requests_in_flight_and_served_per_model() -> None:
    assert ps_lines(PS_REPLY) == [
        "MODEL    STATE     WEIGHTS    KV CACHE  ON DISK  IDLE  IN FLIGHT  SERVED  UNLOADS",
        "alpha    unloaded  -          -         -        -     0          0       after 10m idle",
        "beta     loaded    780.4 KiB  2.0 KiB   3.0 MiB  1m    0          12      never",
        "endless  loaded    5.0 MiB    0 B       0 B      -     3          3       never (pinned)",
        "weights loaded: 5.8 MiB and KV 2.0 MiB of 1.0 GiB budget; MLX holds 3.0 MiB in all",
        "beta: prompt cache hits 9 in RAM, 2 on disk; 1.0 MiB read from disk, 3.0 MiB written",
        "beta: last load failed: boom",
    ]
    unlimited = ps_lines({**PS_REPLY, "memory_budget_bytes": 0})
    assert (
        unlimited[4]
        == "weights loaded: 5.8 MiB and KV 2.0 MiB of an unlimited budget; MLX holds 3.0 MiB in all"
    )


def test_load_and_unload_replies() -> None:
    beta = PS_REPLY["models"][1]
    assert loaded_line(beta) == "beta is loaded (780.4 KiB of weights)"
    assert unloaded_line({"model": beta, "freed_bytes": 799129}) == "unloaded beta: freed 780.4 KiB"
    assert unloaded_line({"model": PS_REPLY["models"][0], "freed_bytes": 0}) == "alpha was not loaded"


def test_model_facts() -> None:
    facts = ModelFacts(
        source="org/m",
        path=Path("/hf/m"),
        architecture="qwen3, Qwen3ForCausalLM",
        quantization="4-bit, group size 64, affine",
        context_length=32768,
        weight_bytes=5 * MiB,
        kv_bytes_per_token=(98304, 52224, 27648),
        vision_tower=False,
        tool_parser="json_tools",
        thinking=("<think>", "</think>"),
        chat_template=True,
    )
    assert facts_lines(facts) == [
        "model:         org/m",
        "path:          /hf/m",
        "architecture:  qwen3, Qwen3ForCausalLM",
        "quantization:  4-bit, group size 64, affine",
        "context:       32768 tokens",
        "size:          5.0 MiB",
        "KV cache:      96.0 KiB per token (kv_bits 8: 51.0 KiB, 4: 27.0 KiB); 100k tokens take 9.2 GiB",
        "images:        no",
        "tool calls:    yes (json_tools format)",
        "thinking:      yes (<think> … </think>)",
        "chat template: yes",
    ]
    plain = ModelFacts(
        "org/m", Path("/hf/m"), "llama", "none (float32)", 4096, 1000, None, True, None, None, False
    )
    assert facts_lines(plain)[-5:] == [
        "KV cache:      unknown (the config does not state the attention's shape)",
        "images:        no: mlx-vlm does not run its vision tower",
        "tool calls:    no",
        "thinking:      no",
        "chat template: no (prompts are plain transcripts)",
    ]
    seeing = dataclasses.replace(plain, vision="qwen2_vl")
    assert "images:        yes (vision tower run by mlx-vlm's qwen2_vl)" in facts_lines(seeing)


def test_inventory_lists_the_configured_models_then_the_cache() -> None:
    configured = [
        ConfiguredModel("alpha", "main", 1536, ("house", "h2"), "/models/alpha"),
        ConfiguredModel("beta", "small", None, (), "org/beta"),
    ]
    cached = [
        CachedModel("org/beta", 3 * MiB, datetime(2025, 3, 4, tzinfo=UTC), Path("/hf/hub/b")),
        CachedModel("org/zeta", 2**30, datetime(2024, 1, 2, tzinfo=UTC), Path("/hf/hub/z")),
    ]
    assert inventory_lines(configured, Path("/hf/hub"), cached) == [
        "Configured:",
        "NAME   ROLE   SIZE            ALIASES    SOURCE",
        "alpha  main   1.5 KiB         house, h2  /models/alpha",
        "beta   small  not downloaded             org/beta",
        "",
        "In the Hugging Face cache (/hf/hub):",
        "REPO      SIZE     MODIFIED    CONFIGURED AS",
        "org/beta  3.0 MiB  2025-03-04  beta",
        "org/zeta  1.0 GiB  2024-01-02",
    ]
    assert inventory_lines([], Path("/hf/hub"), []) == [
        'Configured: none (the daemon serves its demo model; see the README, "Models")',
        "",
        "In the Hugging Face cache (/hf/hub):",
        "nothing yet; download with `mlxd models pull REPO`",
    ]


def test_kv_bytes_per_token_follow_the_attentions_shape() -> None:
    # Qwen3-Coder-30B-A3B: 48 layers, 4 KV heads of 128, bfloat16.
    coder = {"num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128}
    assert kv_bytes_per_token(coder) == 2 * 48 * 4 * 128 * 2 == 98304
    # No head_dim: hidden size over heads; no KV heads: as many as attention heads; float32 is 4 bytes.
    plain = {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64, "torch_dtype": "float32"}
    assert kv_bytes_per_token(plain) == 2 * 2 * 4 * 16 * 4
    assert kv_bytes_per_token({"text_config": coder, "vision_config": {}}) == 98304
    # 8 bits: a byte per value and a bfloat16 scale and bias per 64 values; 4 bits: half a byte per value.
    assert kv_bytes_per_token(coder, 8) == 2 * 48 * 4 * (128 + 2 * 2 * 2) == 52224
    assert kv_bytes_per_token(coder, 4, 32) == 2 * 48 * 4 * (64 + 4 * 2 * 2)
    assert kv_bytes_per_token({"model_type": "mamba"}) is None
