"""The `mlxd` command."""

from __future__ import annotations

import logging
import sys

import click

from daemon import __version__
from daemon.settings import DEFAULT_PORT, SettingsError, default_config_path, load_settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlxd")
def main() -> None:
    """mlxd serves MLX models behind Anthropic's Messages API, for Claude Code and any Anthropic client.

    Start with `mlxd serve`; point a client at it with ANTHROPIC_BASE_URL=http://127.0.0.1:PORT.
    """


@main.command()
@click.option("--host", help="Address to listen on. [default: 127.0.0.1; others need a token]")
@click.option("--port", type=int, help=f"Port to listen on. [default: {DEFAULT_PORT}]")
@click.option(
    "--model",
    help="A local mlx-lm model folder or a Hugging Face repo id. [default: the built-in demo model]",
)
@click.option("--model-name", help="The id clients ask for. [default: the --model value as given]")
@click.option("--context-length", type=int, help="Override the model's context length, in tokens.")
@click.option("--token", help="Require this token from clients (x-api-key or Authorization: Bearer).")
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    help="Read the required token from this file (its first line).",
)
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    help=f"TOML config file. [default: {default_config_path()}, if present]",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Logging detail; prompts and outputs appear only at debug. [default: info]",
)
def serve(**flags: object) -> None:
    """Serve the Messages API until interrupted (SIGINT or SIGTERM).

    Every option can also be set as MLXD_<OPTION> in the environment (for example MLXD_PORT=9000) or as a
    key in the config file (port = 9000); flags win over the environment, which wins over the file.
    """
    try:
        settings = load_settings(flags)
        _configure_logging(settings.log_level)
        from daemon.server import run

        run(settings)
    except SettingsError as error:
        raise click.ClickException(str(error)) from error


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
