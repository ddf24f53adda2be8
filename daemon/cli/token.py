"""`mlxd token show|rotate`."""

from __future__ import annotations

from pathlib import Path

import click

from daemon.cli.common import config_option, reported
from daemon.config.settings import load_settings
from daemon.config.tokens import rotate_token, token_path


@click.group()
def token() -> None:
    """Show or rotate the token clients must send (x-api-key or Authorization: Bearer).

    The token lives in a file readable only by you (mode 0600): the config's `token_file`, else `token` in
    the config folder. The daemon reads it on every request, so a rotated token applies at once, without a
    restart.
    """


@token.command("show")
@config_option
def token_show(config: Path | None) -> None:
    """Print the token the daemon requires; exit 1 when there is none (auth is off)."""
    with reported():
        settings = load_settings({"config": config})
        value = settings.resolved_token()
    if value is None:
        raise click.ClickException(
            f"no token: auth is off ({token_path(settings)} does not exist). "
            "Create one with `mlxd token rotate`; the daemon requires it from its next request on."
        )
    click.echo(value)


@token.command("rotate")
@config_option
def token_rotate(config: Path | None) -> None:
    """Write a new random token (creating the first one) and print it.

    The daemon requires it from its next request on, without a restart; update clients too: for Claude Code,
    `mlxd claude --write`.
    """
    with reported():
        path, value = rotate_token(load_settings({"config": config}))
    click.echo(f"wrote a new token to {path}; the daemon requires it from its next request on", err=True)
    click.echo(value)
