"""`mlxd open`: the running daemon's status page in the default browser."""

from __future__ import annotations

import webbrowser
from pathlib import Path

import click

from daemon.cli.common import config_option, url_option
from daemon.client.http import base_url
from daemon.config.settings import load_settings


@click.command("open")
@config_option
@url_option
def open_page(config: Path | None, url: str | None) -> None:
    """Open the daemon's status page: its models, live and recent requests, cache hits and misses.

    With a token configured, the page asks for it once (`mlxd token` shows it) and keeps it in that tab.
    The browser is the system's default ($BROWSER where it is set).
    """
    settings = load_settings({"config": config})
    page = f"{(url or base_url(settings)).rstrip('/')}/"
    click.echo(f"opening {page}")
    if not webbrowser.open(page):
        raise click.ClickException(f"no browser could be started; open {page} yourself")
