"""Model names over HTTP: `GET /v1/models` and `GET /v1/models/{id}` in Anthropic's list format with its
paging (every model, alias and Claude tier id, and whether its model is loaded), and how a request's model
name becomes the model that serves it."""

from __future__ import annotations

import asyncio
import reprlib
from datetime import UTC, datetime

from quart import Blueprint, current_app, request

from daemon.anthropic.errors import ApiError, invalid_request
from daemon.engine.memory import NoRoom
from daemon.engine.names import TIER_IDS
from daemon.engine.registry import ModelLoadError, ModelRegistry, ServedModel

blueprint = Blueprint("models", __name__)

_STARTED = datetime.now(UTC).isoformat().replace("+00:00", "Z")


async def served_model(requested: str, *, to_generate: bool = False) -> ServedModel:
    """The model a request names, with its tokenizer ready. For a generation, also checked to fit in the
    memory budget, so that a model too big is refused before any response begins."""
    registry = _registry()
    served = registry.resolve(requested)
    if served is None:
        raise not_found(requested)
    try:
        await asyncio.wrap_future(served.prepare())
        if to_generate:
            await asyncio.to_thread(registry.check_room, served)
    except ModelLoadError as error:
        raise ApiError(500, str(error), should_retry=False) from None
    except NoRoom as error:
        raise ApiError(529, str(error), should_retry=error.retry) from None
    return served


def not_found(requested: str) -> ApiError:
    registry = _registry()
    patterns = ", ".join(rule.pattern for rule in registry.names.rules)
    return ApiError(
        404,
        f"model: {requested} (available: {', '.join(registry.names.available())}; "
        f"and names matching {patterns})",
        should_retry=False,
    )


def describe(model_id: str, served: ServedModel) -> dict:
    """One entry of the list: Anthropic's fields, plus the model it means, whether that is loaded, and its
    context length when known."""
    entry = {
        "id": model_id,
        "type": "model",
        "display_name": model_id if model_id == served.name else f"{model_id} → {served.name}",
        "created_at": _STARTED,
        "model": served.name,
        "loaded": served.engine.resident,
    }
    if (context := served.context_length()) is not None:
        entry["context_length"] = context
    return entry


def listing(registry: ModelRegistry) -> list[dict]:
    """The main model first, then the others, their aliases, and Claude Code's tier ids."""
    entries = [describe(served.name, served) for served in registry]
    entries += [describe(alias, registry.resolve(name)) for alias, name in registry.names.aliases().items()]
    listed = {entry["id"] for entry in entries}
    for tier in TIER_IDS:
        if tier not in listed and (served := registry.resolve(tier)) is not None:
            entries.append(describe(tier, served))
    return entries


@blueprint.route("/v1/models", methods=["GET"])
async def list_models() -> dict:
    limit = _limit(request.args.get("limit", "20"))
    models = await asyncio.to_thread(listing, _registry())  # context lengths may be read from disk
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
    served = _registry().resolve(model_id)
    if served is None:
        raise not_found(model_id)
    return await asyncio.to_thread(describe, model_id, served)


def _registry() -> ModelRegistry:
    return current_app.config["MLXD_REGISTRY"]


def _limit(value: str) -> int:
    # ASCII digits only, and few: `str.isdigit` also passes "²", which `int` refuses, and `int` refuses a
    # string of more than 4300 digits.
    if not (value.isascii() and value.isdigit() and len(value) <= 4 and 1 <= int(value) <= 1000):
        raise invalid_request(f"limit: must be an integer from 1 to 1000, got {reprlib.repr(value)}")
    return int(value)
