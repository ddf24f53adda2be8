"""The daemon's administration, behind the token like every route but health: what is loaded
(`GET /v1/admin/ps`), the requests running and recent (`GET /v1/admin/requests`, for the status page), and
loading or unloading a model by name (`POST /v1/admin/models/{name}/load` and
`/unload`). `mlxd ps` and `mlxd models load|unload` call these."""

from __future__ import annotations

import asyncio
from dataclasses import asdict

from quart import Blueprint, current_app

from daemon.api.serving import load_failure, not_found
from daemon.chat.errors import RequestError
from daemon.engine.memory import NoRoom, active_memory
from daemon.engine.registry import ModelRegistry
from daemon.engine.served import ModelLoadError, ServedModel

blueprint = Blueprint("admin", __name__)


@blueprint.route("/v1/admin/ps", methods=["GET"])
async def ps() -> dict:
    registry = _registry()
    models = await asyncio.to_thread(lambda: [asdict(registry.status(served)) for served in registry])
    return {
        "models": models,
        "memory_budget_bytes": registry.memory_budget,
        "weight_bytes": sum(model["weight_bytes"] for model in models),
        "kv_bytes": sum(served.engine.kv_bytes for served in registry),
        "active_memory_bytes": active_memory(),
        "group": group.describe() if (group := registry.options.group) is not None else None,
    }


@blueprint.route("/v1/admin/requests", methods=["GET"])
async def requests() -> dict:
    """The requests running now, by model, with each model's queue, and the recent ones, newest first."""
    registry = _registry()
    live = [{"model": served.name, **figures} for served in registry for figures in served.engine.live()]
    return {
        "live": live,
        "queued": {served.name: served.engine.queued for served in registry},
        "recent": current_app.config["MLXD_ACTIVITY"].recent(),
    }


@blueprint.route("/v1/admin/models/<model_id:name>/load", methods=["POST"])
async def load(name: str) -> dict:
    """Load the model now (making room as a request would), and answer once it is ready."""
    served = _resolve(name)
    try:
        await asyncio.wrap_future(served.engine.load())
    except (ModelLoadError, NoRoom) as error:
        raise load_failure(error) from None
    return {"model": await _status(served)}


@blueprint.route("/v1/admin/models/<model_id:name>/unload", methods=["POST"])
async def unload(name: str) -> dict:
    """Unload the model now, unless a request is using it."""
    served = _resolve(name)
    if (group := _registry().options.group) is not None:
        raise RequestError(
            409, f"model {served.name} is split across a group of {group.size} processes: it stays loaded"
        )
    freed = await asyncio.wrap_future(_registry().unload(served))
    if served.engine.resident:
        in_flight = served.engine.active_sequences + served.engine.queued
        raise RequestError(409, f"model {served.name} is in use ({in_flight} requests); unload it when idle")
    return {"model": await _status(served), "freed_bytes": freed}


def _resolve(name: str) -> ServedModel:
    served = _registry().resolve(name)
    if served is None:
        raise not_found(name)
    return served


async def _status(served: ServedModel) -> dict:
    return asdict(await asyncio.to_thread(_registry().status, served))


def _registry() -> ModelRegistry:
    return current_app.config["MLXD_REGISTRY"]
