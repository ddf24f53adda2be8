"""Asking the running daemon about its models over its authenticated admin routes: `mlxd ps` and
`mlxd models load|unload`."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from daemon.cli.format import duration, table
from daemon.client.http import DaemonClient, DaemonUnreachable
from daemon.config.units import format_bytes

# Loading may include downloading the weights.
LOAD_TIMEOUT = 3600.0


class AdminError(Exception):
    """The daemon could not be asked, or refused, with its reason."""


def ps_lines(client: DaemonClient) -> list[str]:
    """What the daemon has loaded: one row per model, then the memory in use against the budget."""
    reply = _call(client, "GET", "/v1/admin/ps")
    rows = [
        [
            model["name"],
            model["state"],
            _size(model, "weight_bytes"),
            _size(model, "cache_bytes"),
            duration(model["idle_seconds"]) if model["idle_seconds"] is not None else "-",
            str(model["active_sequences"] + model["queued"]),
            _unloads(model),
        ]
        for model in reply["models"]
    ]
    lines = table(["MODEL", "STATE", "WEIGHTS", "KV CACHE", "IDLE", "REQUESTS", "UNLOADS"], rows)
    budget = reply["memory_budget_bytes"]
    lines.append(
        f"weights loaded: {format_bytes(reply['weight_bytes'])} of "
        f"{format_bytes(budget) + ' budget' if budget else 'an unlimited budget'}; "
        f"MLX holds {format_bytes(reply['active_memory_bytes'])} in all"
    )
    lines += [f"{m['name']}: last load failed: {m['last_error']}" for m in reply["models"] if m["last_error"]]
    return lines


def load(client: DaemonClient, name: str) -> str:
    model = _call(client, "POST", f"/v1/admin/models/{quote(name, safe='/')}/load")["model"]
    return f"{model['name']} is loaded ({format_bytes(model['weight_bytes'])} of weights)"


def unload(client: DaemonClient, name: str) -> str:
    reply = _call(client, "POST", f"/v1/admin/models/{quote(name, safe='/')}/unload")
    if not reply["freed_bytes"]:
        return f"{reply['model']['name']} was not loaded"
    return f"unloaded {reply['model']['name']}: freed {format_bytes(reply['freed_bytes'])}"


def _call(client: DaemonClient, method: str, path: str) -> dict[str, Any]:
    try:
        reply = client.request(method, path)
    except DaemonUnreachable as error:
        raise AdminError(str(error)) from None
    if reply.status == 401:
        raise AdminError(f"the daemon refused the token ({reply.error_message()}); see `mlxd token show`")
    if reply.status != 200:
        raise AdminError(f"{reply.error_message()} (HTTP {reply.status})")
    return reply.json()


def _size(model: dict[str, Any], key: str) -> str:
    return format_bytes(model[key]) if model["state"] == "loaded" else "-"


def _unloads(model: dict[str, Any]) -> str:
    if model["pinned"]:
        return "never (pinned)"
    return f"after {duration(model['ttl'])} idle" if model["ttl"] else "never"
