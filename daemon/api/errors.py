"""Every error leaves as its API's envelope (OpenAI's under `/v1/chat/`, Anthropic's elsewhere), with the
request id in the header (and in Anthropic's body), and one log line."""

from __future__ import annotations

import logging

from quart import Quart, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, RequestTimeout

from daemon.anthropic import errors as anthropic_errors
from daemon.chat.errors import RequestError
from daemon.openai import errors as openai_errors

log = logging.getLogger(__name__)


OPENAI_PATHS = "/v1/chat/"


def error_response(error: RequestError, *, logged: bool = False) -> Response:
    """The error's envelope; logged here in one line unless it was already."""
    wire = openai_errors if request.path.startswith(OPENAI_PATHS) else anthropic_errors
    if not logged:
        level = logging.WARNING if error.status >= 500 else logging.INFO
        log.log(level, "%d %s: %s", error.status, wire.error_type(error.status), error.message)
    response = jsonify(wire.error_body(error, g.get("request_id")))
    response.status_code = error.status
    if error.should_retry is not None:
        response.headers["x-should-retry"] = "true" if error.should_retry else "false"
    return response


def register(app: Quart) -> None:
    @app.errorhandler(RequestError)
    async def api_error(error: RequestError) -> Response:
        return error_response(error)

    @app.errorhandler(RequestEntityTooLarge)
    async def too_large(error: RequestEntityTooLarge) -> Response:
        limit = app.config["MAX_CONTENT_LENGTH"]
        return error_response(
            RequestError(
                413, f"request body exceeds the {limit}-byte limit (max_body_bytes)", should_retry=False
            )
        )

    @app.errorhandler(RequestTimeout)
    async def body_too_slow(error: RequestTimeout) -> Response:
        seconds = current_app.config["BODY_TIMEOUT"]
        return error_response(
            RequestError(
                408, f"request body did not arrive within {seconds:g}s (body_timeout): send it faster"
            )
        )

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        if status == 404:
            message = "not found: no such endpoint"
        elif status == 405:
            message = f"method not allowed: use {', '.join(sorted(error.valid_methods or []))}"
        else:
            message = error.description or error.name
        response = error_response(RequestError(status, message))
        if status == 405 and error.valid_methods:
            response.headers["Allow"] = ", ".join(sorted(error.valid_methods))
        return response

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        log.exception("unhandled error in request %s", g.get("request_id"))
        return error_response(RequestError(500, "internal server error; see the server log"), logged=True)
