"""Asking the running daemon about its models over its authenticated admin routes, for `mlxd ps` and
`mlxd models load|unload`: each call returns the daemon's JSON reply as it came."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from daemon.client.http import DaemonClient, DaemonUnreachable

# Loading may include downloading the weights.
LOAD_TIMEOUT = 3600.0


class AdminError(Exception):
    """The daemon could not be asked, or refused, with its reason."""


def ps(client: DaemonClient) -> dict[str, Any]:
    """`GET /v1/admin/ps`: each model's status (`ModelStatus`), then the memory in use against the budget."""
    return _call(client, "GET", "/v1/admin/ps")


def load(client: DaemonClient, name: str) -> dict[str, Any]:
    """Load the model a name means, waiting until it is ready; its status once loaded."""
    return _call(client, "POST", f"/v1/admin/models/{quote(name, safe='/')}/load")["model"]


def unload(client: DaemonClient, name: str) -> dict[str, Any]:
    """Unload the model a name means: its status (`model`) and the bytes of weights freed (`freed_bytes`,
    0 when it was not loaded)."""
    return _call(client, "POST", f"/v1/admin/models/{quote(name, safe='/')}/unload")


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
