"""The server's one exception: a client mistake, answered as an OpenAI-style error body."""

from __future__ import annotations


class RequestError(Exception):
    """A client mistake: becomes an OpenAI-style error body with this status."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
