"""What an API asks the engine for, in no API's words: a conversation of typed parts, the tools the model may
call and how it must choose among them, reasoning, sampling, stop sequences and the output limit.

Each wire package (`daemon.anthropic`, `daemon.openai`) translates its requests into a `ChatRequest`; the
engine renders one into the model's chat template and never sees a wire format.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Image:
    """An image as the client sent it; a model without vision is told one was left out."""

    media_type: str
    data: str  # base64


@dataclass(frozen=True)
class ToolCall:
    """A call the assistant made, with its arguments as a JSON object."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ToolResult:
    """What a call returned, given back to the model in a user turn."""

    call_id: str
    content: tuple[Text | Image, ...]
    is_error: bool = False


@dataclass(frozen=True)
class Reasoning:
    """The assistant's thinking in an earlier turn."""

    text: str


Part = Text | Image | ToolCall | ToolResult | Reasoning


@dataclass(frozen=True)
class Message:
    role: Role
    parts: tuple[Part, ...]


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # a JSON schema of the arguments
    strict: bool = False


@dataclass(frozen=True)
class ToolChoice:
    """`auto`: the model decides; `none`: no call; `required`: some call; `tool`: a call of `name`.
    `parallel`: more than one call may be made in a turn."""

    mode: Literal["auto", "none", "required", "tool"] = "auto"
    name: str | None = None
    parallel: bool = True

    @property
    def forced(self) -> bool:
        return self.mode in ("required", "tool")


@dataclass(frozen=True)
class Sampling:
    """The sampling a request asks for; None leaves a value to the model's defaults."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None

    def given(self) -> dict[str, Any]:
        """The values the request set, by name."""
        return {name: value for name, value in vars(self).items() if value is not None}


SAMPLING_FIELDS = tuple(f.name for f in fields(Sampling))


@dataclass(frozen=True)
class Thinking:
    """Whether the model reasons before it answers, and in at most how many tokens (None: no budget)."""

    enabled: bool = False
    budget_tokens: int | None = None


@dataclass(frozen=True)
class ChatRequest:
    """One request for a model's answer (or, for counting, only its prompt)."""

    model: str
    messages: tuple[Message, ...]
    system: tuple[str, ...] = ()  # the system prompt before the conversation, one entry per block
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    thinking: Thinking = field(default_factory=Thinking)
    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()
    max_tokens: int | None = None  # None: as many as the context allows; 0: fill the cache, answer nothing
    output_schema: dict[str, Any] | None = None  # a JSON schema the answer is asked to fit

    def kept_texts(self) -> list[str]:
        """The text every chat template keeps whole: the system prompt, and the text of user turns and of tool
        results (a template may drop earlier thinking or reshape assistant turns)."""
        parts = [part for message in self.messages if message.role == "user" for part in message.parts]
        parts += [inner for part in parts if isinstance(part, ToolResult) for inner in part.content]
        return [*self.system, *(part.text for part in parts if isinstance(part, Text))]

    def images(self) -> int:
        """How many images the conversation holds, tool results' included."""
        parts = [part for message in self.messages for part in message.parts]
        parts += [inner for part in parts if isinstance(part, ToolResult) for inner in part.content]
        return sum(isinstance(part, Image) for part in parts)
