"""The Messages API request bodies as pydantic models: what a client may send, validated as the API does.

Unknown fields are accepted everywhere (clients such as Claude Code send beta fields freely) and reported
through `ignored_fields` so the server can log them once at DEBUG.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)


class WireModel(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class TextBlock(WireModel):
    type: Literal["text"]
    text: StrictStr


class ImageBlock(WireModel):
    type: Literal["image"]
    source: dict[str, Any]


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
    content: list[ToolResultContent] = []
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
    content: list[ContentBlock]

    @field_validator("content", mode="before")
    @classmethod
    def _normalise_content(cls, value: Any) -> Any:
        return _blocks(value, "content")


class Tool(WireModel):
    name: StrictStr = Field(min_length=1)
    description: StrictStr | None = None
    input_schema: dict[str, Any]


class ToolChoice(WireModel):
    type: Literal["auto", "any", "tool", "none"]
    name: StrictStr | None = None
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
    messages: list[Message] = Field(min_length=1)
    system: list[TextBlock] = []
    tools: list[Tool] = []
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
    stop_sequences: list[StrictStr] = []
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: StrictInt | None = Field(default=None, ge=0)
    metadata: dict[str, Any] | None = None

    @field_validator("stop_sequences", mode="before")
    @classmethod
    def _no_stops(cls, value: Any) -> Any:
        return [] if value is None else value

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


def ignored_fields(model: BaseModel, prefix: str = "") -> list[str]:
    """Dotted paths of every field a client sent that the models do not define."""
    found = [f"{prefix}{name}" for name in model.model_extra or {}]
    for name in type(model).model_fields:
        value = getattr(model, name)
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, BaseModel):
                index = f".{i}" if isinstance(value, list) else ""
                found += ignored_fields(item, f"{prefix}{name}{index}.")
    return found
