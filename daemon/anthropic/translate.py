"""A Messages request as the neutral chat request: content blocks become typed parts, and what has no part of
its own (documents, search results, tool references) becomes the text a model can be given of it."""

from __future__ import annotations

import json

from daemon.anthropic.requests import (
    CountTokensRequest,
    DocumentBlock,
    ImageBlock,
    Message,
    MessagesRequest,
    RedactedThinkingBlock,
    SearchResultBlock,
    TextBlock,
    ThinkingBlock,
    ToolChoice,
    ToolReferenceBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from daemon.chat import request as chat

# Claude Code's billing line (`x-anthropic-billing-header: …; cch=<hash>;`) changes on every request and
# would make every prompt differ from its first token on; it carries nothing for the model.
BILLING_HEADER = "x-anthropic-billing-header:"

_CHOICES = {"auto": "auto", "none": "none", "any": "required", "tool": "tool"}


def to_chat(body: CountTokensRequest, *, strip_billing_header: bool = True) -> chat.ChatRequest:
    """The chat request `body` asks for; the billing line is dropped from the system prompt unless told not
    to."""
    texts = [block.text for block in body.system]
    system = (
        tuple(text for text in map(_without_billing_line, texts) if text) if strip_billing_header else texts
    )
    thinking = body.thinking
    generation = body if isinstance(body, MessagesRequest) else None
    return chat.ChatRequest(
        model=body.model,
        messages=tuple(_message(message) for message in body.messages),
        system=tuple(system),
        tools=tuple(
            chat.Tool(tool.name, tool.description or "", tool.input_schema, strict=_strict(tool))
            for tool in body.tools
        ),
        tool_choice=_tool_choice(body.tool_choice),
        thinking=chat.Thinking(
            enabled=body.thinking_on,
            budget_tokens=thinking.budget_tokens if thinking and thinking.type == "enabled" else None,
        ),
        sampling=chat.Sampling(generation.temperature, generation.top_p, generation.top_k)
        if generation
        else chat.Sampling(),
        stop=tuple(generation.stop_sequences) if generation else (),
        max_tokens=generation.max_tokens if generation else None,
        output_schema=_output_schema(body),
    )


def _without_billing_line(text: str) -> str:
    """A system block without the billing line it starts with (empty if that was all of it)."""
    if not text.lstrip().startswith(BILLING_HEADER):
        return text
    return text.lstrip().partition("\n")[2].lstrip("\n")


def cache_requested(body: CountTokensRequest) -> bool:
    """Whether the request asks for caching (`cache_control` on the request itself, a system block, a tool,
    a content block, or a block inside a tool result): only then does the usage split the prompt into what
    was read from and written to the cache, as the API does."""
    blocks = [body, *body.system, *body.tools]
    for message in body.messages:
        for block in message.content:
            blocks += [block, *(block.content if isinstance(block, ToolResultBlock) else ())]
    return any("cache_control" in (block.model_extra or {}) for block in blocks)


def _message(message: Message) -> chat.Message:
    parts: list[chat.Part] = []
    for block in message.content:
        match block:
            case ThinkingBlock(thinking=text) if message.role == "assistant":
                parts.append(chat.Reasoning(text))
            case ToolUseBlock(id=call_id, name=name, input=arguments) if message.role == "assistant":
                parts.append(chat.ToolCall(call_id, name, arguments))
            case ToolResultBlock(tool_use_id=call_id, content=content, is_error=is_error):
                parts.append(chat.ToolResult(call_id, tuple(_content(part) for part in content), is_error))
            case ThinkingBlock() | RedactedThinkingBlock():
                pass  # the model's reasoning means nothing in a user turn, and redacted text is not ours
            case _:
                parts.append(_content(block))
    return chat.Message(message.role, tuple(parts))


def _content(block: object) -> chat.Text | chat.Image:
    """A block as plain text, or an image."""
    match block:
        case TextBlock(text=text):
            return chat.Text(text)
        case ImageBlock(source=source):  # validated: a base64 image (URLs are refused)
            return chat.Image(source.media_type, source.data)
        case ToolReferenceBlock(tool_name=name):
            return chat.Text(f"Tool loaded: {name}")
        case DocumentBlock(source=source, title=title):
            data = source.get("data") if source.get("type") == "text" else None
            return chat.Text(data if isinstance(data, str) else f"[document omitted: {title or 'untitled'}]")
        case SearchResultBlock(title=title, source=source, content=content):
            return chat.Text("\n".join([f"{title} ({source})", *(part.text for part in content)]))
        case ToolUseBlock(name=name, input=arguments):
            return chat.Text(json.dumps({"name": name, "arguments": arguments}))
    raise TypeError(f"not a content block: {block!r}")


def _tool_choice(choice: ToolChoice | None) -> chat.ToolChoice:
    if choice is None:
        return chat.ToolChoice()
    return chat.ToolChoice(
        _CHOICES[choice.type],  # type: ignore[arg-type]
        choice.name if choice.type == "tool" else None,
        parallel=not choice.disable_parallel_tool_use,
    )


def _strict(tool: object) -> bool:
    return (getattr(tool, "model_extra", None) or {}).get("strict") is True


def _output_schema(body: CountTokensRequest) -> dict | None:
    """`output_config.format` (or the older beta `output_format`) when it asks for a JSON schema."""
    extra = body.model_extra or {}
    config = extra.get("output_config")
    formats = [config.get("format") if isinstance(config, dict) else None, extra.get("output_format")]
    for fmt in formats:
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
            return fmt["schema"]
    return None
