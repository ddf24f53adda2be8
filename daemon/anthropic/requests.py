"""The Messages API request bodies as pydantic models: what a client may send, validated as the API does,
within the bounds of `daemon.chat.limits`.

Unknown fields are accepted everywhere (clients such as Claude Code send beta fields freely) and reported
through `ignored_fields` so the server can log them once at DEBUG.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from daemon.anthropic.errors import from_validation_error
from daemon.chat.images import ImageLimits, check_image, limits_of, validation_context
from daemon.chat.limits import (
    MAX_BLOCKS,
    MAX_BLOCKS_PER_MESSAGE,
    MAX_MESSAGES,
    MAX_STOP_SEQUENCE_CHARS,
    MAX_STOP_SEQUENCES,
    MAX_TOOL_DESCRIPTION_CHARS,
    MAX_TOOLS,
    MAX_TOP_K,
    TOOL_NAME_PATTERN,
    bounded_schema,
    check_containers,
)
from daemon.chat.wire import Path, WireModel, models, unknown_fields, value_problem

log = logging.getLogger(__name__)


class TextBlock(WireModel):
    type: Literal["text"]
    text: StrictStr


class Base64ImageSource(WireModel):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]  # as `MEDIA_TYPES`
    data: StrictStr

    @field_validator("data")
    @classmethod
    def _an_image(cls, data: str, info: ValidationInfo) -> str:
        if (media_type := info.data.get("media_type")) is not None:  # else its own error is raised
            check_image(media_type, data, limits_of(info.context))
        return data


class URLImageSource(WireModel):
    type: Literal["url"]
    url: StrictStr

    @field_validator("url")
    @classmethod
    def _not_fetched(cls, url: str) -> str:
        raise ValueError(
            "mlxd fetches no URLs (a local daemon that fetched what requests name would let any page that "
            'reaches it read the network): send the image as a base64 source, or set image_urls = "fetch"'
        )


class ImageBlock(WireModel):
    type: Literal["image"]
    source: Annotated[Base64ImageSource | URLImageSource, Field(discriminator="type")]


class DocumentBlock(WireModel):
    type: Literal["document"]
    source: dict[str, Any]
    title: str | None = None


class ToolReferenceBlock(WireModel):
    type: Literal["tool_reference"]
    tool_name: StrictStr


class SearchResultBlock(WireModel):
    type: Literal["search_result"]
    source: str = ""
    title: str = ""
    content: list[TextBlock] = []


ToolResultContent = Annotated[
    TextBlock | ImageBlock | DocumentBlock | ToolReferenceBlock | SearchResultBlock,
    Field(discriminator="type"),
]


class ToolUseBlock(WireModel):
    type: Literal["tool_use"]
    id: StrictStr
    name: StrictStr
    input: dict[str, Any]


class ToolResultBlock(WireModel):
    type: Literal["tool_result"]
    tool_use_id: StrictStr
    content: list[ToolResultContent] = Field([], max_length=MAX_BLOCKS_PER_MESSAGE)
    is_error: StrictBool = False

    @field_validator("content", mode="before")
    @classmethod
    def _string_is_one_text_block(cls, value: Any) -> Any:
        return [{"type": "text", "text": value}] if isinstance(value, str) else value


class ThinkingBlock(WireModel):
    type: Literal["thinking"]
    thinking: StrictStr
    signature: StrictStr = ""


class RedactedThinkingBlock(WireModel):
    type: Literal["redacted_thinking"]
    data: StrictStr


ContentBlock = Annotated[
    TextBlock
    | ImageBlock
    | DocumentBlock
    | ToolUseBlock
    | ToolResultBlock
    | ThinkingBlock
    | RedactedThinkingBlock
    | ToolReferenceBlock
    | SearchResultBlock,
    Field(discriminator="type"),
]


def _blocks(value: Any, what: str) -> Any:
    if isinstance(value, str):
        return [{"type": "text", "text": value}]
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a string or a list of content blocks")
    return value


class Message(WireModel):
    role: Literal["user", "assistant", "system"]
    content: list[ContentBlock] = Field(max_length=MAX_BLOCKS_PER_MESSAGE)

    @field_validator("content", mode="before")
    @classmethod
    def _normalise_content(cls, value: Any) -> Any:
        return _blocks(value, "content")


ToolName = Annotated[StrictStr, Field(pattern=TOOL_NAME_PATTERN)]


class Tool(WireModel):
    name: ToolName
    description: StrictStr | None = Field(None, max_length=MAX_TOOL_DESCRIPTION_CHARS)
    input_schema: Annotated[dict[str, Any], AfterValidator(bounded_schema)]


class ToolChoice(WireModel):
    type: Literal["auto", "any", "tool", "none"]
    name: ToolName | None = None
    disable_parallel_tool_use: StrictBool = False


class ThinkingConfig(WireModel):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: StrictInt | None = None
    display: Literal["summarized", "omitted"] | None = None

    @property
    def on(self) -> bool:
        return self.type != "disabled"


class CountTokensRequest(WireModel):
    """The body of `POST /v1/messages/count_tokens`: a messages request without generation settings."""

    model: StrictStr
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    system: list[TextBlock] = Field([], max_length=MAX_BLOCKS_PER_MESSAGE)
    tools: list[Tool] = Field([], max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None

    @field_validator("system", mode="before")
    @classmethod
    def _normalise_system(cls, value: Any) -> Any:
        return [] if value is None else _blocks(value, "system")

    @field_validator("tools", mode="before")
    @classmethod
    def _no_tools(cls, value: Any) -> Any:
        return [] if value is None else value

    @property
    def thinking_on(self) -> bool:
        return self.thinking is not None and self.thinking.on

    @model_validator(mode="after")
    def _within_limits(self, info: ValidationInfo) -> CountTokensRequest:
        if problem := value_problem(self):
            path, message = problem
            raise ValueError(f"{_dotted(path)}: {message}")
        walked = [model for _, model in models(self)]  # one walk of the request for both counts
        blocks = sum(isinstance(model, _BLOCK_TYPES) for model in walked)
        if blocks > MAX_BLOCKS:
            raise ValueError(f"messages: {blocks} content blocks in all; at most {MAX_BLOCKS} are allowed")
        images, most = (
            sum(isinstance(model, ImageBlock) for model in walked),
            limits_of(info.context).max_images,
        )
        if images > most:
            raise ValueError(f"messages: {images} images in all; at most {most} are allowed")
        return self

    @model_validator(mode="after")
    def _content_present(self) -> CountTokensRequest:
        # As the API words it; an empty final assistant turn prefills nothing.
        last = len(self.messages) - 1
        for i, message in enumerate(self.messages):
            if not message.content and not (i == last and message.role == "assistant"):
                raise ValueError(
                    f"messages.{i}: all messages must have non-empty content except for the optional final "
                    "assistant message"
                )
        return self

    @model_validator(mode="after")
    def _tool_names_unique(self) -> CountTokensRequest:
        first: dict[str, int] = {}
        for i, tool in enumerate(self.tools):
            if tool.name in first:
                raise ValueError(
                    f"tools.{i}.name: '{tool.name}' is also the name of tools.{first[tool.name]}; tool names "
                    "must be unique"
                )
            first[tool.name] = i
        return self

    @model_validator(mode="after")
    def _tool_choice_fits(self) -> CountTokensRequest:
        choice = self.tool_choice
        if choice is None:
            return self
        names = [tool.name for tool in self.tools]
        if choice.type == "tool":
            if not choice.name:
                raise ValueError("tool_choice.name: required when tool_choice.type is 'tool'")
            if choice.name not in names:
                declared = ", ".join(names) or "none"
                raise ValueError(
                    f"tool_choice.name: tool '{choice.name}' is not in tools (declared: {declared})"
                )
        if choice.type in ("any", "tool"):
            if not names:
                raise ValueError(f"tool_choice: type '{choice.type}' needs at least one tool in tools")
            if self.thinking_on:
                raise ValueError("thinking: may not be enabled when tool_choice forces tool use")
        return self


class MessagesRequest(CountTokensRequest):
    """The body of `POST /v1/messages`."""

    max_tokens: StrictInt = Field(ge=0)
    stream: StrictBool = False
    stop_sequences: list[Annotated[StrictStr, Field(max_length=MAX_STOP_SEQUENCE_CHARS)]] = Field(
        [], max_length=MAX_STOP_SEQUENCES
    )
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: StrictInt | None = Field(default=None, ge=0, le=MAX_TOP_K)
    metadata: dict[str, Any] | None = None

    @field_validator("stop_sequences", mode="before")
    @classmethod
    def _no_stops(cls, value: Any) -> Any:
        return [] if value is None else value

    @field_validator("stream", mode="before")
    @classmethod
    def _not_streamed(cls, value: Any) -> Any:
        # Null is absent, as for every optional field.
        return False if value is None else value

    @model_validator(mode="after")
    def _budget_fits(self) -> MessagesRequest:
        thinking = self.thinking
        if thinking is not None and thinking.type == "enabled":
            budget = thinking.budget_tokens
            if budget is None:
                raise ValueError("thinking.budget_tokens: required when thinking is enabled")
            if budget < 1024:
                raise ValueError(f"thinking.budget_tokens: must be at least 1024, got {budget}")
            if budget >= self.max_tokens:
                raise ValueError(
                    f"thinking.budget_tokens: must be less than max_tokens ({budget} >= {self.max_tokens})"
                )
        return self


_BLOCK_TYPES = (
    TextBlock,
    ImageBlock,
    DocumentBlock,
    ToolUseBlock,
    ToolResultBlock,
    ThinkingBlock,
    RedactedThinkingBlock,
    ToolReferenceBlock,
    SearchResultBlock,
)


def _dotted(path: Path) -> str:
    return ".".join(map(str, path))


def ignored_fields(body: BaseModel) -> list[str]:
    """Dotted paths of every field a client sent that the models do not define."""
    return [_dotted(path) for path in unknown_fields(body)]


Body = TypeVar("Body", bound=CountTokensRequest)


def parse(model: type[Body], data: bytes, images: ImageLimits | None = None) -> Body:
    """A request body validated as `model` (its images within `images`, by default Anthropic's limits);
    raises `RequestError` naming the first field at fault."""
    check_containers(data)
    try:
        body = model.model_validate_json(data, context=validation_context(images or ImageLimits()))
    except ValidationError as error:
        raise from_validation_error(error) from None
    if ignored := ignored_fields(body):
        log.debug("ignoring fields not implemented: %s", ", ".join(ignored))
    return body
