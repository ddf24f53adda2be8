"""The prompts every target gets: conversations sized in the model's own tokens, and a Claude Code-shaped
session (billing line, system prompt and tools of Claude Code's size, turns that append tool calls)."""

from __future__ import annotations

import json
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# What filler text is drawn from: the words of code and of instructions about it.
_VOCABULARY = (
    "the file function test value read edit run path import return class module error line config "
    "server model token cache request list string object type print data index result project source "
    "build check update change write search query user system tool call output input before after "
    "small keep explain never invent command shell prefer dedicated relevant again done main"
)
_WORDS = _VOCABULARY.split()
_CODE = (
    "def handle(request):\n    value = parse(request.body)\n"
    "    if value is None:\n        return error(400)\n"
    "    for item in value.items:\n        cache.store(item.key, item)\n    return ok(len(value.items))\n"
)
TOOL_NAMES = ("Bash", "Read", "Write", "Edit", "Glob", "Grep", "Task", "WebFetch", "WebSearch", "TodoWrite")
TOOL_NAMES += ("NotebookEdit", "AskUser")


@dataclass
class Conversation:
    """One request's content, in Anthropic's shape; `openai_messages` gives the same for other servers."""

    messages: list[dict[str, Any]]
    system: list[str] = field(default_factory=list)  # text blocks; a billing line would be the first
    tools: list[dict[str, Any]] = field(default_factory=list)

    def openai_messages(self) -> list[dict[str, Any]]:
        """What an OpenAI-API client sends for the same turn: the system blocks joined, tool calls as
        `tool_calls`, tool results as `tool` messages."""
        out: list[dict[str, Any]] = []
        if self.system:
            out.append({"role": "system", "content": "\n\n".join(self.system)})
        for message in self.messages:
            out.extend(_openai(message))
        return out

    def openai_tools(self) -> list[dict[str, Any]]:
        return [
            {
                "type": "function",
                "function": {
                    "name": t["name"],
                    "description": t["description"],
                    "parameters": t["input_schema"],
                },
            }
            for t in self.tools
        ]


def _openai(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message["content"]
    if isinstance(content, str):
        return [{"role": message["role"], "content": content}]
    texts = [block["text"] for block in content if block["type"] == "text"]
    if message["role"] == "assistant":
        calls = [
            {
                "id": b["id"],
                "type": "function",
                "function": {"name": b["name"], "arguments": json.dumps(b["input"])},
            }
            for b in content
            if b["type"] == "tool_use"
        ]
        return [{"role": "assistant", "content": "".join(texts), "tool_calls": calls}]
    results = [
        {"role": "tool", "tool_call_id": b["tool_use_id"], "content": b["content"]}
        for b in content
        if b["type"] == "tool_result"
    ]
    return results + ([{"role": message["role"], "content": "\n".join(texts)}] if texts else [])


BILLING_HEADER = "x-anthropic-billing-header:"


def billing_line() -> str:
    """Claude Code's attribution line, whose `cch` changes on every request."""
    return f"{BILLING_HEADER} cc_version=2.1.0; cc_entrypoint=cli; cch={secrets.token_hex(8)};"


def filler(words: int, seed: str) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(_WORDS) for _ in range(max(words, 1)))


class PromptBuilder:
    """Sizes conversations in tokens of the model under test, through its chat template."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def tokens(self, conversation: Conversation) -> list[int]:
        """The prompt as the raw engine gets it: the same chat template mlxd renders, thinking off."""
        return list(
            self.tokenizer.apply_chat_template(
                conversation.openai_messages(),
                tools=conversation.openai_tools() or None,
                add_generation_prompt=True,
                enable_thinking=False,
            )
        )

    def count(self, conversation: Conversation) -> int:
        return len(self.tokens(conversation))

    def user_prompt(self, size: int, seed: str) -> Conversation:
        """A one-message conversation of about `size` tokens, different from its first words per seed."""
        return _fit(
            lambda words: Conversation([{"role": "user", "content": filler(words, seed)}]), self, size
        )

    def session(self, prefix_tokens: int, seed: str) -> Session:
        """A Claude Code-shaped session whose system prompt and tools come to about `prefix_tokens`."""
        prefix = _fit(lambda scale: _prefix(scale, seed), self, prefix_tokens)
        sample = Conversation([{"role": "user", "content": filler(1000, seed)}])
        return Session(prefix.system, prefix.tools, words_per_token=1000 / self.count(sample), seed=seed)


def _fit(make: Callable[[int], Conversation], builder: PromptBuilder, size: int) -> Conversation:
    """`make(n)` for the `n` whose conversation comes closest to `size` tokens (the count is nearly
    linear in `n`, so a few secant steps find it)."""
    low, high = 1, max(size // 2, 2)
    count_low, count_high = builder.count(make(low)), builder.count(make(high))
    for _ in range(6):
        if count_high == count_low:
            break
        guess = max(1, round(low + (size - count_low) * (high - low) / (count_high - count_low)))
        low, count_low = high, count_high
        high, count_high = guess, builder.count(make(guess))
        if abs(count_high - size) <= max(2, size // 200):
            break
    return make(high)


def _prefix(scale: int, seed: str) -> Conversation:
    """System prompt (a third) and a dozen tools (two thirds), `scale` words of description per tool."""
    tools = [
        {
            "name": name,
            "description": f"The {name} tool. " + filler(scale, f"{seed}-{name}"),
            "input_schema": {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "Absolute path of the file or folder."},
                    "limit": {"type": "integer", "minimum": 1, "description": "How many results at most."},
                },
                "required": ["path"],
                "additionalProperties": False,
            },
        }
        for name in TOOL_NAMES
    ]
    system = [
        f"You are an agent for software engineering. Session {seed}.",
        filler(scale * len(TOOL_NAMES) // 2, f"{seed}-system"),
    ]
    return Conversation([{"role": "user", "content": "Hello."}], system, tools)


@dataclass
class Session:
    """The growing conversation: each turn after the first appends the model's tool call and its result."""

    system: list[str]
    tools: list[dict[str, Any]]
    words_per_token: float
    seed: str
    messages: list[dict[str, Any]] = field(default_factory=list)

    def turn(self, number: int, result_tokens: int) -> Conversation:
        if number == 1:
            self.messages = [{"role": "user", "content": "What is in this project? Read the main module."}]
        else:
            call_id = f"toolu_{self.seed}_{number}"
            path = f"/repo/src/module_{number}.py"
            result = _CODE + filler(int(result_tokens * self.words_per_token), f"{self.seed}-{number}")
            self.messages += [
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": f"Let me read {path}."},
                        {"type": "tool_use", "id": call_id, "name": "Read", "input": {"path": path}},
                    ],
                },
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": call_id, "content": result}],
                },
            ]
        return Conversation(list(self.messages), [billing_line(), *self.system], self.tools)
