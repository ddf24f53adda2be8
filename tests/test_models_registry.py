"""Several models in one daemon, end to end: names, aliases and Claude tiers resolve; `/v1/models` lists them;
models load on first use, unload when idle or to make room within the memory budget, and a model that
cannot load or cannot fit is a clear error that leaves the server serving."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from daemon.config.units import format_bytes
from tests.conftest import RunningServer, run_server, server_env
from tests.fake_hub import serve_hub
from tests.model_zoo import ask, config_toml, ps, served_by, size, wait_for, zoo

KV_ROOM = 2**20  # room in a budget for the KV state the models hold beside their weights


@pytest.fixture(scope="module")
def models() -> dict[str, Path]:
    return zoo()


@pytest.fixture(scope="module")
def server(models: dict[str, Path], tmp_path_factory) -> Iterator[RunningServer]:
    """alpha (main, with an alias and its own context length and sampling), beta (small), broken (no
    weights) and big (more than the budget), with a rule for `gpt-*` names."""
    home = tmp_path_factory.mktemp("registry")
    budget = size(models["alpha"]) + size(models["beta"]) + size(models["gamma"]) + KV_ROOM
    config = home / "config.toml"
    config.write_text(
        config_toml(
            {"small_model": "beta", "memory_budget_bytes": budget, "model_ttl": 0},
            [
                {
                    "name": "alpha",
                    "source": str(models["alpha"]),
                    "aliases": ["house"],
                    "context_length": 256,
                },
                {"name": "beta", "source": str(models["beta"])},
                {"name": "broken", "source": str(models["broken"])},
                {"name": "big", "source": str(models["big"])},
            ],
            [{"pattern": "gpt-*", "model": "beta"}],
        )
    )
    with run_server(home, "--config", str(config)) as running:
        yield running


def test_models_are_listed_with_aliases_tier_ids_and_whether_loaded(server: RunningServer) -> None:
    with server.http() as http:
        listing = http.get("/v1/models", params={"limit": 1000}).json()
    entries = {entry["id"]: entry for entry in listing["data"]}
    assert list(entries) == [
        "alpha",
        "beta",
        "broken",
        "big",
        "house",
        "claude-opus",
        "claude-sonnet",
        "claude-haiku",
    ]
    assert listing["first_id"] == "alpha"  # the main model first: `mlxd claude` takes it for the main tiers
    assert entries["house"]["display_name"] == "house → alpha" and entries["house"]["model"] == "alpha"
    assert entries["claude-haiku"]["model"] == "beta" and entries["claude-opus"]["model"] == "alpha"
    assert entries["alpha"]["context_length"] == 256 and entries["beta"]["context_length"] == 32768
    assert all(entry["type"] == "model" and entry["created_at"].endswith("Z") for entry in entries.values())

    assert ask(server, "house").status_code == 200
    with server.http() as http:
        listed = {e["id"]: e["loaded"] for e in http.get("/v1/models", params={"limit": 1000}).json()["data"]}
        assert listed["alpha"] and listed["house"] and listed["claude-sonnet"]
        assert http.get("/v1/models/claude-opus-4-1-20250805").json()["model"] == "alpha"


@pytest.mark.parametrize(
    ("requested", "model"),
    [
        ("alpha", "alpha"),
        ("house", "alpha"),
        ("claude-sonnet-4-5-20250929", "alpha"),
        ("claude-opus-4-1", "alpha"),
        ("claude-haiku-4-5-20251001", "beta"),
        ("gpt-4o-mini", "beta"),
    ],
)
def test_names_aliases_and_rules_find_their_model(server: RunningServer, requested: str, model: str) -> None:
    response = ask(server, requested)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == requested  # the answer names the model as it was asked for
    assert served_by(server, response) == model


def test_an_unknown_name_is_a_404_that_lists_the_choices(server: RunningServer) -> None:
    response = ask(server, "llama-nope")
    assert response.status_code == 404 and response.headers["x-should-retry"] == "false"
    assert response.json()["error"] == {
        "type": "not_found_error",
        "message": "model: llama-nope (available: alpha, beta, broken, big, house; "
        "and names matching gpt-*, *haiku*, claude-*)",
    }


def test_the_configured_context_length_limits_prompts_and_clamps_max_tokens(server: RunningServer) -> None:
    too_long = ask(server, "alpha", messages=[{"role": "user", "content": "word " * 400}])
    assert too_long.status_code == 400
    assert too_long.json()["error"]["message"].endswith("tokens > 256 maximum")
    clamped = ask(server, "alpha", max_tokens=100_000, temperature=0)
    assert clamped.status_code == 200
    usage = clamped.json()["usage"]
    prompt = usage["input_tokens"] + usage["cache_read_input_tokens"] + usage["cache_creation_input_tokens"]
    assert prompt + usage["output_tokens"] <= 256


def test_a_model_too_big_for_the_budget_is_refused_for_good(server: RunningServer, models) -> None:
    assert ask(server, "alpha").status_code == 200
    for stream in (False, True):
        refused = ask(server, "big", stream=stream)
        assert refused.status_code == 529 and refused.headers["x-should-retry"] == "false"
        message = refused.json()["error"]["message"]
        assert f"model big needs {format_bytes(size(models['big']))}" in message
        budget = size(models["alpha"]) + size(models["beta"]) + size(models["gamma"]) + KV_ROOM
        assert f"the memory budget is {format_bytes(budget)}" in message
        assert "alpha (" in message and "of it KV" in message and "do not retry" in message
    assert ps(server)["big"]["state"] == "unloaded"
    assert ask(server, "alpha").status_code == 200


def test_a_model_that_fails_to_load_is_a_clear_error_and_the_server_keeps_serving(
    server: RunningServer,
) -> None:
    failed = ask(server, "broken")
    assert failed.status_code == 500
    message = failed.json()["error"]["message"]
    assert message.startswith("model broken failed to load from ") and "No safetensors found" in message
    body = {
        "model": "broken",
        "max_tokens": 4,
        "stream": True,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    with server.http() as http, http.stream("POST", "/v1/messages", json=body) as response:
        lines = list(response.iter_lines())
    assert lines[0] == "event: message_start"  # the stream began while the model was loading
    error = json.loads(lines[lines.index("event: error") + 1].removeprefix("data: "))
    assert error["error"]["type"] == "api_error" and "No safetensors found" in error["error"]["message"]
    assert "No safetensors found" in ps(server)["broken"]["last_error"]
    assert ask(server, "beta").status_code == 200


def test_idle_models_make_room_least_recently_used_first(
    models: dict[str, Path], tiny_model: Path, tmp_path: Path
) -> None:
    """A budget that holds one model at a time: each request unloads the other, unless it is in use."""
    budget = max(size(models["beta"]), size(tiny_model)) + 1
    config = tmp_path / "config.toml"
    config.write_text(
        config_toml(
            {"memory_budget_bytes": budget},
            [{"name": "beta", "source": str(models["beta"])}, {"name": "endless", "source": str(tiny_model)}],
        )
    )
    with run_server(tmp_path, "--config", str(config)) as server:
        assert ask(server, "beta").status_code == 200
        assert ask(server, "endless").status_code == 200
        states = ps(server)
        assert (states["beta"]["state"], states["endless"]["state"]) == ("unloaded", "loaded")
        assert (
            "unloaded model beta" in server.log()
            and "least recently used) to make room for endless" in server.log()
        )

        # Long enough to still run while another request comes; read to its end rather than cut short, so
        # the test does not depend on how soon the server notices a client that went away.
        long = {
            "model": "endless",
            "max_tokens": 2000,
            "stream": True,
            "messages": [{"role": "user", "content": "x"}],
        }
        with server.http() as http, http.stream("POST", "/v1/messages", json=long) as response:
            lines = response.iter_lines()
            next(line for line in lines if line == "event: content_block_delta")
            busy = ask(server, "beta")
            assert busy.status_code == 529 and busy.headers["x-should-retry"] == "true"
            assert (
                "endless" in busy.json()["error"]["message"] and "in use" in busy.json()["error"]["message"]
            )
            assert "event: message_stop" in list(lines)
        assert ask(server, "beta").status_code == 200
        assert ps(server)["endless"]["state"] == "unloaded"


def test_the_kv_state_a_model_holds_counts_against_the_budget(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """Weights that fit together, and a long prompt whose KV state alpha keeps: beta's load unloads alpha."""
    budget = size(models["alpha"]) + size(models["beta"]) + 2**16
    config = tmp_path / "config.toml"
    config.write_text(
        config_toml(
            {"memory_budget_bytes": budget},
            [
                {"name": "alpha", "source": str(models["alpha"])},
                {"name": "beta", "source": str(models["beta"])},
            ],
        )
    )
    with run_server(tmp_path, "--config", str(config)) as server:
        assert ask(server, "alpha", messages=[{"role": "user", "content": "word " * 2000}]).status_code == 200
        with server.http() as http:
            held = http.get("/v1/admin/ps").json()["kv_bytes"]
        assert held > 2**16  # about half a KB per token of alpha's prompt
        assert ask(server, "beta").status_code == 200
        states = ps(server)
        assert (states["alpha"]["state"], states["beta"]["state"]) == ("unloaded", "loaded")
        assert "unloaded model alpha" in server.log() and "to make room for beta" in server.log()


