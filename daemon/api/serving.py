"""The one serving path every API shares: from a chat request to the engine and back. It resolves the model,
renders and checks the prompt, fills in sampling defaults, submits the generation, bridges its events from
the engine thread to asyncio, cancels it when the client goes away, and logs the request's one line.

Routes stay thin: parse with their wire package, call `count_tokens` or `start`, encode what comes back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

from quart import after_this_request, current_app, g

from daemon.api.bridge import EngineEvents, RequestLog
from daemon.chat.errors import RequestError, invalid_request
from daemon.chat.events import Failed, Finished, GenerationEvent, Started
from daemon.chat.request import ChatRequest
from daemon.engine.grammar import GrammarError
from daemon.engine.jobs import GenerationJob, Overloaded
from daemon.engine.memory import NoRoom
from daemon.engine.model import least_tokens
from daemon.engine.prompt import Prompt
from daemon.engine.registry import ModelRegistry
from daemon.engine.sampling import resolve
from daemon.engine.served import ModelLoadError, ServedModel

log = logging.getLogger(__name__)

# No cache or proxy may hold a stream back.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class StreamEncoder(Protocol):
    """How one API writes a generation's events as its server-sent events."""

    ping: bytes  # sent in any silence longer than the ping interval

    def sse(self, event: GenerationEvent) -> bytes: ...


async def count_tokens(chat: ChatRequest) -> int:
    """The prompt's length in tokens, as the model will see it."""
    served = await served_model(chat.model)
    return len((await _render(served, chat)).tokens)


async def start(chat: ChatRequest) -> Generation:
    """Submit the generation `chat` asks for; raises `RequestError` when it cannot start."""
    served = await served_model(chat.model, to_generate=True)
    images = _images_omitted(served, chat)
    context = served.loaded.context_length
    prompt = await _render(served, chat, context=context)
    if len(prompt.tokens) > context:
        raise invalid_request(f"prompt is too long: {len(prompt.tokens)} tokens > {context} maximum")
    room = context - len(prompt.tokens)
    events = EngineEvents(asyncio.get_running_loop(), current_app.config["MLXD_STREAM_BUFFER_EVENTS"])
    job = GenerationJob(
        prompt=prompt,
        max_tokens=room if chat.max_tokens is None else min(chat.max_tokens, room),
        sampling=resolve(chat.sampling.given(), served.loaded.sampling_defaults),
        stop_sequences=list(chat.stop),
        emit=events.emit,
        label=g.request_id,
        parts=served.parts(chat),
        request=chat,
    )
    events.job = job
    try:
        served.engine.submit(job)
    except Overloaded as error:
        raise RequestError(529, f"overloaded: {error}; retry shortly") from None
    # The task that runs this request also sends its response, and is cancelled when the client goes
    # away, at whatever point: once it ends, the engine frees the slot at its next step.
    asyncio.current_task().add_done_callback(lambda _: job.cancel())
    metrics, activity = current_app.config["MLXD_METRICS"], current_app.config["MLXD_ACTIVITY"]
    record = RequestLog(g.request_id, served.name, prompt, metrics, images, activity)
    return Generation(prompt, events, record, current_app.config["MLXD_PING_INTERVAL"])


