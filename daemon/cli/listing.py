"""What the CLI prints of the models: the running daemon's replies (`mlxd ps`, `mlxd models load|unload`) and
the models on this machine (`mlxd models list|info`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from daemon.cli.format import duration, table
from daemon.config.units import format_bytes
from daemon.store.inventory import CachedModel, ConfiguredModel, ModelFacts

PS_HEADERS = ("MODEL", "STATE", "WEIGHTS", "KV CACHE", "ON DISK", "IDLE", "IN FLIGHT", "SERVED", "UNLOADS")


def ps_lines(reply: dict[str, Any]) -> list[str]:
    """`GET /v1/admin/ps`: one row per model (requests in flight, running or queued, and served since the
    daemon started), then the memory in use against the budget, then the loads that failed."""
    rows = [
        [
            model["name"],
            model["state"],
            _loaded_size(model, "weight_bytes"),
            _loaded_size(model, "cache_bytes"),
            _loaded_size(model, "disk_cache_bytes"),
            duration(model["idle_seconds"]) if model["idle_seconds"] is not None else "-",
            str(model["active_sequences"] + model["queued"]),
            str(model["requests_served"]),
            _unloads(model),
        ]
        for model in reply["models"]
    ]
    lines = table(PS_HEADERS, rows)
    budget = reply["memory_budget_bytes"]
    lines.append(
        f"weights loaded: {format_bytes(reply['weight_bytes'])} and KV {format_bytes(reply['kv_bytes'])} of "
        f"{format_bytes(budget) + ' budget' if budget else 'an unlimited budget'}; "
        f"MLX holds {format_bytes(reply['active_memory_bytes'])} in all"
    )
    lines += [_cache_line(m) for m in reply["models"] if any(m["cache_counts"].values())]
    lines += [f"{m['name']}: last load failed: {m['last_error']}" for m in reply["models"] if m["last_error"]]
    if (group := reply.get("group")) is not None:
        lines += _group_lines(group)
    return lines


def _group_lines(group: dict[str, Any]) -> list[str]:
    """A group's ranks: where each runs and the memory MLX holds there."""
    lines = [f"group: {group['size']} processes over {group['backend']}, {group['parallel']} parallel"]
    rows = [
        [str(r["rank"]), r["host"], str(r["pid"]), format_bytes(r["memory_bytes"])] for r in group["ranks"]
    ]
    return lines + table(("RANK", "HOST", "PID", "MEMORY"), rows)


def _cache_line(model: dict[str, Any]) -> str:
    counts = model["cache_counts"]
    return (
        f"{model['name']}: prompt cache hits {counts['ram_hits']} in RAM, {counts['disk_hits']} on disk; "
        f"{format_bytes(counts['disk_read_bytes'])} read from disk, "
        f"{format_bytes(counts['disk_written_bytes'])} written"
    )


def loaded_line(model: dict[str, Any]) -> str:
    """A model's status once `POST /v1/admin/models/{name}/load` has loaded it."""
    return f"{model['name']} is loaded ({format_bytes(model['weight_bytes'])} of weights)"


def unloaded_line(reply: dict[str, Any]) -> str:
    """`POST /v1/admin/models/{name}/unload`'s reply."""
    if not reply["freed_bytes"]:
        return f"{reply['model']['name']} was not loaded"
    return f"unloaded {reply['model']['name']}: freed {format_bytes(reply['freed_bytes'])}"


def inventory_lines(
    configured: Sequence[ConfiguredModel], cache: Path, cached: Sequence[CachedModel]
) -> list[str]:
    """`mlxd models list`: the configured models (main first), then the MLX models in the cache."""
    if configured:
        rows = [
            [
                model.name,
                model.role,
                format_bytes(model.weight_bytes) if model.weight_bytes is not None else "not downloaded",
                ", ".join(model.aliases),
                model.source,
            ]
            for model in configured
        ]
        lines = ["Configured:", *table(["NAME", "ROLE", "SIZE", "ALIASES", "SOURCE"], rows)]
    else:
        lines = ['Configured: none (the daemon serves its demo model; see the README, "Models")']
    lines += ["", f"In the Hugging Face cache ({cache}):"]
    if not cached:
        return [*lines, "nothing yet; download with `mlxd models pull REPO`"]
    names = {model.source: model.name for model in configured}
    cached_rows = [
        [
            m.repo_id,
            format_bytes(m.size_bytes),
            m.last_modified.strftime("%Y-%m-%d"),
            names.get(m.repo_id, ""),
        ]
        for m in cached
    ]
    return [*lines, *table(["REPO", "SIZE", "MODIFIED", "CONFIGURED AS"], cached_rows)]


def facts_lines(facts: ModelFacts) -> list[str]:
    """`mlxd models info`: one labelled line per fact."""
    labelled = [
        ("model", facts.source),
        ("path", str(facts.path)),
        ("architecture", facts.architecture),
        ("quantization", facts.quantization),
        ("context", f"{facts.context_length} tokens"),
        ("size", format_bytes(facts.weight_bytes)),
        ("KV cache", _kv_line(facts.kv_bytes_per_token)),
        ("images", _images_line(facts)),
        ("tool calls", f"yes ({facts.tool_parser} format)" if facts.tool_parser else "no"),
        ("thinking", f"yes ({' … '.join(facts.thinking)})" if facts.thinking else "no"),
        ("chat template", "yes" if facts.chat_template else "no (prompts are plain transcripts)"),
    ]
    return [f"{label + ':':<15}{value}" for label, value in labelled]


def _images_line(facts: ModelFacts) -> str:
    if facts.vision:
        return f"yes (vision tower run by mlx-vlm's {facts.vision})"
    return "no: mlx-vlm does not run its vision tower" if facts.vision_tower else "no"


def _kv_line(per_token: tuple[int, int, int] | None) -> str:
    if per_token is None:
        return "unknown (the config does not state the attention's shape)"
    full, eight, four = per_token
    return (
        f"{format_bytes(full)} per token (kv_bits 8: {format_bytes(eight)}, 4: {format_bytes(four)}); "
        f"100k tokens take {format_bytes(full * 100_000)}"
    )


def _loaded_size(model: dict[str, Any], key: str) -> str:
    return format_bytes(model[key]) if model["state"] == "loaded" else "-"


def _unloads(model: dict[str, Any]) -> str:
    if model["pinned"]:
        return "never (pinned)"
    return f"after {duration(model['ttl'])} idle" if model["ttl"] else "never"
