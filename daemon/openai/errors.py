"""OpenAI's error envelope: `{"error": {"message", "type", "param", "code"}}`, with the types its API gives
each status, and how a pydantic validation failure becomes a message and a `param` that name the field."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from daemon.chat.errors import RequestError, invalid_request
from daemon.chat.limits import MAX_BODY_DEPTH

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
    529: "server_error",
}

# The `code` OpenAI puts beside some types, for clients that branch on it.
_CODES = {401: "invalid_api_key", 404: "model_not_found", 413: "request_too_large", 529: "overloaded"}


def error_type(status: int) -> str:
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "server_error"


def error_body(error: RequestError, request_id: str | None = None) -> dict[str, Any]:
    code = _CODES.get(error.status)
    if error.status == 404 and error.param != "model":
        code = None
    return {
        "error": {
            "message": error.message,
            "type": error_type(error.status),
            "param": error.param,
            "code": code,
        }
    }


class FieldError(ValueError):
    """A validator's complaint about `path` (relative to the model it validates), so that the 400 can name
    the field in `param` as OpenAI does."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path
        self.message = message


# The tags of the discriminated unions in `daemon.openai.messages`: pydantic puts the one it chose into an
# error's location, after the list position ("messages", 0, "user", "content").
UNION_TAGS = frozenset({"system", "developer", "user", "assistant", "tool", "text", "image_url", "refusal"})


def from_validation_error(error: ValidationError) -> RequestError:
    """The first problem pydantic found, as `path: what is wrong` with `param` the path, written as OpenAI
    writes it (`messages[0].content[1].image_url.url`)."""
    first = error.errors(include_url=False)[0]
    path = field_path(first["loc"])
    kind = first["type"]
    context = first.get("ctx", {})
    if kind == "json_invalid":
        return invalid_request(_json_problem(first["msg"].removeprefix("Invalid JSON: ")))
    if isinstance(context.get("error"), FieldError):
        problem: FieldError = context["error"]
        path = ".".join(part for part in (path, problem.path) if part)
        message = problem.message
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        discriminator = str(context.get("discriminator", "")).strip("'")
        path = f"{path}.{discriminator}"
        if kind == "union_tag_invalid":
            message = f"unknown value '{context.get('tag')}' (expected one of {context.get('expected_tags')})"
        else:
            message = "Field required"
    elif kind == "missing":
        message = "Field required"
    else:
        message = first["msg"].removeprefix("Value error, ")
    return invalid_request(f"{path}: {message}" if path else message, param=path or None)


def field_path(loc: tuple[str | int, ...]) -> str:
    """A pydantic location as OpenAI names a field: union tags left out, list positions in brackets."""
    tags = {i for i, part in enumerate(loc) if i > 0 and isinstance(loc[i - 1], int) and part in UNION_TAGS}
    return written_path([part for i, part in enumerate(loc) if i not in tags])


def written_path(parts: Sequence[str | int]) -> str:
    """Field names and list positions as one path: `messages[0].content[1].image_url.url`."""
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path


def _json_problem(problem: str) -> str:
    if problem.startswith("recursion limit exceeded"):
        where = problem.removeprefix("recursion limit exceeded")
        return f"request body: arrays and objects nest more than {MAX_BODY_DEPTH} levels deep{where}"
    return f"request body is not valid JSON: {problem}"
