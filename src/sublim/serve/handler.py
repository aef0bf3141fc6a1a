"""The HTTP side of ``sublim serve``, below the routes: reading a request within its deadline and its size limit,
the API key, and answers as OpenAI-style JSON (errors included, also the base class's own)."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from sublim.serve.errors import RequestError
from sublim.serve.paths import FILES
from sublim.serve.service import Service


class Handler(BaseHTTPRequestHandler):
    """One connection's requests; the routes (a subclass) add ``do_GET`` and ``do_POST``."""

    protocol_version = "HTTP/1.1"
    server_version = "sublim-serve"
    timeout = 30  # a client that stops sending mid-request loses its connection, not a server thread
    svc: Service
    """Set on the class the server is given (one per server)."""

    def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per error only
        pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The base class's own errors (a malformed request line, an unsupported method) as OpenAI JSON."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # an unparsable request line: answer with a status line anyway
            self.request_version = "HTTP/1.0"
        self.reply_error(code, message or explain or "bad request")

    def handle_one_request(self) -> None:
        """Every request gets an answer: a bug in a handler is a 500 with a JSON body, never a dropped
        connection or a traceback sent to the client. Reading a request (its line, headers and body) has
        ``Limits.read_s`` in all: a client that trickles bytes loses its connection then."""
        self._deadline = threading.Timer(self.svc.limits.read_s, self._cut)
        self._deadline.daemon = True
        self._deadline.start()
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # the server keeps serving; one line on stderr says what failed
            print(f"sublim serve: internal error on {self.command} {self.path}: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.reply_error(500, f"internal server error ({type(exc).__name__})", kind="server_error")
        finally:
            self._deadline.cancel()

    def _cut(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RD)  # the pending read returns: the request ends

    def request_read(self) -> None:
        """The request is read: the reading deadline no longer applies (the answer may take longer)."""
        self._deadline.cancel()

    def _refuse_method(self) -> None:
        self.close_connection = True
        self.reply_error(405, f"method {self.command} is not allowed on {self.path}: use GET or POST",
                         headers={"Allow": "GET, POST"})

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _refuse_method

    def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        """Answer with ``body`` as JSON (sent as it is: an injected fault may break it)."""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def reply_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self.reply(status, json.dumps(obj).encode(), headers)

    def reply_error(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                    headers: dict[str, str] | None = None) -> None:
        """An OpenAI error body."""
        self.reply_json(status, {"error": {"message": message, "type": kind, "param": param, "code": None}},
                        headers)

    def reply_with(self, make: Callable[[], Any]) -> None:
        """Answer 200 with what ``make`` returns, or the client's mistake it raised."""
        try:
            self.reply_json(200, make())
        except RequestError as exc:
            self.reply_error(exc.status, exc.message, exc.param)

    def authorized(self) -> bool:
        """True when no key is needed or the right one was sent; False after answering 401."""
        if self.svc.api_key is None:
            return True
        if self.headers.get("Authorization", "") == f"Bearer {self.svc.api_key}":
            return True
        self.reply_error(401, "invalid or missing API key (send Authorization: Bearer <key>)",
                         kind="authentication_error")
        return False

    def _discard(self, length: int, most: int = 32 << 20) -> None:
        """Read and drop an oversized body in small chunks (memory stays flat), so that the client, still
        sending, reads the 413 rather than a reset connection; a body over ``most`` is not waited for."""
        left = length if 0 < length <= most else 0
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                break
            left -= len(chunk)

    def read_body(self) -> bytes | None:
        """The body, or None after answering 411/413 (an oversized body is never read: the connection closes)."""
        limits = self.svc.limits
        limit = limits.max_upload_bytes if self.path.split("?")[0] == FILES else limits.max_body_bytes
        if "Content-Length" not in self.headers:
            if "Transfer-Encoding" not in self.headers:
                return b""  # a bodiless POST (a job's cancel) is a request with an empty body
            self.close_connection = True
            self.reply_error(411, "send a Content-Length header (chunked bodies are not accepted)")
            return None
        try:
            length = int(self.headers["Content-Length"])
        except ValueError:
            length = -1
        if not 0 <= length <= limit:
            self.close_connection = True
            self._discard(length)
            said = self.headers["Content-Length"]
            self.reply_error(413, f"request body must be 0..{limit} bytes (this one says {said})")
            return None
        return self.rfile.read(length)
