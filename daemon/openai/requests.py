"""The Chat Completions request body as pydantic models (its messages in `daemon.openai.messages`), as strict
as the Messages API's and within `daemon.chat.limits`; unknown fields are accepted and logged at DEBUG."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from daemon.chat.images import ImageLimits, limits_of, validation_context
from daemon.chat.limits import (
    MAX_BLOCKS,
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
from daemon.chat.wire import WireModel, models, unknown_fields, value_problem
from daemon.openai.errors import FieldError, from_validation_error, written_path
from daemon.openai.messages import (
    ChatMessage,
    ImagePart,
    RefusalPart,
    TextPart,
    ToolCall,
)

log = logging.getLogger(__name__)

ToolName = Annotated[StrictStr, Field(pattern=TOOL_NAME_PATTERN)]


class FunctionDefinition(WireModel):
    name: ToolName
    description: StrictStr | None = Field(None, max_length=MAX_TOOL_DESCRIPTION_CHARS)
    # Without `parameters`, OpenAI's function takes none.
    parameters: Annotated[dict[str, Any], AfterValidator(bounded_schema)] = Field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    strict: StrictBool | None = None


class ToolDefinition(WireModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(WireModel):
    name: ToolName


class ToolChoice(WireModel):
    """`tool_choice`: a mode's name (`"auto"`) is read as `{"type": "auto"}`; a function is named as
    `{"type": "function", "function": {"name": ...}}`."""

    type: Literal["none", "auto", "required", "function"]
    function: NamedFunction | None = None

    @model_validator(mode="after")
    def _function_named(self) -> ToolChoice:
        if self.type == "function" and self.function is None:
            raise FieldError("function", "required when type is 'function'")
        return self

    @property
    def forced(self) -> bool:
        return self.type in ("required", "function")


def _tool_choice(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if value not in ("none", "auto", "required"):
        raise ValueError(
            f"unknown value '{value}' (expected 'none', 'auto', 'required' or "
            '{"type": "function", "function": {"name": ...}})'
        )
    return {"type": value}


class StreamOptions(WireModel):
    include_usage: StrictBool | None = None


class JSONSchemaFormat(WireModel):
    name: Annotated[StrictStr, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: StrictStr | None = None
    # A format without a schema asks only for JSON, as `json_object` does.
    json_schema: Annotated[dict[str, Any], AfterValidator(bounded_schema)] = Field(
        default_factory=lambda: {"type": "object"}, alias="schema"
    )
    strict: StrictBool | None = None


class ResponseFormat(WireModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise FieldError("json_schema", "required when type is 'json_schema'")
        return self


class ChatTemplateKwargs(WireModel):
    """vLLM's `chat_template_kwargs`: of them, only `enable_thinking` means anything to mlxd."""

    enable_thinking: StrictBool | None = None


ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]


_NOTHING = {
    "logprobs": "false",
    "top_logprobs": "0",
    "frequency_penalty": "0",
    "presence_penalty": "0",
    "logit_bias": "{}",
}


