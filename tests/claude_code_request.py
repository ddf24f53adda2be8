"""A request body of Claude Code's shape and size (see shared/CLAUDE_CODE_WIRE.md), written for these tests:
three system blocks led by a billing line, a dozen tools with JSON Schema 2020-12 inputs, a history with
tool calls and results, and a system-role message last. About 48k characters."""

from __future__ import annotations

import secrets
from typing import Any

SCHEMA = "https://json-schema.org/draft/2020-12/schema"

_GUIDANCE = (
    "When you work on a task, read the relevant files before changing them, keep changes small, and run "
    "the tests after each edit. Prefer the dedicated tools over shell commands for reading and searching. "
    "Explain what you did in a sentence or two; never invent file contents or command output. "
)

TOOL_NAMES = [
    "Bash",
    "Read",
    "Write",
    "Edit",
    "Glob",
    "Grep",
    "Task",
    "WebFetch",
    "WebSearch",
    "TodoWrite",
    "NotebookEdit",
    "AskUser",
]


def billing_line() -> str:
    """The attribution line whose `cch` changes on every request."""
    return f"x-anthropic-billing-header: cc_version=2.1.0; cc_entrypoint=cli; cch={secrets.token_hex(8)};"


def tool(name: str, description_sentences: int) -> dict[str, Any]:
    return {
        "name": name,
        "description": f"The {name} tool. " + _GUIDANCE * description_sentences,
        "input_schema": {
            "$schema": SCHEMA,
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "Absolute path of the file or folder to work on."},
                "limit": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "How many lines or results at most.",
                },
                "options": {
                    "type": "array",
                    "items": {"type": "string", "enum": ["recursive", "hidden", "follow"]},
                },
                "timeout": {"type": "number", "exclusiveMinimum": 0},
            },
            "required": ["path"],
            "additionalProperties": False,
        },
        "cache_control": {"type": "ephemeral"},
    }


def claude_code_request(model: str, *, max_tokens: int = 32000, scale: float = 1.0) -> dict:
    """Claude Code's shape; `scale` below 1 shrinks the guidance text for tests that need less."""
    tools = [tool(name, max(1, round(10 * scale))) for name in TOOL_NAMES]
    tools[3]["defer_loading"] = True
    return {
        "model": model,
        "max_tokens": max_tokens,
        "stream": True,
        "system": [
            {"type": "text", "text": billing_line()},
            {
                "type": "text",
                "text": "You are an agent for software engineering.",
                "cache_control": {"type": "ephemeral"},
            },
            {
                "type": "text",
                "text": _GUIDANCE * max(1, round(40 * scale)),
                "cache_control": {"type": "ephemeral"},
            },
        ],
        "tools": tools,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "What is in this project?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "I should look at the files.", "signature": ""},
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_01", "name": "Glob", "input": {"path": "/repo"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01",
                        "content": [{"type": "text", "text": "README.md\nsrc/main.py\n"}],
                    },
                    {"type": "text", "text": "List the files.", "cache_control": {"type": "ephemeral"}},
                ],
            },
            {"role": "system", "content": "The user's working directory is /repo."},
        ],
        "metadata": {"user_id": '{"device_id": "abc", "session_id": "s1"}'},
        "thinking": {"type": "adaptive", "display": "omitted"},
        "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    }


CLAUDE_CODE_HEADERS = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27,"
    "prompt-caching-scope-2026-01-05,effort-2025-11-24,oauth-2025-04-20,fine-grained-tool-streaming-2025-05-14",
    "x-claude-code-session-id": "3f1d9a0e-session",
    "x-stainless-lang": "js",
    "user-agent": "claude-cli/2.1.0 (external, cli)",
}
