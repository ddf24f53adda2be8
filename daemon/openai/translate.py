"""A Chat Completions request as the neutral chat request, written so that a conversation becomes exactly the
chat request the same conversation sent through the Messages API becomes (and so renders the same prompt)."""

from __future__ import annotations

from typing import Literal

from daemon.chat import request as chat
from daemon.openai.messages import (
    AssistantMessage,
    ChatMessage,
    ImagePart,
    RefusalPart,
    SystemMessage,
    TextPart,
    ToolMessage,
    UserMessage,
)
from daemon.openai.requests import ChatCompletionRequest, ToolChoice

_MODES: dict[str, Literal["auto", "none", "required", "tool"]] = {
    "auto": "auto",
    "none": "none",
    "required": "required",
    "function": "tool",
}


def to_chat(body: ChatCompletionRequest) -> chat.ChatRequest:
    """The chat request `body` asks for: its leading system (and developer) messages are the system prompt,
    one entry per text part; later ones stay system messages where they stand."""
    leading = 0
    while leading < len(body.messages) and isinstance(body.messages[leading], SystemMessage):
        leading += 1
    system = tuple(part.text for message in body.messages[:leading] for part in message.content)
    return chat.ChatRequest(
        model=body.model,
        messages=tuple(_message(message) for message in body.messages[leading:]),
        system=system,
        tools=tuple(
            chat.Tool(
                tool.function.name,
                tool.function.description or "",
                tool.function.parameters,
                strict=tool.function.strict is True,
            )
            for tool in body.tools
        ),
        tool_choice=_tool_choice(body.tool_choice, body.parallel_tool_calls),
        thinking=chat.Thinking(enabled=body.thinking_on),
        sampling=chat.Sampling(body.temperature, body.top_p, body.top_k, body.min_p),
        stop=tuple(body.stop),
        max_tokens=body.output_limit,
        output_schema=_output_schema(body),
    )


def _message(message: ChatMessage) -> chat.Message:
    match message:
        case SystemMessage(content=content):
            return chat.Message("system", tuple(chat.Text(part.text) for part in content))
        case AssistantMessage(content=content, tool_calls=calls, reasoning_content=reasoning):
            parts: list[chat.Part] = [chat.Reasoning(reasoning)] if reasoning else []
            parts += [chat.Text(_text(part)) for part in content or ()]
            parts += [chat.ToolCall(call.id, call.function.name, call.function.arguments) for call in calls]
            return chat.Message("assistant", tuple(parts))
        case ToolMessage(content=content, tool_call_id=call_id):
            result = chat.ToolResult(call_id, tuple(chat.Text(part.text) for part in content))
            return chat.Message("user", (result,))
        case UserMessage(content=content):
            return chat.Message("user", tuple(_user_part(part) for part in content))
    raise TypeError(f"not a message: {message!r}")


def _text(part: TextPart | RefusalPart) -> str:
    return part.text if isinstance(part, TextPart) else part.refusal


def _user_part(part: TextPart | ImagePart) -> chat.Text | chat.Image:
    if isinstance(part, ImagePart):
        return chat.Image(part.image_url.media_type, part.image_url.data)
    return chat.Text(part.text)


def _tool_choice(choice: ToolChoice | None, parallel: bool | None) -> chat.ToolChoice:
    parallel = parallel is not False
    if choice is None:
        return chat.ToolChoice(parallel=parallel)
    name = choice.function.name if choice.type == "function" and choice.function is not None else None
    return chat.ToolChoice(_MODES[choice.type], name, parallel=parallel)


def _output_schema(body: ChatCompletionRequest) -> dict | None:
    """`json_schema` asks for its schema; `json_object` for any JSON object; `text` for nothing."""
    response_format = body.response_format
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_schema" and response_format.json_schema is not None:
        return response_format.json_schema.json_schema
    return {"type": "object"}
