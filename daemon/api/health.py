"""Liveness without a token: `/health`, and the `HEAD` probes Claude Code sends."""

from __future__ import annotations

import asyncio
import time

from quart import Blueprint, Response, current_app

from daemon import __version__
from daemon.engine.registry import ModelRegistry

blueprint = Blueprint("health", __name__)


@blueprint.route("/health", methods=["GET"])
async def health() -> dict:
    registry: ModelRegistry = current_app.config["MLXD_REGISTRY"]
    return {
        "status": "ok",
        "version": __version__,
        "uptime_seconds": round(time.monotonic() - current_app.config["MLXD_STARTED"], 1),
        "models": await asyncio.to_thread(_models, registry),  # context lengths may be read from disk
        **({"group": group.describe()} if (group := registry.options.group) is not None else {}),
    }


def _models(registry: ModelRegistry) -> list[dict]:
    models = []
    for served in registry:
        entry = {
            "id": served.name,
            "loaded": served.engine.resident,
            "active_sequences": served.engine.active_sequences,
        }
        if (context := served.context_length()) is not None:
            entry["context_length"] = context
        models.append(entry)
    return models


@blueprint.route("/", methods=["HEAD"])
@blueprint.route("/api/hello", methods=["HEAD"])
async def probe() -> Response:
    return Response(status=200)
