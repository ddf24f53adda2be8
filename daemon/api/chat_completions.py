"""`POST /v1/chat/completions` (streamed or not): OpenAI's face on the same serving path."""

from __future__ import annotations

from quart import Blueprint, Response, current_app, request

from daemon.api import serving
from daemon.api.image_urls import inline_openai
from daemon.chat.events import Failed
from daemon.openai.requests import parse
from daemon.openai.stream import CompletionStream, assemble
from daemon.openai.translate import to_chat

blueprint = Blueprint("chat_completions", __name__)


@blueprint.route("/v1/chat/completions", methods=["POST"])
async def create_completion() -> Response | dict:
    data = await inline_openai(await request.get_data(), current_app.config["MLXD_IMAGE_FETCHING"])
    body = parse(data, current_app.config["MLXD_IMAGE_LIMITS"])
    generation = await serving.start(to_chat(body))
    if not body.stream:
        # The usage chunk is what the assembled completion takes its usage from.
        stream = CompletionStream(body.model, include_usage=True)
        return assemble(chunk for event in await generation.until_end() for chunk in stream.chunks(event))
    stream = CompletionStream(body.model, include_usage=body.include_usage)
    # A failure before the engine admits the prompt (normally within a step) is an error status, not a stream.
    first = await generation.first(within=generation.ping_interval)
    if isinstance(first, Failed):
        raise serving.failure(first)
    return Response(generation.sse(stream, first), mimetype="text/event-stream", headers=serving.SSE_HEADERS)
