"""`mlxd serve` and `mlxd bench`."""

from __future__ import annotations

import sys

import click

from daemon.config.logs import configure as configure_logging
from daemon.config.settings import DEFAULT_PORT, SettingsError, default_config_path, load_settings


@click.command()
@click.option("--host", help="Address to listen on. [default: 127.0.0.1; others need a token]")
@click.option("--port", type=int, help=f"Port to listen on. [default: {DEFAULT_PORT}]")
@click.option(
    "--model",
    help="A local mlx-lm model folder or a Hugging Face repo id. [default: the built-in demo model]",
)
@click.option(
    "--model-name",
    help="The id clients ask for. [default: a repo id as given; a local folder's name, its path an alias]",
)
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
    "--hostfile",
    type=click.Path(dir_okay=False),
    help="Serve one model across the hosts of this mlx.distributed_config hostfile (this Mac first).",
)
@click.option("--hosts", help="Serve one model across these hosts (comma-separated, this Mac first).")
@click.option("--ranks", type=int, help="Serve one model across this many processes on this machine.")
@click.option(
    "--parallel",
    type=click.Choice(["auto", "tensor", "pipeline"]),
    help="How a group splits the model. [default: auto: tensor parallel where the model supports it]",
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
        settings.check_sources()
        configure_logging(settings.log_level, settings.log_file)
        from daemon.cli.launch import group_wanted, launch

        if group_wanted(settings):
            sys.exit(launch(settings, sys.argv[sys.argv.index("serve") + 1 :]))
        from daemon.server import run

        run(settings)
    except SettingsError as error:
        raise click.ClickException(str(error)) from error


@click.command(context_settings={"ignore_unknown_options": True}, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> None:
    """Benchmark mlxd against the raw MLX engine and peer servers (`mlxd bench --help` for options)."""
    try:
        from benchmarks.cli import main as run_benchmarks
    except ImportError as error:
        raise click.ClickException(
            f"the benchmark suite is not installed ({error}); from a checkout: pip install -e '.[bench]'"
        ) from error
    sys.exit(run_benchmarks(list(args), prog="mlxd bench"))