class Generation:
    """A submitted generation, seen from the task that answers its request."""

    def __init__(self, prompt: Prompt, events: EngineEvents, record: RequestLog, ping_interval: float):
        self.prompt = prompt
        self.ping_interval = ping_interval
        self._events = events
        self._record = record

    async def next(self) -> GenerationEvent:
        """The next event; a terminal one (`Finished`, `Failed`) is also logged."""
        return self._logged(await self._events.get())

    def ready(self) -> list[GenerationEvent]:
        """The events that arrived already, without waiting, each logged as `next` logs it."""
        return [self._logged(event) for event in self._events.ready()]

    def _logged(self, event: GenerationEvent) -> GenerationEvent:
        if isinstance(event, Started):
            self._record.started(event)
        elif isinstance(event, Finished):
            self._record.finished(event)
        elif isinstance(event, Failed):
            self._record.failed(event)
        return event

    async def first(self, within: float) -> GenerationEvent | None:
        """The first event if it comes within `within` seconds (`Started` once the engine admits the prompt,
        normally within a step, or `Failed`), else None."""
        try:
            async with asyncio.timeout(within):
                return await self.next()
        except TimeoutError:
            return None

    async def until_end(self) -> list[GenerationEvent]:
        """Every event to the last, for an answer sent whole; a failure raises."""
        events = []
        while not isinstance(event := await self.next(), Finished):
            if isinstance(event, Failed):
                raise failure(event)
            events.append(event)
        return [*events, event]

    async def sse(self, encoder: StreamEncoder, first: GenerationEvent | None = None) -> AsyncIterator[bytes]:
        """The SSE body from `first` (already taken) on, with pings in any silence. Whatever fails in here,
        the stream ends with the API's error event, never a cut connection. Runs outside the app's context,
        as a response body does."""
        pending = [first] if first is not None else []
        while True:
            if not pending:
                try:
                    # Per token: `asyncio.timeout` waits in this task, where `wait_for` makes a task per call.
                    async with asyncio.timeout(self.ping_interval):
                        pending = [await self.next()]
                except TimeoutError:
                    yield encoder.ping
                    continue
            # What arrived meanwhile goes out in the same write: an engine step posts several events.
            events, pending = [*pending, *self.ready()], []
            frames = []
            for event in events:
                try:
                    frames.append(encoder.sse(event))
                except Exception:
                    log.exception(
                        "could not encode a stream event", extra={"request_id": self._record.request_id}
                    )
                    failed = Failed("the response could not be encoded; see the server log")
                    self._record.failed(failed)
                    yield b"".join([*frames, encoder.sse(failed)])
                    return
                if isinstance(event, Finished | Failed):
                    yield b"".join(frames)
                    return
            yield b"".join(frames)


def _images_omitted(served: ServedModel, chat: ChatRequest) -> int:
    """The images of a request to a model that cannot see them: each is replaced by a note the model reads,
    and the response says so in a header; with `text_model_images = "refuse"`, the request is a 400 that
    names the models here that do see images."""
    if served.loaded.vision is not None or not (images := chat.images()):
        return 0
    if current_app.config["MLXD_TEXT_MODEL_IMAGES"] == "refuse":
        seeing = [other.name for other in _registry() if other.takes_images()]
        raise invalid_request(
            f'model {served.name} cannot see images, and text_model_images is "refuse": the request holds '
            f"{images} images; "
            + (
                f"models served here that take images: {', '.join(seeing)}"
                if seeing
                else "no model served here takes images"
            )
        )

    @after_this_request
    def warn(response: Any) -> Any:
        response.headers["mlxd-warning"] = f"{images} images omitted: model {served.name} cannot see images"
        return response

    return images


def _refuse_surely_too_long(chat: ChatRequest, served: ServedModel, context: int) -> None:
    """A prompt whose text alone needs more tokens than the context holds is refused before it is rendered
    and tokenized, which for a body near the size limit would cost a core half a minute."""
    if (least := least_tokens(served.loaded, chat.kept_texts())) > context:
        raise invalid_request(
            f"prompt is too long: {least} tokens > {context} maximum (at least {least}: counted from the "
            "size of its text, without tokenizing it)"
        )


async def _render(served: ServedModel, chat: ChatRequest, context: int | None = None) -> Prompt:
    """The prompt, rendered off the event loop; a schema no grammar can enforce is the client's error. With
    `context`, a prompt surely longer than that is refused first."""

    def render() -> Prompt:
        if context is not None:
            _refuse_surely_too_long(chat, served, context)
        return served.render(chat)

    try:
        return await asyncio.to_thread(render)
    except GrammarError as error:
        raise invalid_request(str(error)) from None


def failure(event: Failed) -> RequestError:
    """A generation's failure as the error of a response not begun yet."""
    return RequestError(529 if event.overloaded else 500, event.message, should_retry=event.retry)


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
    except (ModelLoadError, NoRoom) as error:
        raise load_failure(error) from None
    return served


def load_failure(error: ModelLoadError | NoRoom) -> RequestError:
    """A model that cannot load (500, no retry) or has no room in the memory budget (529, retry when models
    in use may go idle)."""
    if isinstance(error, NoRoom):
        return RequestError(529, str(error), should_retry=error.retry)
    return RequestError(500, str(error), should_retry=False)


def not_found(requested: str) -> RequestError:
    registry = _registry()
    patterns = ", ".join(rule.pattern for rule in registry.names.rules)
    return RequestError(
        404,
        f"model: {requested} (available: {', '.join(registry.names.available())}; "
        f"and names matching {patterns})",
        should_retry=False,
        param="model",
    )


def _registry() -> ModelRegistry:
    return current_app.config["MLXD_REGISTRY"]
