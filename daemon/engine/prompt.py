"""From a chat request to the token ids the model sees, through the model's own chat template.

Its parts become the chat messages Hugging Face templates take: tool calls as `tool_calls`, tool results as
`tool` messages in order, reasoning as `reasoning_content`, and system turns where they stand.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from jinja2 import TemplateError
from mlx_lm.utils import common_prefix_len

from daemon.chat.images import IMAGE_OMITTED
from daemon.chat.request import ChatRequest, Image, Message, Reasoning, Text, ToolCall, ToolChoice, ToolResult
from daemon.engine.grammar import Grammar, GrammarCompiler, GrammarError, constrains_calls, request_grammar
from daemon.engine.tools import (
    GENERIC_END,
    GENERIC_FORMAT,
    GENERIC_START,
    ToolFormat,
    generic_instructions,
    model_format,
)

if TYPE_CHECKING:
    from daemon.engine.vision import VisionInputs

log = logging.getLogger(__name__)

ChatMessage = dict[str, Any]


@dataclass(frozen=True)
class Prompt:
    tokens: list[int]
    thinking: bool
    starts_in_thinking: bool
    tools: list[dict[str, Any]]
    prefill: bool = False  # the answer continues an assistant turn the client began
    shared_prefix: int = 0  # tokens of the leading system prompt and tools, shared across a session
    tool_format: ToolFormat | None = None  # how calls are written; None: any call markup is plain text
    tool_opening: str | None = None  # a forced call's opening, after the start marker, ending the prompt
    single_call: bool = False  # stop after the first call (`disable_parallel_tool_use`, a forced call)
    banned_tokens: tuple[int, ...] = ()  # tokens the model may not generate (`tool_choice: none`)
    thinking_budget: int | None = None
    grammar: Grammar | None = None  # what the response is held to: its calls, or a JSON answer
    grammar_begun: tuple[int, ...] = ()  # what of it the prompt already holds (an assistant turn continued)
    images: tuple[Image, ...] = ()  # for a vision model: its images, in the order the prompt shows them
    vision: VisionInputs | None = None  # and what they are to the model, once `Vision.expand` has run


class _Marked(list):
    """A vision model's images, as `chat_messages` meets them; each stands in the messages as a mark of
    this render's own (no client text can forge it) until they are final and it becomes the placeholder."""

    def __init__(self) -> None:
        super().__init__()
        self.nonce = secrets.token_hex(8)
        self.pattern = re.compile(f"\x00image-{self.nonce}-(\\d+)\x00")

    def mark(self, image: Image) -> str:
        self.append(image)
        return f"\x00image-{self.nonce}-{len(self) - 1}\x00"


def chat_messages(request: ChatRequest, images: _Marked | None = None) -> list[ChatMessage]:
    """The request's system prompt and messages as chat-template messages, in order. With `images`, each
    image is appended to it and marked where it stands; without, it is the note a text model reads."""
    out: list[ChatMessage] = []
    if request.system:
        out.append({"role": "system", "content": "\n\n".join(request.system)})
    for message in request.messages:
        out.extend(_convert(message, images))
    return _merge_consecutive(out)


def tool_definitions(request: ChatRequest) -> list[dict[str, Any]]:
    """Tools in the OpenAI-style form Hugging Face chat templates expect."""
    return [
        {
            "type": "function",
            "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters},
        }
        for tool in request.tools
    ]


