"""Anthropic's error envelope: its status-to-type table, the envelope of a `RequestError`, and how a pydantic
validation failure becomes a message that names the field."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from daemon.chat.errors import RequestError, invalid_request
from daemon.chat.limits import MAX_BODY_DEPTH

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    """Anthropic's type for a status; as its API does, `invalid_request_error` for 4xx codes it lists no
    type of its own for (408, 431)."""
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def envelope(error_type: str, message: str, request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "error", "error": {"type": error_type, "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return body


def error_body(error: RequestError, request_id: str | None = None) -> dict[str, Any]:
    return envelope(error_type(error.status), error.message, request_id)


def from_validation_error(error: ValidationError) -> RequestError:
    """The first problem pydantic found, phrased as `field.path: what is wrong`."""
    first = error.errors(include_url=False)[0]
    path = _dotted(first["loc"])
    kind = first["type"]
    if kind == "union_tag_invalid":
        tag = first.get("ctx", {}).get("tag", "")
        expected = first.get("ctx", {}).get("expected_tags", "")
        what = "source" if path.endswith("source") else "content block"
        message = f"unknown {what} type '{tag}' (expected one of {expected})"
    elif kind == "union_tag_not_found":
        path, message = f"{path}.type" if path else "type", "Field required"
    elif kind == "missing":
        message = "Field required"
    elif kind == "json_invalid":
        return invalid_request(_json_problem(first["msg"].removeprefix("Invalid JSON: ")))
    else:
        message = first["msg"].removeprefix("Value error, ")
    return invalid_request(f"{path}: {message}" if path else message)


def _json_problem(problem: str) -> str:
    if problem.startswith("recursion limit exceeded"):
        where = problem.removeprefix("recursion limit exceeded")
        return f"request body: arrays and objects nest more than {MAX_BODY_DEPTH} levels deep{where}"
    return f"request body is not valid JSON: {problem}"


def _dotted(loc: tuple[Any, ...]) -> str:
    # A discriminated union adds the tag it chose to the location ("content.0.text.text",
    # "source.base64.data"); drop it, so the path names only fields and list positions as the client wrote.
    def tag(i: int, part: Any) -> bool:
        if not 0 < i < len(loc) - 1:
            return False
        before = loc[i - 1]
        return (isinstance(before, int) and _is_block_tag(part)) or (
            before == "source" and part in _SOURCE_TAGS
        )

    return ".".join(str(part) for i, part in enumerate(loc) if not tag(i, part))


_SOURCE_TAGS = {"base64", "url"}


def _is_block_tag(name: str) -> bool:
    return name in {
        "text",
        "image",
        "document",
        "tool_use",
        "tool_result",
        "thinking",
        "redacted_thinking",
        "tool_reference",
        "search_result",
    }
