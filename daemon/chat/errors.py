"""The one error a request can fail with, in no API's words: an HTTP status, a message naming the field or
limit, and whether a retry can help. Each wire package writes it as its own error envelope."""

from __future__ import annotations


class RequestError(Exception):
    """An error the client should see."""

    def __init__(
        self, status: int, message: str, *, should_retry: bool | None = None, param: str | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.should_retry = should_retry
        self.param = param  # the request field at fault, when one is (OpenAI's envelope names it)


def invalid_request(message: str, *, param: str | None = None) -> RequestError:
    return RequestError(400, message, should_retry=False, param=param)