def render(
    tokenizer: Any,
    request: ChatRequest,
    grammars: GrammarCompiler | None = None,
    image_placeholder: str | None = None,
) -> Prompt:
    """Tokens of the prompt exactly as the model will process it, and how to read what it writes. With
    `grammars`, calls in a format that has a grammar, and an answer asked to fit a schema, are held to one
    (raises `GrammarError` when a schema cannot be enforced). With `image_placeholder` (a vision model's),
    each image is written as it, and the prompt lists its images in that order."""
    marked = _Marked() if image_placeholder is not None else None
    messages = chat_messages(request, marked)
    if len(messages) > 1 and messages[-1] == {"role": "assistant", "content": ""}:
        messages.pop()  # an empty assistant turn prefills nothing
    tools = tool_definitions(request)
    tool_format = model_format(tokenizer) if tools else None
    if tools and tool_format is None:
        # The template knows no tools: describe them in the system prompt and show past calls as text,
        # in mlxd's generic format, which the decoder then reads back.
        tool_format = GENERIC_FORMAT
        messages = _with_generic_tools(messages, tools)
    template_tools = tools if tool_format is not GENERIC_FORMAT else []
    images = _place_images(messages, marked, image_placeholder) if marked is not None else ()
    thinking = request.thinking.enabled
    prefill = messages[-1]["role"] == "assistant" and _plain(messages[-1])
    kwargs: dict[str, Any] = {
        "tools": template_tools or None,
        "add_generation_prompt": not prefill,
        "continue_final_message": prefill,
        "enable_thinking": thinking,
    }
    if not tokenizer.has_chat_template:
        tokens = list(tokenizer.encode(_plain_transcript(messages, prefill)))
        return Prompt(tokens, thinking, False, tools, prefill, images=images)
    tokens = list(_apply_template(tokenizer, messages, kwargs))
    starts_in_thinking = False
    if tokenizer.has_thinking:
        starts_in_thinking = tokenizer.rfind_think_start(tokens) > tokenizer.rfind_think_end(tokens)
    shared = 0
    if messages[0]["role"] == "system" or template_tools:
        # The prompt of the system turn and tools alone, followed by an empty user turn: where it first
        # differs from the full prompt is where the shared prefix ends.
        head = [m for m in messages[:1] if m["role"] == "system"] + [{"role": "user", "content": ""}]
        head_kwargs = {**kwargs, "add_generation_prompt": False, "continue_final_message": False}
        shared = common_prefix_len(tokens, _apply_template(tokenizer, head, head_kwargs))
    prompt = Prompt(tokens, thinking, starts_in_thinking, tools, prefill, shared, tool_format, images=images)
    budget = request.thinking.budget_tokens if thinking else None
    choice = request.tool_choice
    guided = grammars is not None and constrains_calls(tool_format, request.tools, choice, grammars)
    prompt = _with_tool_choice(tokenizer, replace(prompt, thinking_budget=budget), choice, guided=guided)
    if grammars is None:
        return prompt
    grammar = request_grammar(prompt.tool_format, request.tools, choice, request.output_schema, grammars)
    if grammar is None or not prefill or request.output_schema is None:
        # A call is held from where the model takes over: what the client began is the client's text.
        return replace(prompt, grammar=grammar)
    # The JSON answer continues the client's start of it, which the grammar must take first.
    begun = tuple(tokenizer.encode(messages[-1]["content"], add_special_tokens=False))
    if not grammar.template.deep_copy().consume_tokens(list(begun)):
        raise GrammarError("the assistant turn the answer continues does not fit the output schema")
    return replace(prompt, grammar=grammar, grammar_begun=begun)


def _with_tool_choice(tokenizer: Any, prompt: Prompt, choice: ToolChoice, *, guided: bool) -> Prompt:
    """`none` bans the call marker; `required` and `tool` make a call what the model writes next: its
    grammar forces it when `guided`, else the prompt ends with the call's opening (and the tool's name)."""
    tool_format = prompt.tool_format
    if tool_format is None or choice.mode == "auto":
        return replace(prompt, single_call=not choice.parallel)
    if guided and choice.mode != "none":
        return replace(prompt, single_call=True)
    if choice.mode == "none":
        markers = [
            tokenizer.encode(m, add_special_tokens=False) for m in (tool_format.start, tool_format.end) if m
        ]
        banned = tuple(ids[0] for ids in markers if len(ids) == 1)
        if len(banned) < len(markers):
            log.info(
                "tool_choice none: a call marker of %s is several tokens; it is not banned", tool_format.kind
            )
        return replace(prompt, tool_format=None, banned_tokens=banned)
    opening = tool_format.forced_prefix(choice.name if choice.mode == "tool" else None)
    forced = tokenizer.encode(opening, add_special_tokens=False)
    return replace(
        prompt,
        tokens=prompt.tokens + list(forced),
        tool_opening=opening[len(tool_format.start) :],
        single_call=True,
    )


