"""Token check for every route but health: `x-api-key` or `Authorization: Bearer`, compared in constant
time."""

from __future__ import annotations

import hmac
from collections.abc import Callable

from quart import request

from daemon.protocol.errors import ApiError

# Probes that must answer without a token: health checks, and Claude Code's reachability HEADs.
OPEN_ROUTES = {("GET", "/health"), ("HEAD", "/health"), ("HEAD", "/"), ("HEAD", "/api/hello")}


def presented_tokens() -> list[str]:
    tokens = []
    if api_key := request.headers.get("x-api-key"):
        tokens.append(api_key.strip())
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        tokens.append(credentials.strip())
    return tokens


def token_checker(expected: Callable[[], str | None]) -> Callable[[], None]:
    """A before-request hook; `expected` is asked on every request so a changed token applies at once."""

    def check() -> None:
        token = expected()
        if token is None or (request.method, request.path) in OPEN_ROUTES:
            return
        presented = presented_tokens()
        if not presented:
            raise ApiError(
                401, "missing token: send it as x-api-key or Authorization: Bearer", should_retry=False
            )
        if not any(hmac.compare_digest(p.encode(), token.encode()) for p in presented):
            raise ApiError(401, "invalid token", should_retry=False)

    return check
