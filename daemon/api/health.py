"""Liveness without a token: `/health`, and the `HEAD` probes Claude Code sends."""

from __future__ import annotations

import time

from quart import Blueprint, Response, current_app

from daemon import __version__

blueprint = Blueprint("health", __name__)


@blueprint.route("/health", methods=["GET"])
async def health() -> dict:
    registry = current_app.config["MLXD_REGISTRY"]
    return {
        "status": "ok",
        "version": __version__,
        "uptime_seconds": round(time.monotonic() - current_app.config["MLXD_STARTED"], 1),
        "models": [
            {
                "id": served.name,
                "loaded": True,
                "context_length": served.loaded.context_length,
                "active_sequences": served.engine.active_sequences,
            }
            for served in registry
        ],
    }


@blueprint.route("/", methods=["HEAD"])
@blueprint.route("/api/hello", methods=["HEAD"])
async def probe() -> Response:
    return Response(status=200)
