"""What the commands share: errors a user can act on, reported in one line, and the options that name the
config file and the running daemon."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import click

from daemon.client.admin import AdminError
from daemon.client.claude_setup import ClaudeSetupError
from daemon.client.http import DEFAULT_TIMEOUT, DaemonClient, base_url
from daemon.config.settings import DEFAULT_PORT, SettingsError, default_config_path, load_settings
from daemon.config.tokens import TokenError
from daemon.service.common import ServiceError
from daemon.store.inventory import ModelStoreError

# Errors a user can act on: one line on stderr and exit code 1, instead of a traceback.
USER_ERRORS = (SettingsError, ServiceError, TokenError, ClaudeSetupError, ModelStoreError, AdminError)


@contextmanager
def reported() -> Iterator[None]:
    try:
        yield
    except USER_ERRORS as error:
        raise click.ClickException(str(error)) from error


config_option = click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"The daemon's TOML config file. [default: $MLXD_CONFIG, else {default_config_path()}]",
)


def service_config(config: Path | None) -> Path:
    return config or Path(os.environ.get("MLXD_CONFIG") or default_config_path())


def http_url(value: str | None) -> str | None:
    if value is not None and (urlsplit(value).scheme != "http" or not urlsplit(value).hostname):
        raise click.BadParameter(f"{value!r} is not an http:// address, e.g. http://127.0.0.1:{DEFAULT_PORT}")
    return value


url_option = click.option(
    "--url",
    callback=lambda _ctx, _param, value: http_url(value),
    help="The daemon's address. [default: http://127.0.0.1:PORT, PORT from the config]",
)


def daemon_client(config: Path | None, url: str | None, timeout: float = DEFAULT_TIMEOUT) -> DaemonClient:
    settings = load_settings({"config": config})
    return DaemonClient(url or base_url(settings), settings.resolved_token(), timeout)
