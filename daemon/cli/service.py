"""`mlxd service …`: the daemon as a launchd agent (macOS) or a systemd user unit (Linux)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import click

from daemon.cli.common import config_option, reported, service_config
from daemon.service import BACKENDS, backend_for
from daemon.service.common import ServiceBackend
from daemon.service.install import install as install_service
from daemon.service.spec import build_spec
from daemon.service.status import service_status


@click.group()
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
    with reported():
        notes = install_service(backend, service_config(config), auth=not no_auth)
    for note in notes:
        click.echo(note)
    click.echo("next: `mlxd service status`, then `mlxd claude --write` to point Claude Code at it")


@service.command("uninstall")
@click.pass_obj
def service_uninstall(backend: ServiceBackend) -> None:
    """Stop the service and remove it (config, token, models and logs stay)."""
    with reported():
        removed = backend.uninstall()
    click.echo(f"removed {backend.definition_path}" if removed else "the service was not installed")


@service.command("start")
@click.pass_obj
def service_start(backend: ServiceBackend) -> None:
    """Start the installed service (it starts at login by itself)."""
    with reported():
        backend.start()
    click.echo("started; `mlxd service status` says when it answers")


@service.command("stop")
@click.pass_obj
def service_stop(backend: ServiceBackend) -> None:
    """Stop the service; it stays stopped until `mlxd service start` or the next login."""
    with reported():
        backend.stop()
    click.echo("stopped")


@service.command("restart")
@click.pass_obj
def service_restart(backend: ServiceBackend) -> None:
    """Restart the service, for example after editing its config file."""
    with reported():
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
    with reported():
        report = service_status(backend, build_spec(service_config(config), backend.log_dir))
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
    with reported():
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
    with reported():
        click.echo(backend.render(build_spec(service_config(config), backend.log_dir)), nl=False)
