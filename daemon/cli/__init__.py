"""The `mlxd` command: one module per command family."""

from __future__ import annotations

import click

from daemon import __version__
from daemon.cli.claude import claude
from daemon.cli.models import models, ps
from daemon.cli.page import open_page
from daemon.cli.serve import bench, serve
from daemon.cli.service import service
from daemon.cli.token import token


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlxd")
def main() -> None:
    """mlxd serves MLX models behind Anthropic's Messages API, for Claude Code and any Anthropic client.

    Start with `mlxd serve`; point a client at it with ANTHROPIC_BASE_URL=http://127.0.0.1:PORT.
    """


for command in (serve, service, token, claude, models, ps, open_page, bench):
    main.add_command(command)
