"""`mlxd claude`: the settings Claude Code needs, merged into its settings file without losing anything, and
an end-to-end check of the running daemon as Claude Code uses it."""

from __future__ import annotations

import json
import shlex
import stat
import subprocess
from pathlib import Path

from tests.conftest import MLXD, free_port, run_server, server_env


def mlxd(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MLXD), *args], env=env, capture_output=True, text=True, timeout=300)


def exported(output: str) -> dict[str, str]:
    """What a shell would have in its environment after evaluating the output."""
    pairs = [shlex.split(line)[1] for line in output.splitlines() if line.startswith("export ")]
    return dict(pair.split("=", 1) for pair in pairs)


def stopped_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A home whose daemon is not running: its port is free."""
    return server_env(tmp_path, HOME=str(tmp_path / "home"), MLXD_PORT=str(free_port()), **extra)


def test_exports_name_the_configured_model_when_the_daemon_is_stopped(tmp_path: Path) -> None:
    env = stopped_env(tmp_path, MLXD_MODEL_NAME="local", MLXD_CONTEXT_LENGTH="8192")
    result = mlxd(env, "claude")
    assert result.returncode == 0, result.stderr
    assert exported(result.stdout) == {
        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{env['MLXD_PORT']}",
        "ANTHROPIC_AUTH_TOKEN": "mlxd-auth-is-off",
        "ANTHROPIC_DEFAULT_OPUS_MODEL": "local",
        "ANTHROPIC_DEFAULT_SONNET_MODEL": "local",
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": "local",
        "CLAUDE_CODE_ATTRIBUTION_HEADER": "0",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_MAX_CONTEXT_TOKENS": "8192",
    }
    assert "mlxd is not running" in result.stdout  # said in a comment line


def test_write_merges_into_existing_settings_and_keeps_a_backup(tmp_path: Path) -> None:
    env = stopped_env(tmp_path, MLXD_MODEL_NAME="local")
    assert mlxd(env, "token", "rotate").returncode == 0
    settings_path = tmp_path / "home" / ".claude" / "settings.json"
    settings_path.parent.mkdir(parents=True)
    original = {
        "permissions": {"allow": ["Bash(ls:*)"]},
        "model": "opus",
        "env": {"MY_VARIABLE": "kept", "ANTHROPIC_BASE_URL": "https://old.example"},
    }
    settings_path.write_text(json.dumps(original, indent=4))
    original_text = settings_path.read_text()

    result = mlxd(env, "claude", "--write", "--small-model", "local-small")
    assert result.returncode == 0, result.stderr
    written = json.loads(settings_path.read_text())
    assert written["permissions"] == original["permissions"] and written["model"] == "opus"
    assert written["env"]["MY_VARIABLE"] == "kept"
    assert written["env"]["ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{env['MLXD_PORT']}"
    assert written["env"]["ANTHROPIC_AUTH_TOKEN"] == (tmp_path / "config" / "token").read_text().strip()
    assert written["env"]["ANTHROPIC_DEFAULT_SONNET_MODEL"] == "local"
    assert written["env"]["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == "local-small"
    assert written["env"]["CLAUDE_CODE_ATTRIBUTION_HEADER"] == "0"
    assert (settings_path.parent / "settings.json.bak").read_text() == original_text
    assert stat.S_IMODE(settings_path.stat().st_mode) == 0o600  # it holds the token

    # No file yet: one is created, with nothing to back up.
    fresh = tmp_path / "fresh-claude"
    result = mlxd({**env, "CLAUDE_CONFIG_DIR": str(fresh)}, "claude", "--write")
    assert result.returncode == 0, result.stderr
    assert json.loads((fresh / "settings.json").read_text())["env"]["ANTHROPIC_DEFAULT_OPUS_MODEL"] == "local"
    assert not (fresh / "settings.json.bak").exists()


def test_write_refuses_a_settings_file_it_cannot_read(tmp_path: Path) -> None:
    settings_path = tmp_path / "claude" / "settings.json"
    settings_path.parent.mkdir()
    settings_path.write_text('{"model": "opus",')
    result = mlxd(stopped_env(tmp_path, CLAUDE_CONFIG_DIR=str(settings_path.parent)), "claude", "--write")
    assert result.returncode == 1 and "is not valid JSON" in result.stderr
    assert settings_path.read_text() == '{"model": "opus",'


def test_check_passes_against_the_running_daemon(tiny_model: Path, tmp_path: Path) -> None:
    env = server_env(tmp_path, HOME=str(tmp_path / "home"))
    assert mlxd(env, "token", "rotate").returncode == 0  # as `mlxd service install` would: auth on
    with run_server(tmp_path, "--model", str(tiny_model), "--model-name", "tiny", env=env) as server:
        env["MLXD_PORT"] = server.url.rsplit(":", 1)[1]
        check = mlxd(env, "claude", "--check")
        exports = exported(mlxd(env, "claude").stdout)
    assert check.returncode == 0, check.stdout + check.stderr
    lines = check.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["PASS", "reachable"],
        ["PASS", "models"],
        ["PASS", "count_tokens"],
        ["PASS", "stream"],
        ["PASS", "prefix"],
    ]
    assert "read 0 of" not in lines[-1]
    assert exports["ANTHROPIC_DEFAULT_SONNET_MODEL"] == "tiny"
    assert exports["ANTHROPIC_BASE_URL"] == server.url


def test_check_fails_clearly_against_a_stopped_daemon(tmp_path: Path) -> None:
    env = stopped_env(tmp_path)
    result = mlxd(env, "claude", "--check")
    assert result.returncode == 1
    url = f"http://127.0.0.1:{env['MLXD_PORT']}"
    assert result.stdout == (
        f"FAIL  reachable     mlxd is not running at {url} (connection refused); "
        "start it with `mlxd serve` or `mlxd service start`\n"
    )


def test_help_is_complete() -> None:
    result = subprocess.run([str(MLXD), "claude", "--help"], capture_output=True, text=True, timeout=60)
    for option in ("--write", "--check", "--model", "--small-model", "--url", "--config"):
        assert option in result.stdout