class ChatCompletionRequest(WireModel):
    """The body of `POST /v1/chat/completions`."""

    model: StrictStr
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    tools: list[ToolDefinition] = Field([], max_length=MAX_TOOLS)
    tool_choice: Annotated[ToolChoice | None, BeforeValidator(_tool_choice)] = None
    parallel_tool_calls: StrictBool | None = None
    stop: list[Annotated[StrictStr, Field(max_length=MAX_STOP_SEQUENCE_CHARS)]] = Field(
        [], max_length=MAX_STOP_SEQUENCES
    )
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    # Not OpenAI's, but vLLM's and other local servers' sampling extensions.
    top_k: StrictInt | None = Field(None, ge=0, le=MAX_TOP_K)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    n: StrictInt | None = None
    seed: Any = None
    # Refused when they would change the answer, rather than silently ignored (see `_not_served`).
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: ReasoningEffort | None = None
    chat_template_kwargs: ChatTemplateKwargs | None = None

    @field_validator("tools", "stop", mode="before")
    @classmethod
    def _null_is_none(cls, value: Any) -> Any:
        return [] if value is None else value

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("stream", mode="before")
    @classmethod
    def _not_streamed(cls, value: Any) -> Any:
        return False if value is None else value

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError(f"mlxd generates one choice per request; n must be 1, got {value}")
        return value

    @field_validator("seed", mode="before")
    @classmethod
    def _no_seed(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError(
                "mlxd cannot honour a per-request seed: requests share one continuous batch, so a seed "
                "would not make an answer repeat; leave it out (temperature 0 answers the same each time)"
            )
        return value

    @field_validator("logprobs", "top_logprobs", "frequency_penalty", "presence_penalty", "logit_bias")
    @classmethod
    def _not_served(cls, value: Any, info: ValidationInfo) -> Any:
        if value:  # false, 0, 0.0 and {} ask for nothing
            name = info.field_name
            raise ValueError(f"mlxd does not support {name}; leave it out or set it to {_NOTHING[name]}")
        return value

    @property
    def output_limit(self) -> int | None:
        """The most tokens to generate (None: as many as the context allows)."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def thinking_on(self) -> bool:
        effort = self.reasoning_effort not in (None, "none")
        kwargs = self.chat_template_kwargs
        return effort or (kwargs is not None and kwargs.enable_thinking is True)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage is True

    @model_validator(mode="after")
    def _limits_agree(self) -> ChatCompletionRequest:
        given = self.max_tokens, self.max_completion_tokens
        if None not in given and given[0] != given[1]:
            raise FieldError(
                "max_tokens",
                f"{given[0]} differs from max_completion_tokens ({given[1]}); send one of them "
                "(max_completion_tokens is OpenAI's current name)",
            )
        return self

    @model_validator(mode="after")
    def _stream_options_only_when_streamed(self) -> ChatCompletionRequest:
        if self.stream_options is not None and not self.stream:
            raise FieldError("stream_options", "only allowed when stream is true")
        return self

    @model_validator(mode="after")
    def _within_limits(self, info: ValidationInfo) -> ChatCompletionRequest:
        if problem := value_problem(self):
            path, message = problem
            raise FieldError(written_path(path), message)
        walked = [model for _, model in models(self)]  # one walk of the request for both counts
        parts = sum(isinstance(model, TextPart | RefusalPart | ImagePart | ToolCall) for model in walked)
        if parts > MAX_BLOCKS:
            raise FieldError("messages", f"{parts} content parts and tool calls in all; at most {MAX_BLOCKS}")
        images, most = (
            sum(isinstance(model, ImagePart) for model in walked),
            limits_of(info.context).max_images,
        )
        if images > most:
            raise FieldError("messages", f"{images} images in all; at most {most} are allowed")
        return self

    @model_validator(mode="after")
    def _tool_names_unique(self) -> ChatCompletionRequest:
        first: dict[str, int] = {}
        for i, tool in enumerate(self.tools):
            name = tool.function.name
            if name in first:
                raise FieldError(
                    f"tools[{i}].function.name",
                    f"'{name}' is also the name of tools[{first[name]}]; function names must be unique",
                )
            first[name] = i
        return self

    @model_validator(mode="after")
    def _tool_choice_fits(self) -> ChatCompletionRequest:
        choice = self.tool_choice
        if choice is None:
            return self
        names = [tool.function.name for tool in self.tools]
        if choice.function is not None and choice.type == "function" and choice.function.name not in names:
            declared = ", ".join(names) or "none"
            raise FieldError(
                "tool_choice.function.name", f"function '{choice.function.name}' is not in tools ({declared})"
            )
        if choice.type == "required" and not names:
            raise FieldError("tool_choice", "'required' needs at least one function in tools")
        if choice.forced and self.thinking_on:
            asked = (
                "reasoning_effort" if self.reasoning_effort not in (None, "none") else "chat_template_kwargs"
            )
            raise FieldError(asked, "reasoning may not be on when tool_choice forces a call")
        return self


def ignored_fields(body: BaseModel) -> list[str]:
    """The paths of every field a client sent that the models do not define, as OpenAI writes them."""
    return [written_path(path) for path in unknown_fields(body)]


def parse(data: bytes, images: ImageLimits | None = None) -> ChatCompletionRequest:
    """A request body validated (its images within `images`, by default Anthropic's limits); raises
    `RequestError` naming the first field at fault in its `param`."""
    check_containers(data)
    try:
        context = validation_context(images or ImageLimits())
        body = ChatCompletionRequest.model_validate_json(data, context=context)
    except ValidationError as error:
        raise from_validation_error(error) from None
    if ignored := ignored_fields(body):
        log.debug("ignoring fields not implemented: %s", ", ".join(ignored))
    return body
