"""Model names over HTTP: `GET /v1/models` and `GET /v1/models/{id}` (every model, alias and Claude tier id,
and whether its model is loaded), in one body that both SDKs read: Anthropic's list format with its paging,
and OpenAI's `object` / `created` / `owned_by` fields beside."""

from __future__ import annotations

import asyncio
import reprlib
from datetime import UTC, datetime

from quart import Blueprint, current_app, request
from werkzeug.routing import PathConverter

from daemon.api.serving import not_found
from daemon.chat.errors import invalid_request
from daemon.engine.names import TIER_IDS
from daemon.engine.registry import ModelRegistry
from daemon.engine.served import ServedModel
from daemon.store.files import local_path, stated_kv_bytes_per_token

blueprint = Blueprint("models", __name__)

_STARTED = datetime.now(UTC).replace(microsecond=0)
# Anthropic's SDK always sends its version header and pages by 20; a client without it (OpenAI's SDK, curl)
# gets the whole list, as OpenAI's API gives it.
ANTHROPIC_PAGE = "20"
WHOLE_LIST = "1000"


def describe(model_id: str, served: ServedModel) -> dict:
    """One entry of the list: Anthropic's fields and OpenAI's, plus the model it means, whether that is
    loaded, and its context length and KV bytes per token when known."""
    entry = {
        "id": model_id,
        "type": "model",
        "display_name": model_id if model_id == served.name else f"{model_id} → {served.name}",
        "created_at": _STARTED.isoformat().replace("+00:00", "Z"),
        "object": "model",
        "created": int(_STARTED.timestamp()),
        "owned_by": "mlxd",
        "model": served.name,
        "loaded": served.engine.resident,
        "images": served.takes_images(),  # else an image becomes a note (see text_model_images)
    }
    if (context := served.context_length()) is not None:
        entry["context_length"] = context
    spec = served.spec
    path = local_path(spec.source)
    if path and (per_token := stated_kv_bytes_per_token(path, *spec.kv)):
        entry["kv_bytes_per_token"] = per_token  # at the model's `kv_bits`
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
    default = ANTHROPIC_PAGE if "anthropic-version" in request.headers else WHOLE_LIST
    limit = _limit(request.args.get("limit", default))
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
        "object": "list",
        "data": page,
        "has_more": len(models) > len(page),
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
    }


@blueprint.route("/v1/models/<model_id:model_id>", methods=["GET"])
async def get_model(model_id: str) -> dict:
    served = _registry().resolve(model_id)
    if served is None:
        raise not_found(model_id)
    return await asyncio.to_thread(describe, model_id, served)


class ModelIdConverter(PathConverter):
    """A model id in a path: like `path` (slashes allowed, as in a repo id), and it may also begin with a
    slash (a folder's path, sent as `/v1/models//models/m`), which `path` never takes."""

    regex = ".+?"
    part_isolating = False  # werkzeug infers True for a regex without a slash in it


def _registry() -> ModelRegistry:
    return current_app.config["MLXD_REGISTRY"]


def _limit(value: str) -> int:
    # ASCII digits only, and few: `str.isdigit` also passes "²", which `int` refuses, and `int` refuses a
    # string of more than 4300 digits.
    if not (value.isascii() and value.isdigit() and len(value) <= 4 and 1 <= int(value) <= 1000):
        raise invalid_request(f"limit: must be an integer from 1 to 1000, got {reprlib.repr(value)}")
    return int(value)
