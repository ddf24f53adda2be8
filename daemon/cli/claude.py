"""`mlxd claude`: Claude Code's settings for this daemon, printed, written or checked."""

from __future__ import annotations

from pathlib import Path

import click

from daemon.cli.common import config_option, reported, url_option
from daemon.client.claude_check import run_checks
from daemon.client.claude_setup import (
    claude_env,
    claude_settings_path,
    export_lines,
    served_models,
    write_claude_settings,
)
from daemon.client.http import DaemonClient, base_url
from daemon.config.settings import load_settings


@click.command()
@config_option
@url_option
@click.option(
    "--model",
    "main_model",
    help="Model id for Claude Code's main tiers (opus, sonnet). [default: the first model mlxd serves]",
)
@click.option(
    "--small-model",
    help="Model id for Claude Code's background tier (haiku). "
    "[default: the daemon's small_model, else --model]",
)
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
    with reported():
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
