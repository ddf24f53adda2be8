"""Every error leaves as an Anthropic envelope, with the request id in body and header, and one log line."""

from __future__ import annotations

import logging

from quart import Quart, Response, current_app, g, jsonify
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, RequestTimeout

from daemon.anthropic.errors import ApiError, envelope, error_type

log = logging.getLogger(__name__)


def error_response(error: ApiError) -> Response:
    log.log(
        logging.WARNING if error.status >= 500 else logging.INFO,
        "%d %s: %s",
        error.status,
        error.type,
        error.message,
    )
    response = jsonify(error.body(g.get("request_id")))
    response.status_code = error.status
    if error.should_retry is not None:
        response.headers["x-should-retry"] = "true" if error.should_retry else "false"
    return response


def register(app: Quart) -> None:
    @app.errorhandler(ApiError)
    async def api_error(error: ApiError) -> Response:
        return error_response(error)

    @app.errorhandler(RequestEntityTooLarge)
    async def too_large(error: RequestEntityTooLarge) -> Response:
        limit = app.config["MAX_CONTENT_LENGTH"]
        return error_response(
            ApiError(413, f"request body exceeds the {limit}-byte limit (max_body_bytes)", should_retry=False)
        )

    @app.errorhandler(RequestTimeout)
    async def body_too_slow(error: RequestTimeout) -> Response:
        seconds = current_app.config["BODY_TIMEOUT"]
        return error_response(
            ApiError(408, f"request body did not arrive within {seconds:g}s (body_timeout): send it faster")
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
        response = error_response(ApiError(status, message))
        if status == 405 and error.valid_methods:
            response.headers["Allow"] = ", ".join(sorted(error.valid_methods))
        return response

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        log.exception("unhandled error in request %s", g.get("request_id"))
        body = envelope(error_type(500), "internal server error; see the server log", g.get("request_id"))
        response = jsonify(body)
        response.status_code = 500
        return response