def test_idle_model_unloads_after_its_ttl_and_comes_back(models: dict[str, Path], tmp_path: Path) -> None:
    """alpha and beta are kept loaded (main and small, co-resident); gamma unloads two seconds after use,
    handing its memory back each time."""
    config = tmp_path / "config.toml"
    config.write_text(
        config_toml(
            {"small_model": "beta", "keep_small_model_loaded": True, "model_ttl": 1},
            [
                {"name": "alpha", "source": str(models["alpha"])},
                {"name": "beta", "source": str(models["beta"])},
                {"name": "gamma", "source": str(models["gamma"]), "ttl": 2},
            ],
        )
    )
    with run_server(tmp_path, "--config", str(config)) as server:
        wait_for(
            lambda: ps(server)["beta"]["state"] == ps(server)["alpha"]["state"] == "loaded", "pinned load"
        )
        assert ps(server)["alpha"]["pinned"] and ps(server)["alpha"]["ttl"] == 0
        with server.http() as http:
            baseline = http.get("/v1/admin/ps").json()["active_memory_bytes"]
        gamma = size(models["gamma"])
        seen_loaded = []
        for turn in range(3):
            assert ask(server, "gamma").status_code == 200
            with server.http() as http:
                now = http.get("/v1/admin/ps").json()
            if now["models"][2]["state"] == "loaded":  # not yet unloaded again
                seen_loaded.append(now["active_memory_bytes"] >= baseline + gamma)
            wait_for(
                lambda: ps(server)["gamma"]["state"] == "unloaded", f"gamma unloads after use {turn + 1}"
            )
            with server.http() as http:
                # Back to where it was: neither the weights nor the KV cache linger, however many reloads.
                assert http.get("/v1/admin/ps").json()["active_memory_bytes"] < baseline + gamma // 2
        assert seen_loaded and all(seen_loaded), "while loaded, gamma's weights count in the memory MLX holds"
        log = server.log()
        assert log.count("loading model gamma from") == 3 and "unloaded model gamma after 2s idle" in log
        assert log.count("loading model alpha from") == log.count("loading model beta from") == 1
        assert ps(server)["alpha"]["state"] == ps(server)["beta"]["state"] == "loaded"


