"""`mlxd ps` and `mlxd models …`: model files on this machine, and what the running daemon has loaded."""

from __future__ import annotations

from pathlib import Path

import click

from daemon.cli.common import config_option, daemon_client, reported, url_option
from daemon.cli.listing import facts_lines, inventory_lines, loaded_line, ps_lines, unloaded_line
from daemon.client import admin
from daemon.config.settings import load_settings
from daemon.config.units import format_bytes
from daemon.store.inventory import (
    cache_dir,
    cached_models,
    configured_models,
    describe,
    pull,
    remove,
    source_of,
)


@click.command()
@config_option
@url_option
def ps(config: Path | None, url: str | None) -> None:
    """Show the running daemon's models: loaded or not, memory, idle time, requests, when each unloads.

    IN FLIGHT counts the requests running or queued now; SERVED, those each model has taken since the daemon
    started (the ones in flight included).

    Ends with the weights loaded and the KV state they hold against the memory budget (memory_budget_bytes),
    and all the memory MLX holds (weights, KV caches and scratch).
    """
    with reported():
        reply = admin.ps(daemon_client(config, url))
    click.echo("\n".join(ps_lines(reply)))


@click.group()
def models() -> None:
    """The models: files on this machine, and what the running daemon has loaded.

    \b
    list, info, pull, rm   files: configured models and the Hugging Face cache (no daemon needed)
    load, unload           the running daemon; `mlxd ps` shows what it has loaded

    Models are configured as [[models]] tables in the config file (see the README, "Models"); a daemon
    loads each on its first request and unloads it after it sits idle.
    """


@models.command("list")
@config_option
def models_list(config: Path | None) -> None:
    """List the configured models and the MLX models in the Hugging Face cache, with their sizes."""
    with reported():
        configured = configured_models(load_settings({"config": config}))
        lines = inventory_lines(configured, cache_dir(), cached_models())
    click.echo("\n".join(lines))


@models.command("pull")
@click.argument("repo")
@click.option("--revision", help="A branch, tag or commit of the repo. [default: main]")
def models_pull(repo: str, revision: str | None) -> None:
    """Download REPO (a Hugging Face repo id, e.g. mlx-community/Qwen3-4B-Instruct-2507-4bit).

    Fetches the files mlx-lm loads into the standard Hugging Face cache, with a progress bar. An interrupted
    pull resumes: run it again and the files already downloaded are kept. HF_HOME, HF_HUB_CACHE, HF_ENDPOINT
    and HF_TOKEN apply as for any Hugging Face tool.
    """
    with reported():
        path = pull(repo, revision)
    click.echo(f'{repo} is in {path}; serve it as `source = "{repo}"` in a [[models]] table')


@models.command("rm")
@click.argument("model")
@click.option("-y", "--yes", is_flag=True, help="Delete without asking.")
@config_option
def models_rm(model: str, yes: bool, config: Path | None) -> None:
    """Delete MODEL from the Hugging Face cache: a repo id, or the name of a configured model.

    Every downloaded revision of the repo goes; local model folders are never deleted.
    """
    with reported():
        source = source_of(model, load_settings({"config": config}))
    if Path(source).expanduser().exists():
        raise click.ClickException(f"{source} is a local folder; mlxd deletes only what it downloaded")
    if not yes:
        click.confirm(f"delete {source} from the Hugging Face cache?", abort=True)
    with reported():
        freed = remove(source)
    click.echo(f"deleted {source}: freed {format_bytes(freed)}")


@models.command("info")
@click.argument("model", required=False)
@config_option
def models_info(model: str | None, config: Path | None) -> None:
    """Describe MODEL: architecture, quantisation, context length, size, tool calling and thinking.

    MODEL is a configured name or alias (`demo` for the demo model when none is configured), a Hugging Face
    repo id already downloaded, or a local folder; without it, the main model. Only the config and tokenizer
    are read; the weights stay on disk.
    """
    with reported():
        facts = describe(source_of(model, load_settings({"config": config})))
    click.echo("\n".join(facts_lines(facts)))


@models.command("load")
@click.argument("name")
@config_option
@url_option
def models_load(name: str, config: Path | None, url: str | None) -> None:
    """Load NAME in the running daemon now, and wait until it is ready (downloading it first if needed).

    NAME is any name a request may use: a model's name or alias, or one the rules map (claude-haiku…). Idle
    unpinned models are unloaded to make room within the memory budget, as for a request.
    """
    with reported():
        model = admin.load(daemon_client(config, url, timeout=admin.LOAD_TIMEOUT), name)
    click.echo(loaded_line(model))


@models.command("unload")
@click.argument("name")
@config_option
@url_option
def models_unload(name: str, config: Path | None, url: str | None) -> None:
    """Unload NAME from the running daemon now, freeing its memory; refused while a request uses it.

    Its next request loads it again (its prompt cache is saved and restored, as across a restart).
    """
    with reported():
        reply = admin.unload(daemon_client(config, url), name)
    click.echo(unloaded_line(reply))