def _with_generic_tools(messages: list[ChatMessage], tools: list[dict[str, Any]]) -> list[ChatMessage]:
    instructions = generic_instructions(tools)
    out: list[ChatMessage] = []
    for message in messages:
        if message.get("tool_calls"):
            calls = [
                f"{GENERIC_START}\n{json.dumps(call['function'], ensure_ascii=False)}\n{GENERIC_END}"
                for call in message["tool_calls"]
            ]
            content = "\n".join(part for part in (message["content"], *calls) if part)
            out.append({"role": "assistant", "content": content})
        elif message["role"] == "tool":
            out.append(
                {"role": "user", "content": f"<tool_response>\n{message['content']}\n</tool_response>"}
            )
        else:
            out.append(message)
    if out[0]["role"] == "system":
        out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{instructions}"}
    else:
        out.insert(0, {"role": "system", "content": instructions})
    return _merge_consecutive(out)


def _apply_template(tokenizer: Any, messages: list[ChatMessage], kwargs: dict[str, Any]) -> list[int]:
    try:
        return tokenizer.apply_chat_template(messages, **kwargs)
    except TemplateError as error:
        # Some templates refuse a system message after the first turn; such messages still matter, so
        # they go in as user turns rather than failing the request.
        log.info("chat template refused the conversation (%s); retrying with system turns as user", error)
        return tokenizer.apply_chat_template(_demote_late_system(messages), **kwargs)


def _place_images(messages: list[ChatMessage], marked: _Marked, placeholder: str) -> tuple[Image, ...]:
    """Write each marked image as `placeholder`; the images in the order the messages now show them."""
    order: list[Image] = []
    for message in messages:
        if isinstance(message.get("content"), str):
            order += [marked[int(n)] for n in marked.pattern.findall(message["content"])]
            message["content"] = marked.pattern.sub(lambda _: placeholder, message["content"])
    return tuple(order)


def _convert(message: Message, images: _Marked | None) -> list[ChatMessage]:
    if message.role == "assistant":
        return [_assistant(message)]
    results: list[ChatMessage] = []
    texts: list[str] = []
    for part in message.parts:
        if isinstance(part, ToolResult):
            content = "\n".join(_text_of(inner, images) for inner in part.content)
            if part.is_error:
                content = f"Error: {content}"
            results.append({"role": "tool", "tool_call_id": part.call_id, "content": content})
        else:
            texts.append(_text_of(part, images))
    # A turn with nothing the model can be shown (only redacted thinking, say) still takes its place.
    turn = [{"role": message.role, "content": "\n".join(texts)}] if texts or not results else []
    return results + turn


def _assistant(message: Message) -> ChatMessage:
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in message.parts:
        match part:
            case Reasoning(text=text):
                reasoning.append(text)
            case ToolCall(id=call_id, name=name, arguments=arguments):
                calls.append(
                    {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
                )
            case Text() | Image():
                texts.append(_text_of(part))
    out: ChatMessage = {"role": "assistant", "content": "".join(texts)}
    if reasoning:
        out["reasoning_content"] = "\n".join(reasoning)
    if calls:
        out["tool_calls"] = calls
    return out


def _text_of(part: object, images: _Marked | None = None) -> str:
    """Plain text for a part in a turn: an image is marked for a vision model (`images` collects it), else
    what a text-only model can be told of it; a call is its JSON."""
    match part:
        case Text(text=text):
            return text
        case Image() if images is not None:
            return images.mark(part)
        case Image():
            return IMAGE_OMITTED
        case ToolCall(name=name, arguments=arguments):
            return json.dumps({"name": name, "arguments": arguments})
    return ""


def _merge_consecutive(messages: list[ChatMessage]) -> list[ChatMessage]:
    """Joins adjacent plain user (or assistant) turns, as the Messages API treats them: as one turn."""
    merged: list[ChatMessage] = []
    for message in messages:
        last = merged[-1] if merged else None
        if (
            last
            and last["role"] == message["role"] in ("user", "assistant")
            and _plain(last)
            and _plain(message)
        ):
            last["content"] = "\n\n".join(part for part in (last["content"], message["content"]) if part)
        else:
            merged.append(dict(message))
    return merged


def _plain(message: ChatMessage) -> bool:
    return set(message) <= {"role", "content"}


def _demote_late_system(messages: list[ChatMessage]) -> list[ChatMessage]:
    demoted = [messages[0]] + [
        {"role": "user", "content": m["content"]} if m["role"] == "system" else m for m in messages[1:]
    ]
    return _merge_consecutive(demoted)


def _plain_transcript(messages: list[ChatMessage], prefill: bool) -> str:
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join(lines) + ("" if prefill else "\nassistant:")
