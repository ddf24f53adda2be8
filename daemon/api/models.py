"""`GET /v1/models` and `GET /v1/models/{id}` in Anthropic's list format, with its paging."""

from __future__ import annotations

from quart import Blueprint, current_app, request

from daemon.engine.registry import ServedModel
from daemon.protocol.errors import ApiError, invalid_request

blueprint = Blueprint("models", __name__)


def describe(served: ServedModel) -> dict:
    return {
        "id": served.name,
        "type": "model",
        "display_name": served.name,
        "created_at": served.loaded_at.isoformat().replace("+00:00", "Z"),
    }


@blueprint.route("/v1/models", methods=["GET"])
async def list_models() -> dict:
    models = [describe(served) for served in current_app.config["MLXD_REGISTRY"]]
    limit = _limit(request.args.get("limit", "20"))
    ids = [m["id"] for m in models]
    after, before = request.args.get("after_id"), request.args.get("before_id")
    if after is not None:
        models = models[ids.index(after) + 1 :] if after in ids else []
        page = models[:limit]
    elif before is not None:
        models = models[: ids.index(before)] if before in ids else []
        page = models[-limit:]
    else:
        page = models[:limit]
    return {
        "data": page,
        "has_more": len(models) > len(page),
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
    }


@blueprint.route("/v1/models/<path:model_id>", methods=["GET"])
async def get_model(model_id: str) -> dict:
    served = current_app.config["MLXD_REGISTRY"].get(model_id)
    if served is None:
        raise ApiError(404, f"model: {model_id}")
    return describe(served)


def _limit(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 1000:
        raise invalid_request(f"limit: must be an integer from 1 to 1000, got {value!r}")
    return int(value)
