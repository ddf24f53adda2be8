"""`mlxd models …` and `mlxd ps`: the files (pull from a hub on 127.0.0.1, list, info, rm) and the running
daemon (ps, load, unload through the authenticated admin routes)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import MLXD, free_port, run_server, server_env
from tests.fake_hub import serve_hub
from tests.model_zoo import ask, config_toml, wait_for, zoo

REPO = "test-org/tiny"


def mlxd(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MLXD), *args], env=env, capture_output=True, text=True, timeout=300)


def hub_env(tmp_path: Path, endpoint: str) -> dict[str, str]:
    return {**server_env(tmp_path, HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf")), "HF_HUB_OFFLINE": "0"}


PS_COLUMNS = ("MODEL", "STATE", "WEIGHTS", "KV CACHE", "ON DISK", "IDLE", "IN FLIGHT", "SERVED", "UNLOADS")


def ps_columns(output: str) -> dict[str, dict[str, str]]:
    """`mlxd ps`'s table: each model's cells by column header, cut where the headers begin."""
    header, *lines = output.splitlines()
    starts = [header.index(column) for column in PS_COLUMNS]
    rows = lines[: next(i for i, line in enumerate(lines) if line.startswith("weights loaded: "))]
    cells = [
        {
            column: row[start:end].strip()
            for column, start, end in zip(PS_COLUMNS, starts, [*starts[1:], None], strict=True)
        }
        for row in rows
    ]
    return {row["MODEL"]: row for row in cells}


def test_pull_list_info_and_rm(tmp_path: Path) -> None:
    with serve_hub({REPO: zoo()["alpha"]}) as hub:
        env = hub_env(tmp_path, hub.url)
        pulled = mlxd(env, "models", "pull", REPO)
    assert pulled.returncode == 0, pulled.stderr
    assert (
        f"{REPO} is in {tmp_path / 'hf' / 'hub'}" in pulled.stdout and "100%" in pulled.stderr
    )  # a progress bar

    offline = {**env, "HF_HUB_OFFLINE": "1"}  # from here on the cache alone
    listed = mlxd(offline, "models", "list").stdout
    assert "Configured: none" in listed and f"In the Hugging Face cache ({tmp_path / 'hf' / 'hub'})" in listed
    assert REPO in listed and "KiB" in listed
    info = mlxd(offline, "models", "info", REPO)
    assert info.returncode == 0, info.stderr
    facts = dict(line.split(":", 1) for line in info.stdout.splitlines())
    assert facts["architecture"].strip() == "qwen3, Qwen3ForCausalLM"
    assert facts["quantization"].strip() == "none (float32)"
    assert facts["context"].strip() == "32768 tokens"
    assert facts["tool calls"].strip() == "yes (json_tools format)"
    assert facts["thinking"].strip() == "yes (<think> … </think>)"

    removed = mlxd(offline, "models", "rm", REPO, "--yes")
    assert removed.returncode == 0 and removed.stdout.startswith(f"deleted {REPO}: freed ")
    assert REPO not in mlxd(offline, "models", "list").stdout
    again = mlxd(offline, "models", "rm", REPO, "--yes")
    assert again.returncode == 1 and "is not in the Hugging Face cache" in again.stderr


def test_an_interrupted_pull_resumes_with_what_it_had(tmp_path: Path) -> None:
    with serve_hub({REPO: zoo()["alpha"]}) as hub:
        env = hub_env(tmp_path, hub.url)
        release = hub.hold("model.safetensors")
        pull = subprocess.Popen(
            [str(MLXD), "models", "pull", REPO], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        blobs = tmp_path / "hf" / "hub" / "models--test-org--tiny" / "blobs"

        def downloaded() -> int:
            return sum(not blob.name.endswith(".incomplete") for blob in blobs.glob("*"))

        wait_for(lambda: downloaded() == len(hub.files(REPO)) - 1, "every file but the weights is downloaded")
        pull.terminate()
        pull.wait(timeout=60)
        release.set()
        resumed = mlxd(env, "models", "pull", REPO)
    assert resumed.returncode == 0, resumed.stderr
    assert len(hub.gets("tokenizer.json")) == len(hub.gets("config.json")) == 1  # kept from the first pull
    assert len(hub.gets("model.safetensors")) == 2


def test_pull_says_clearly_when_it_cannot_reach_the_hub(tmp_path: Path) -> None:
    offline = mlxd({**hub_env(tmp_path, "http://127.0.0.1:9"), "HF_HUB_OFFLINE": "1"}, "models", "pull", REPO)
    assert offline.returncode == 1
    assert "Error: offline (HF_HUB_OFFLINE is set) and test-org/tiny is not in the cache" in offline.stderr
    port = free_port()  # nothing listens there
    unreachable = mlxd(hub_env(tmp_path, f"http://127.0.0.1:{port}"), "models", "pull", REPO)
    assert unreachable.returncode == 1
    assert f"cannot reach http://127.0.0.1:{port} to download {REPO}" in unreachable.stderr
    assert "run the same command again to resume" in unreachable.stderr


def test_list_and_info_know_the_configured_models(tmp_path: Path) -> None:
    models = zoo()
    config = tmp_path / "config.toml"
    config.write_text(
        config_toml(
            {"small_model": "beta"},
            [
                {"name": "alpha", "source": str(models["alpha"]), "aliases": ["house"]},
                {"name": "beta", "source": str(models["beta"])},
                {"name": "away", "source": "test-org/not-downloaded"},
            ],
        )
    )
    env = server_env(tmp_path, MLXD_CONFIG=str(config), HF_HOME=str(tmp_path / "hf"))
    rows = [line.split() for line in mlxd(env, "models", "list").stdout.splitlines()]
    assert rows[1] == ["NAME", "ROLE", "SIZE", "ALIASES", "SOURCE"]
    assert rows[2][:2] == ["alpha", "main"] and rows[2][-2:] == ["house", str(models["alpha"])]
    assert rows[3][:2] == ["beta", "small"] and rows[4] == [
        "away",
        "not",
        "downloaded",
        "test-org/not-downloaded",
    ]
    info = mlxd(env, "models", "info", "house")
    assert info.returncode == 0 and f"path:          {models['alpha']}" in info.stdout
    missing = mlxd(env, "models", "info", "away")
    assert missing.returncode == 1 and "mlxd models pull test-org/not-downloaded" in missing.stderr
    local = mlxd(env, "models", "rm", "alpha", "--yes")
    assert local.returncode == 1 and "is a local folder" in local.stderr and models["alpha"].exists()


def test_ps_load_and_unload_against_the_running_daemon(tiny_model: Path, tmp_path: Path) -> None:
    models = zoo()
    config = tmp_path / "config.toml"
    config.write_text(
        config_toml(
            {"small_model": "beta", "model_ttl": 600},
            [
                {"name": "alpha", "source": str(models["alpha"])},
                {"name": "beta", "source": str(models["beta"])},
                {"name": "endless", "source": str(tiny_model), "pinned": True},
            ],
        )
    )
    env = server_env(tmp_path, MLXD_CONFIG=str(config))
    token = mlxd(env, "token", "rotate").stdout.strip()  # auth on: the CLI must send the token
    with run_server(tmp_path, env=env, token=token) as server:
        url = ("--url", server.url)
        wait_for(lambda: "endless  loaded" in mlxd(env, "ps", *url).stdout, "the pinned model loads at start")
        table = mlxd(env, "ps", *url).stdout.splitlines()
        assert re.split(r"\s{2,}", table[0]) == list(PS_COLUMNS)  # cells are two or more spaces apart
        assert table[1].split()[:3] == ["alpha", "unloaded", "-"] and table[1].endswith("after 10m idle")
        assert table[3].endswith("never (pinned)")
        assert table[4].startswith("weights loaded: ") and "budget; MLX holds" in table[4]
        exports = mlxd(env, "claude", *url).stdout  # Claude Code's tiers: the main and the small model
        assert "export ANTHROPIC_DEFAULT_SONNET_MODEL=alpha\n" in exports
        assert "export ANTHROPIC_DEFAULT_HAIKU_MODEL=beta\n" in exports

        loaded = mlxd(env, "models", "load", "claude-haiku-4-5", *url)  # any name a request may use
        assert loaded.returncode == 0 and loaded.stdout.startswith("beta is loaded (780.4 KiB of weights)")
        assert mlxd(env, "ps", *url).stdout.splitlines()[2].split()[:4] == ["beta", "loaded", "780.4", "KiB"]
        unloaded = mlxd(env, "models", "unload", "beta", *url)
        assert unloaded.returncode == 0 and unloaded.stdout == "unloaded beta: freed 780.4 KiB\n"
        assert mlxd(env, "models", "unload", "beta", *url).stdout == "beta was not loaded\n"

        long = {
            "model": "endless",
            "max_tokens": 2000,  # still running when the CLI asks; read to its end, not cut short
            "stream": True,
            "messages": [{"role": "user", "content": "x"}],
        }
        with server.http() as http, http.stream("POST", "/v1/messages", json=long) as response:
            lines = response.iter_lines()
            next(line for line in lines if line == "event: content_block_delta")
            busy = mlxd(env, "models", "unload", "endless", *url)
            during = ps_columns(mlxd(env, "ps", *url).stdout)["endless"]
            assert "event: message_stop" in list(lines)
        assert busy.returncode == 1 and "model endless is in use (1 requests)" in busy.stderr
        assert (during["IN FLIGHT"], during["SERVED"]) == ("1", "1")
        assert ask(server, "endless").status_code == 200
        after = ps_columns(mlxd(env, "ps", *url).stdout)
        assert (after["endless"]["IN FLIGHT"], after["endless"]["SERVED"]) == ("0", "2")
        assert (after["beta"]["IN FLIGHT"], after["beta"]["SERVED"]) == ("0", "0")  # loaded, never asked
        with server.http() as http:
            served = {m["name"]: m["requests_served"] for m in http.get("/v1/admin/ps").json()["models"]}
        assert served == {"alpha": 0, "beta": 0, "endless": 2}

        unknown = mlxd(env, "models", "load", "nope", *url)
        assert unknown.returncode == 1 and "model: nope (available: alpha, beta, endless" in unknown.stderr
        refused = mlxd({**env, "MLXD_TOKEN": "wrong"}, "ps", *url)
        assert refused.returncode == 1 and "the daemon refused the token" in refused.stderr
    stopped = mlxd(env, "ps", "--url", f"http://127.0.0.1:{free_port()}")
    assert stopped.returncode == 1 and "mlxd is not running at" in stopped.stderr


def test_info_describes_the_demo_model_by_the_name_it_is_served_as(tmp_path: Path) -> None:
    env = server_env(tmp_path)
    for args in (["demo"], []):  # without MODEL: the main model, here the demo one
        info = mlxd(env, "models", "info", *args)
        assert info.returncode == 0, info.stderr
        facts = {
            label: value.strip() for label, value in (line.split(":", 1) for line in info.stdout.splitlines())
        }
        assert Path(facts["path"]).parent == tmp_path / "data" / "models"
        assert facts["architecture"] == "qwen3, Qwen3ForCausalLM" and facts["chat template"] == "yes"
    named = mlxd({**env, "MLXD_MODEL_NAME": "house"}, "models", "info", "house")
    assert named.returncode == 0 and named.stdout == info.stdout
    assert mlxd(env, "models", "info", "house").returncode == 1  # not a name of the demo model here
    gone = mlxd(env, "models", "info", str(tmp_path / "gone"))
    assert gone.returncode == 1 and f"no folder {tmp_path / 'gone'} " in gone.stderr


@pytest.mark.parametrize(
    ("command", "options"),
    [
        (["ps"], ["--url", "--config"]),
        (["models"], ["list", "info", "pull", "rm", "load", "unload"]),
        (["models", "list"], ["--config"]),
        (["models", "pull"], ["REPO", "--revision", "HF_ENDPOINT"]),
        (["models", "rm"], ["MODEL", "--yes", "--config"]),
        (["models", "info"], ["MODEL", "--config"]),
        (["models", "load"], ["NAME", "--url", "--config"]),
        (["models", "unload"], ["NAME", "--url", "--config"]),
    ],
)
def test_help_is_complete(command: list[str], options: list[str]) -> None:
    result = subprocess.run([str(MLXD), *command, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for option in options:
        assert option in result.stdout
