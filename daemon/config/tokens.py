"""The client token on disk: generated with `secrets`, written atomically with mode 0600, read back as the
daemon reads it."""

from __future__ import annotations

import secrets
from pathlib import Path

from daemon.config.atomic_write import write_atomically
from daemon.config.settings import Settings, default_token_path


class TokenError(Exception):
    """A token that cannot be managed here, with a message that says why and what to do."""


def token_path(settings: Settings) -> Path:
    """The file the daemon takes its token from: `token_file` when configured, else the config folder's."""
    return (settings.token_file or default_token_path()).expanduser()


def read_token(path: Path) -> str | None:
    """The token in `path`, or None when the file is missing or blank."""
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def generate_token() -> str:
    return secrets.token_urlsafe(32)


def write_token(path: Path, token: str) -> None:
    """Replace `path` in one step: the daemon reads it on every request."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomically(path, (token + "\n").encode(), 0o600)


def rotate_token(settings: Settings) -> tuple[Path, str]:
    """Write a fresh token where the daemon reads it; returns where and what."""
    if settings.token:
        raise TokenError(
            "the token is set inline (`token` in the config file, MLXD_TOKEN or --token); "
            "mlxd can only rotate a token file: remove the inline token to use one"
        )
    path = token_path(settings)
    token = generate_token()
    write_token(path, token)
    return path, token


def ensure_token(settings: Settings) -> tuple[Path | None, bool]:
    """Make sure the daemon will require a token: returns the token file (None for an inline token) and
    whether it was created just now."""
    if settings.token:
        return None, False
    path = token_path(settings)
    if read_token(path) is not None:
        return path, False
    write_token(path, generate_token())
    return path, True
