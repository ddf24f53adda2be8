"""The settings Claude Code needs to use this daemon, as `export` lines or merged into the `env` of
Claude Code's settings.json."""

from __future__ import annotations

import json
import os
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from daemon.client.http import DaemonClient, DaemonUnreachable
from daemon.config.atomic_write import write_atomically
from daemon.config.settings import Settings
from daemon.engine.names import HAIKU_TIER_ID

# Claude Code needs some credential; with auth off the daemon accepts any, so this placeholder says why.
NO_AUTH_PLACEHOLDER = "mlxd-auth-is-off"


class ClaudeSetupError(Exception):
    """Settings that cannot be written or discovered, with what to do about it."""


@dataclass(frozen=True)
class ServedModels:
    ids: list[str]
    context_lengths: dict[str, int]  # of the models that report one
    small: str | None  # the model for Claude Code's background (haiku) tier, when one is set apart
    source: str  # where the ids came from, for the user


def served_models(settings: Settings, client: DaemonClient) -> ServedModels:
    """The running daemon's models (and context length, when it reports one); else the configured model."""
    configured = {settings.served_name: settings.context_length} if settings.context_length else {}
    try:
        listed = client.request("GET", "/v1/models?limit=1000")
    except DaemonUnreachable:
        return ServedModels(
            [settings.served_name], configured, settings.small_model, "the config (mlxd is not running)"
        )
    if listed.status != 200:
        raise ClaudeSetupError(
            f"mlxd at {client.url} refused to list its models: HTTP {listed.status} {listed.error_message()}"
        )
    entries = listed.json()["data"]
    reported = {e["id"]: e["context_length"] for e in entries if isinstance(e.get("context_length"), int)}
    ids = [entry["id"] for entry in entries]
    # The daemon lists Claude's tier ids with the model each means.
    small = next((e.get("model") for e in entries if e["id"] == HAIKU_TIER_ID), None)
    return ServedModels(ids, {**configured, **reported}, small, f"the running daemon at {client.url}")


def claude_env(
    url: str, token: str | None, models: ServedModels, main_model: str | None, small_model: str | None
) -> dict[str, str]:
    if not models.ids and main_model is None:
        raise ClaudeSetupError(f"mlxd at {url} serves no model; pass --model")
    main = main_model or models.ids[0]
    small = small_model or models.small or main
    env = {
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_AUTH_TOKEN": token or NO_AUTH_PLACEHOLDER,
        "ANTHROPIC_DEFAULT_OPUS_MODEL": main,
        "ANTHROPIC_DEFAULT_SONNET_MODEL": main,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": small,
        # Claude Code's per-request attribution line would change the prompt's start on every turn.
        "CLAUDE_CODE_ATTRIBUTION_HEADER": "0",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    if main in models.context_lengths:
        env["CLAUDE_CODE_MAX_CONTEXT_TOKENS"] = str(models.context_lengths[main])
    return env


def export_lines(env: Mapping[str, str]) -> str:
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())


def claude_settings_path(environ: Mapping[str, str] = os.environ) -> Path:
    """Claude Code's user settings file; CLAUDE_CONFIG_DIR moves it, as it does for Claude Code."""
    folder = environ.get("CLAUDE_CONFIG_DIR") or Path.home() / ".claude"
    return Path(folder).expanduser() / "settings.json"


def write_claude_settings(path: Path, env: Mapping[str, str]) -> Path | None:
    """Merge `env` into the file's `env`, keeping every other key; returns the backup of the file as it
    was, or None when there was no file. The result is private (0600): it holds the token."""
    settings: dict = {}
    backup = None
    if path.exists():
        try:
            settings = json.loads(path.read_text() or "{}")
        except json.JSONDecodeError as error:
            raise ClaudeSetupError(
                f"{path} is not valid JSON ({error}); fix or move it, then retry"
            ) from None
        if not isinstance(settings, dict) or not isinstance(settings.get("env", {}), dict):
            raise ClaudeSetupError(
                f"{path} is not a settings object with an `env` object; fix it, then retry"
            )
        backup = path.with_name(path.name + ".bak")
        shutil.copy2(path, backup)
    settings["env"] = {**settings.get("env", {}), **env}
    write_atomically(path, (json.dumps(settings, indent=2, ensure_ascii=False) + "\n").encode(), 0o600)
    return backup
