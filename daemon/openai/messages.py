"""The messages of a Chat Completions request as pydantic models: system (and developer), user, assistant
and tool turns, with their text and image parts and the assistant's tool calls."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from daemon.chat.images import check_image, limits_of
from daemon.chat.limits import MAX_BLOCKS_PER_MESSAGE, MAX_VALUE_DEPTH
from daemon.chat.wire import WireModel
from daemon.openai.errors import FieldError

# `data:<media type>;base64,<data>`: the one kind of image URL a local daemon takes, since it fetches nothing.
DATA_URL = re.compile(r"data:(?P<media_type>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)", re.DOTALL)


class TextPart(WireModel):
    type: Literal["text"]
    text: StrictStr


class RefusalPart(WireModel):
    type: Literal["refusal"]
    refusal: StrictStr


def _data_url(url: str, info: ValidationInfo) -> str:
    match = DATA_URL.fullmatch(url)
    if match is None:
        scheme = url.split(":", 1)[0] if ":" in url else url[:20]
        raise ValueError(
            f"mlxd takes images only inline, as data:<media type>;base64,<data> URLs, and fetches nothing "
            f'unless image_urls = "fetch" (got a {scheme!r} URL)'
        )
    check_image(match["media_type"], match["data"], limits_of(info.context))
    return url


class ImageURL(WireModel):
    url: Annotated[StrictStr, AfterValidator(_data_url)]
    detail: Literal["auto", "low", "high", "original"] | None = None

    @property
    def media_type(self) -> str:
        return self.url.partition(";")[0].removeprefix("data:")

    @property
    def data(self) -> str:
        return self.url.partition(",")[2]


class ImagePart(WireModel):
    type: Literal["image_url"]
    image_url: ImageURL


def _parts(value: Any) -> Any:
    """A string as one text part; a list as it is."""
    if isinstance(value, str):
        return [{"type": "text", "text": value}]
    if not isinstance(value, list):
        raise ValueError("must be a string or a list of content parts")
    return value


def _parts_or_none(value: Any) -> Any:
    return None if value is None else _parts(value)


UserPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]
AssistantPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]
TextParts = Annotated[list[TextPart], BeforeValidator(_parts), Field(max_length=MAX_BLOCKS_PER_MESSAGE)]


class SystemMessage(WireModel):
    """A `system` or `developer` message (OpenAI's newer name for the same turn)."""

    role: Literal["system", "developer"]
    content: TextParts


class UserMessage(WireModel):
    role: Literal["user"]
    content: Annotated[list[UserPart], BeforeValidator(_parts), Field(max_length=MAX_BLOCKS_PER_MESSAGE)]


def _json_object(value: Any) -> Any:
    """A call's `arguments`, a string of JSON, as the object it holds."""
    if not isinstance(value, str):
        raise ValueError("must be a string holding a JSON object")
    try:
        arguments = json.loads(value, parse_constant=_no_constant)
    except json.JSONDecodeError as error:
        raise ValueError(f"is not valid JSON: {error}") from None
    except RecursionError:
        raise ValueError(f"nests more than {MAX_VALUE_DEPTH} levels deep (the limit for a value)") from None
    if not isinstance(arguments, dict):
        raise ValueError(f"must hold a JSON object, not {type(arguments).__name__}")
    return arguments


def _no_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not a JSON number", name, 0)


class FunctionCall(WireModel):
    name: StrictStr
    arguments: Annotated[dict[str, Any], BeforeValidator(_json_object)]


class ToolCall(WireModel):
    id: StrictStr
    type: Literal["function"]
    function: FunctionCall


class AssistantMessage(WireModel):
    role: Literal["assistant"]
    content: Annotated[
        Annotated[list[AssistantPart], Field(max_length=MAX_BLOCKS_PER_MESSAGE)] | None,
        BeforeValidator(_parts_or_none),
    ] = None
    tool_calls: list[ToolCall] = Field([], max_length=MAX_BLOCKS_PER_MESSAGE)
    reasoning_content: StrictStr | None = None

    @field_validator("tool_calls", mode="before")
    @classmethod
    def _no_calls(cls, value: Any) -> Any:
        return [] if value is None else value

    @model_validator(mode="after")
    def _says_something(self) -> AssistantMessage:
        if self.content is None and not self.tool_calls:
            raise FieldError("content", "required unless the message has tool_calls")
        return self


class ToolMessage(WireModel):
    role: Literal["tool"]
    content: TextParts
    tool_call_id: StrictStr


ChatMessage = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]
