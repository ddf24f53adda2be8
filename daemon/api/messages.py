"""`POST /v1/messages` (streamed or not) and `POST /v1/messages/count_tokens`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TypeVar

from pydantic import ValidationError
from quart import Blueprint, Response, current_app, g, request

from daemon.anthropic.errors import ApiError, from_validation_error, invalid_request
from daemon.anthropic.requests import CountTokensRequest, MessagesRequest, check_containers, ignored_fields
from daemon.anthropic.stream import PING, MessageStream, assemble, encode_sse
from daemon.api.metrics import Metrics
from daemon.api.models import served_model
from daemon.chat.events import Failed, Finished, GenerationEvent, Usage
from daemon.engine.prompt import Prompt
from daemon.engine.runner import GenerationJob, Overloaded
from daemon.engine.sampling import resolve

log = logging.getLogger(__name__)
blueprint = Blueprint("messages", __name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@blueprint.route("/v1/messages/count_tokens", methods=["POST"])
async def count_tokens() -> dict:
    body = await _parse(CountTokensRequest)
    served = await served_model(body.model)
    prompt = await asyncio.to_thread(served.render, body)
    return {"input_tokens": len(prompt.tokens)}


@blueprint.route("/v1/messages", methods=["POST"])
async def create_message() -> Response | dict:
    body = await _parse(MessagesRequest)
    served = await served_model(body.model, to_generate=True)
    prompt = await asyncio.to_thread(served.render, body)
    context = served.loaded.context_length
    if len(prompt.tokens) > context:
        raise invalid_request(f"prompt is too long: {len(prompt.tokens)} tokens > {context} maximum")

    events = EngineEvents(asyncio.get_running_loop(), current_app.config["MLXD_STREAM_BUFFER_EVENTS"])
    job = GenerationJob(
        prompt=prompt,
        max_tokens=min(body.max_tokens, context - len(prompt.tokens)),
        sampling=resolve(
            {"temperature": body.temperature, "top_p": body.top_p, "top_k": body.top_k},
            served.loaded.sampling_defaults,
        ),
        stop_sequences=body.stop_sequences,
        emit=events.emit,
        label=g.request_id,
        parts=served.parts(body),
    )
    events.job = job
    omit = body.thinking is not None and body.thinking.display == "omitted"
    stream = MessageStream(body.model, omit_thinking=omit)
    try:
        served.engine.submit(job)
    except Overloaded as error:
        raise ApiError(529, f"overloaded: {error}; retry shortly") from None
    # The task that runs this request also sends its response, and is cancelled when the client goes
    # away, at whatever point: once it ends, the engine frees the slot at its next step.
    asyncio.current_task().add_done_callback(lambda _: job.cancel())
    record = _RequestLog(g.request_id, served.name, prompt, current_app.config["MLXD_METRICS"])
    if body.stream:
        interval = current_app.config["MLXD_PING_INTERVAL"]
        return Response(
            _sse(stream, prompt, events, interval, record), mimetype="text/event-stream", headers=SSE_HEADERS
        )
    frames = [stream.message_start(_usage_at_start(prompt))]
    while True:
        event = await events.get()
        if isinstance(event, Failed):
            record.failed(event)
            raise ApiError(529 if event.overloaded else 500, event.message, should_retry=event.retry)
        frames += stream.events(event)
        if isinstance(event, Finished):
            record.finished(event)
            return assemble(frames)


class EngineEvents:
    """A request's events, from the engine thread to the task that answers it. At most `limit` wait
    undelivered: past that the client has stopped reading its stream, so the generation is cancelled (its
    sequence freed) and the stream ends with an error whenever the client reads again."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int):
        self.job: GenerationJob | None = None
        self._loop = loop
        self._queue: asyncio.Queue[GenerationEvent] = asyncio.Queue()
        self._limit = limit
        # Each counter has one writer (sent: the engine thread; taken: the event loop), so no lock.
        self._sent = 0
        self._taken = 0
        self._cut = False

    def emit(self, event: GenerationEvent) -> None:
        """On the engine thread."""
        if self._cut:
            return
        if self._sent - self._taken >= self._limit:
            self._cut = True
            if self.job is not None:
                self.job.cancel()
            event = Failed(f"stream cut: the client left {self._limit} events unread", overloaded=False)
        self._sent += 1
        self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    async def get(self) -> GenerationEvent:
        event = await self._queue.get()
        self._taken += 1
        return event


async def _sse(
    stream: MessageStream,
    prompt: Prompt,
    events: EngineEvents,
    interval: float,
    record: _RequestLog,
) -> AsyncIterator[bytes]:
    """The SSE body: `message_start` at once, then the generation's events, with pings in any silence.
    Whatever fails in here, the stream ends with an `error` event, never a cut connection."""
    yield encode_sse(stream.message_start(_usage_at_start(prompt)))
    while True:
        try:
            # Per token: `asyncio.timeout` waits in this task, where `wait_for` (3.11) makes a task per call.
            async with asyncio.timeout(interval):
                event = await events.get()
        except TimeoutError:
            yield PING
            continue
        try:
            frames = b"".join(encode_sse(frame) for frame in stream.events(event))
        except Exception:
            log.exception("could not encode a stream event", extra={"request_id": record.request_id})
            failed = Failed("the response could not be encoded; see the server log")
            record.failed(failed)
            yield encode_sse(stream.events(failed)[0])
            return
        yield frames
        if isinstance(event, Finished):
            record.finished(event)
            return
        if isinstance(event, Failed):
            record.failed(event)
            return


def _usage_at_start(prompt: Prompt) -> Usage:
    return Usage(input_tokens=len(prompt.tokens))


Body = TypeVar("Body", bound=CountTokensRequest)


async def _parse(model: type[Body]) -> Body:
    data = await request.get_data()
    check_containers(data)
    try:
        body = model.model_validate_json(data)
    except ValidationError as error:
        raise from_validation_error(error) from None
    if ignored := ignored_fields(body):
        log.debug("ignoring fields not implemented: %s", ", ".join(ignored))
    return body


class _RequestLog:
    """The one INFO line per request: id, model, token counts, first-token latency, speed, stop reason."""

    def __init__(self, request_id: str, model: str, prompt: Prompt, metrics: Metrics):
        self.request_id = request_id
        self.model = model
        self.metrics = metrics
        self.prompt_tokens = len(prompt.tokens)
        self.started = time.perf_counter()
        # Lines logged from a stream's body name the request whatever context the body runs in.
        self._names = {"request_id": request_id}

    def finished(self, event: Finished) -> None:
        self.metrics.generation(self.model, event)
        rate = (event.usage.output_tokens - 1) / event.decode_seconds if event.decode_seconds > 0 else 0.0
        ttft = f"{event.time_to_first_token:.3f}s" if event.time_to_first_token is not None else "-"
        log.info(
            "model=%s prompt=%d cached=%d output=%d ttft=%s tok/s=%.1f stop=%s",
            self.model,
            self.prompt_tokens,
            event.usage.cache_read_input_tokens,
            event.usage.output_tokens,
            ttft,
            rate,
            event.stop_reason,
            extra=self._names,
        )

    def failed(self, event: Failed) -> None:
        log.warning(
            "model=%s prompt=%d failed: %s", self.model, self.prompt_tokens, event.message, extra=self._names
        )
