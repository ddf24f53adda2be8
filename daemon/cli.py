"""The `mlxd` command."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import click

from daemon import __version__
from daemon.claude_check import run_checks
from daemon.claude_setup import (
    ClaudeSetupError,
    claude_env,
    claude_settings_path,
    export_lines,
    served_models,
    write_claude_settings,
)
from daemon.client import DaemonClient, base_url
from daemon.logs import configure as configure_logging
from daemon.service import BACKENDS, backend_for
from daemon.service.common import ServiceBackend, ServiceError
from daemon.service.install import install as install_service
from daemon.service.spec import build_spec
from daemon.service.status import service_status
from daemon.settings import DEFAULT_PORT, SettingsError, default_config_path, load_settings
from daemon.tokens import TokenError, rotate_token, token_path


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
        configure_logging(settings.log_level, settings.log_file)
        from daemon.server import run

        run(settings)
    except SettingsError as error:
        raise click.ClickException(str(error)) from error


# Errors a user can act on: one line on stderr and exit code 1, instead of a traceback.
USER_ERRORS = (SettingsError, ServiceError, TokenError, ClaudeSetupError)


@contextmanager
def _reported() -> Iterator[None]:
    try:
        yield
    except USER_ERRORS as error:
        raise click.ClickException(str(error)) from error


config_option = click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"The daemon's TOML config file. [default: $MLXD_CONFIG, else {default_config_path()}]",
)


def _service_config(config: Path | None) -> Path:
    return config or Path(os.environ.get("MLXD_CONFIG") or default_config_path())


@main.group()
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
    with _reported():
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
    with _reported():
        path, value = rotate_token(load_settings({"config": config}))
    click.echo(f"wrote a new token to {path}; the daemon requires it from its next request on", err=True)
    click.echo(value)


@main.group()
@click.option(
    "--backend",
    type=click.Choice(sorted(BACKENDS)),
    envvar="MLXD_SERVICE_BACKEND",
    hidden=True,
    help="The service manager to drive, instead of this system's (lets tests run both anywhere).",
)
@click.pass_context
def service(ctx: click.Context, backend: str | None) -> None:
    """Run mlxd in the background: started at login, restarted after a crash, not after a stop.

    \b
    macOS: a launchd user agent, ~/Library/LaunchAgents/io.mlxd.daemon.plist, logs in ~/Library/Logs/mlxd
    Linux: a systemd user unit, ~/.config/systemd/user/mlxd.service, logs in ~/.local/state/mlxd/log

    Either runs `mlxd serve --config CONFIG` with this installation's mlxd; set the model in that file.
    """
    ctx.obj = backend_for(backend)


@service.command("install")
@config_option
@click.option(
    "--no-auth",
    is_flag=True,
    help="Do not create a token; clients on this machine then need none (a token that exists still applies).",
)
@click.pass_obj
def service_install(backend: ServiceBackend, config: Path | None, no_auth: bool) -> None:
    """Install the service and start it; run again to apply a changed config path or environment.

    Creates a starter config file if there is none, and a token unless one exists (or --no-auth). The service
    keeps PATH, HF_HOME and HF_HUB_CACHE of the shell that installs it.
    """
    with _reported():
        notes = install_service(backend, _service_config(config), auth=not no_auth)
    for note in notes:
        click.echo(note)
    click.echo("next: `mlxd service status`, then `mlxd claude --write` to point Claude Code at it")


@service.command("uninstall")
@click.pass_obj
def service_uninstall(backend: ServiceBackend) -> None:
    """Stop the service and remove it (config, token, models and logs stay)."""
    with _reported():
        removed = backend.uninstall()
    click.echo(f"removed {backend.definition_path}" if removed else "the service was not installed")


@service.command("start")
@click.pass_obj
def service_start(backend: ServiceBackend) -> None:
    """Start the installed service (it starts at login by itself)."""
    with _reported():
        backend.start()
    click.echo("started; `mlxd service status` says when it answers")


@service.command("stop")
@click.pass_obj
def service_stop(backend: ServiceBackend) -> None:
    """Stop the service; it stays stopped until `mlxd service start` or the next login."""
    with _reported():
        backend.stop()
    click.echo("stopped")


@service.command("restart")
@click.pass_obj
def service_restart(backend: ServiceBackend) -> None:
    """Restart the service, for example after editing its config file."""
    with _reported():
        backend.restart()
    click.echo("restarted; `mlxd service status` says when it answers")


@service.command("status")
@config_option
@click.pass_context
def service_status_command(ctx: click.Context, config: Path | None) -> None:
    """Show the service manager's state and pid, and the daemon's own health (GET /health).

    Exit code 0 when the daemon answers, 3 when it does not.
    """
    backend: ServiceBackend = ctx.obj
    with _reported():
        report = service_status(backend, build_spec(_service_config(config), backend.log_dir))
    for line in report.lines:
        click.echo(line)
    ctx.exit(0 if report.up else 3)


@service.command("logs")
@click.option("-n", "--lines", default=50, show_default=True, help="How many of the last lines to show.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing lines as they are written (Ctrl-C ends).")
@click.pass_context
def service_logs(ctx: click.Context, lines: int, follow: bool) -> None:
    """Show the daemon's log, and what it printed before logging started (tracebacks, config errors)."""
    backend: ServiceBackend = ctx.obj
    with _reported():
        command = backend.log_command(lines, follow)
    try:
        ctx.exit(subprocess.run(command).returncode)
    except KeyboardInterrupt:
        ctx.exit(0)


