"""`POST /v1/messages` (streamed or not) and `POST /v1/messages/count_tokens`: Anthropic's face."""

from __future__ import annotations

from collections.abc import AsyncIterator

from quart import Blueprint, Response, current_app, request

from daemon.anthropic.requests import CountTokensRequest, MessagesRequest, parse
from daemon.anthropic.stream import MessageStream, assemble, encode_sse
from daemon.anthropic.translate import cache_requested, to_chat
from daemon.api import serving
from daemon.api.image_urls import inline_anthropic
from daemon.chat.events import GenerationEvent, Started, Usage
from daemon.chat.request import ChatRequest

blueprint = Blueprint("messages", __name__)


@blueprint.route("/v1/messages/count_tokens", methods=["POST"])
async def count_tokens() -> dict:
    body = parse(CountTokensRequest, await _body(), current_app.config["MLXD_IMAGE_LIMITS"])
    return {"input_tokens": await serving.count_tokens(_chat(body))}


@blueprint.route("/v1/messages", methods=["POST"])
async def create_message() -> Response | dict:
    body = parse(MessagesRequest, await _body(), current_app.config["MLXD_IMAGE_LIMITS"])
    generation = await serving.start(_chat(body))
    omit = body.thinking is not None and body.thinking.display == "omitted"
    stream = MessageStream(body.model, omit_thinking=omit, cache_fields=cache_requested(body))
    if not body.stream:
        return assemble(frame for event in await generation.until_end() for frame in stream.events(event))
    # `message_start` carries the prompt's cache split, known once the engine admits the prompt (normally
    # within a step).
    first = await generation.first(within=generation.ping_interval)
    return Response(
        _sse(stream, generation, first), mimetype="text/event-stream", headers=serving.SSE_HEADERS
    )


async def _sse(
    stream: MessageStream, generation: serving.Generation, first: GenerationEvent | None
) -> AsyncIterator[bytes]:
    if not isinstance(first, Started):  # slow admission (a model loading) or none: the prompt's length alone
        yield encode_sse(stream.message_start(Usage(len(generation.prompt.tokens))))
    async for frames in generation.sse(stream, first):
        yield frames


async def _body() -> bytes:
    """The request body, its URL images fetched when `image_urls = "fetch"`."""
    return await inline_anthropic(await request.get_data(), current_app.config["MLXD_IMAGE_FETCHING"])


def _chat(body: CountTokensRequest) -> ChatRequest:
    return to_chat(body, strip_billing_header=current_app.config["MLXD_STRIP_BILLING_HEADER"])
