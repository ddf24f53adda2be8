"""`mlxd token`: a rotated token applies to the running daemon at once, and the file stays private."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import httpx

from tests.conftest import MLXD, run_server, server_env


def mlxd(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MLXD), *args], env=env, capture_output=True, text=True, timeout=60)


def test_rotated_token_applies_without_a_restart(tiny_model: Path, tmp_path: Path) -> None:
    env = server_env(tmp_path)
    token_file = tmp_path / "config" / "token"
    created = mlxd(env, "token", "rotate")
    assert created.returncode == 0, created.stderr
    old = created.stdout.strip()
    assert token_file.read_text().strip() == old
    assert mlxd(env, "token", "show").stdout.strip() == old

    with run_server(tmp_path, "--model", str(tiny_model), "--model-name", "tiny", env=env) as server:

        def status_with(token: str) -> int:
            return httpx.get(f"{server.url}/v1/models", headers={"x-api-key": token}).status_code

        assert status_with(old) == 200
        rotated = mlxd(env, "token", "rotate")
        assert rotated.returncode == 0, rotated.stderr
        new = rotated.stdout.strip()
        assert new != old and len(new) >= 32
        assert status_with(old) == 401
        assert status_with(new) == 200
        assert "auth on" in server.log()

    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) & 0o077 == 0
    assert mlxd(env, "token", "show").stdout.strip() == new


def test_show_without_a_token_says_how_to_make_one(tmp_path: Path) -> None:
    result = mlxd(server_env(tmp_path), "token", "show")
    assert result.returncode == 1
    assert "no token: auth is off" in result.stderr and "mlxd token rotate" in result.stderr
    assert result.stdout == ""


def test_a_configured_token_file_is_the_one_rotated(tmp_path: Path) -> None:
    elsewhere = tmp_path / "secrets" / "mlxd-token"
    env = server_env(tmp_path, MLXD_TOKEN_FILE=str(elsewhere))
    token = mlxd(env, "token", "rotate").stdout.strip()
    assert elsewhere.read_text().strip() == token
    assert not (tmp_path / "config" / "token").exists()


def test_an_inline_token_cannot_be_rotated(tmp_path: Path) -> None:
    result = mlxd(server_env(tmp_path, MLXD_TOKEN="inline-secret"), "token", "rotate")
    assert result.returncode == 1 and "set inline" in result.stderr
    assert mlxd(server_env(tmp_path, MLXD_TOKEN="inline-secret"), "token", "show").stdout == "inline-secret\n"