@service.command("plist")
@config_option
@click.pass_obj
def service_plist(backend: ServiceBackend, config: Path | None) -> None:
    """Print the launchd plist (on Linux, the systemd unit) that install would write, without installing."""
    with _reported():
        click.echo(backend.render(build_spec(_service_config(config), backend.log_dir)), nl=False)


@main.command()
@config_option
@click.option(
    "--url",
    callback=lambda _ctx, _param, value: _http_url(value),
    help="The daemon's address. [default: http://127.0.0.1:PORT, PORT from the config]",
)
@click.option(
    "--model",
    "main_model",
    help="Model id for Claude Code's main tiers (opus, sonnet). [default: the first model mlxd serves]",
)
@click.option("--small-model", help="Model id for Claude Code's background tier (haiku). [default: --model]")
@click.option(
    "--write",
    is_flag=True,
    help="Merge the settings into the `env` of ~/.claude/settings.json (other keys stay; the file as it was "
    "is kept as settings.json.bak) instead of printing them.",
)
@click.option(
    "--check",
    is_flag=True,
    help="Check the running daemon end to end as Claude Code uses it, one line per check; exit 1 unless all "
    "pass. With --write, after writing.",
)
@click.pass_context
def claude(
    ctx: click.Context,
    config: Path | None,
    url: str | None,
    main_model: str | None,
    small_model: str | None,
    write: bool,
    check: bool,
) -> None:
    """Set up Claude Code to use this daemon.

    Prints the environment Claude Code needs as export lines (try `eval "$(mlxd claude)"`), or with --write
    stores it in Claude Code's settings so that a plain `claude` uses mlxd. Model ids come from the running
    daemon (GET /v1/models), else from the config; the token from `mlxd token`.
    """
    with _reported():
        settings = load_settings({"config": config})
        client = DaemonClient(url or base_url(settings), settings.resolved_token())
        models = served_models(settings, client)
        env = claude_env(client.url, settings.resolved_token(), models, main_model, small_model)
        if write:
            path = claude_settings_path()
            backup = write_claude_settings(path, env)
            click.echo(f"wrote {len(env)} settings into {path}'s env (models from {models.source})")
            if backup:
                click.echo(f"the file as it was: {backup}")
        elif not check:
            click.echo(f"# Claude Code settings for mlxd; models from {models.source}")
            click.echo(export_lines(env), nl=False)
    if check:
        passed = True
        for result in run_checks(client, env["ANTHROPIC_DEFAULT_SONNET_MODEL"]):
            click.echo(result.line())
            passed = passed and result.passed
        ctx.exit(0 if passed else 1)


def _http_url(value: str | None) -> str | None:
    if value is not None and (urlsplit(value).scheme != "http" or not urlsplit(value).hostname):
        raise click.BadParameter(f"{value!r} is not an http:// address, e.g. http://127.0.0.1:{DEFAULT_PORT}")
    return value


@main.command(context_settings={"ignore_unknown_options": True}, add_help_option=False)
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