def test_a_first_download_streams_pings_and_loads_once(models: dict[str, Path], tmp_path: Path) -> None:
    """A model fetched from the hub on its first request: the stream begins and pings while the weights
    download; requests for it meanwhile share the one load; requests for a loaded model are not held up."""
    with serve_hub({"test-org/remote": models["gamma"]}) as hub:
        config = tmp_path / "config.toml"
        config.write_text(
            config_toml(
                {},
                [
                    {"name": "local", "source": str(models["alpha"])},
                    {"name": "remote", "source": "test-org/remote"},
                ],
            )
        )
        env = {
            **server_env(
                tmp_path, HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"), MLXD_PING_INTERVAL="0.1"
            ),
            "HF_HUB_OFFLINE": "0",  # this hub is on 127.0.0.1
            "HF_HUB_DOWNLOAD_TIMEOUT": "120",  # the test holds a download back for a while
        }
        with run_server(tmp_path, "--config", str(config), env=env) as server:
            assert ask(server, "local").status_code == 200
            release = hub.hold("model.safetensors")
            body = {
                "model": "remote",
                "max_tokens": 4,
                "stream": True,
                "messages": [{"role": "user", "content": "Hi"}],
            }
            others: list[httpx.Response] = []
            waiting = [
                threading.Thread(target=lambda: others.append(ask(server, "remote"))) for _ in range(3)
            ]
            with server.http() as http, http.stream("POST", "/v1/messages", json=body) as response:
                lines = response.iter_lines()
                events = (line for line in lines if line.startswith("event: "))
                assert [next(events) for _ in range(3)] == [
                    "event: message_start",
                    "event: ping",
                    "event: ping",
                ]
                for thread in waiting:
                    thread.start()
                wait_for(
                    lambda: ps(server)["remote"]["active_sequences"] == 4, "every request waits for the load"
                )
                assert ask(server, "local").status_code == 200  # not held up by the download
                assert ps(server)["remote"]["state"] == "loading"
                release.set()
                rest = list(lines)
            for thread in waiting:
                thread.join(timeout=120)
        assert "event: message_stop" in rest and "event: error" not in rest
        assert [response.status_code for response in others] == [200, 200, 200]
        assert len(hub.gets("model.safetensors")) == 1
        assert server.log().count("loading model remote from test-org/remote") == 1
