"""A real HTTP receiver for notifications: Apprise's `json://` posts here; paths can play down.

Each path answers 200, or 500 while a test marks it down (for a number of requests, or until
told). Waits are woken by each request, not by polling.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WAIT_S = 15.0


@dataclass(frozen=True, slots=True)
class Request:
    """One request the receiver answered."""

    method: str
    path: str
    status: int
    payload: dict[str, Any]


class Receiver:
    """A webhook endpoint on 127.0.0.1: records requests, refuses paths the test marks down."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.requests: list[Request] = []
        self._down: dict[str, int] = {}  # path: requests still to refuse (-1: until told)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                receiver.answer(self, "POST", json.loads(self.rfile.read(length) or b"{}"))

            def do_GET(self) -> None:
                receiver.answer(self, "GET", {})

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the test's output is the assertions."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def url(self, path: str) -> str:
        """An Apprise URL posting JSON to this path."""
        return f"json://127.0.0.1:{self.port}/{path}"

    def down(self, path: str, requests: int = -1) -> None:
        """Answer 500 on this path: for that many requests, or until `up`."""
        with self.changed:
            self._down[path] = requests

    def up(self, path: str) -> None:
        """Answer 200 on this path again."""
        with self.changed:
            self._down.pop(path, None)

    def answer(self, handler: BaseHTTPRequestHandler, method: str, payload: Any) -> None:
        """Record the request and answer it as configured."""
        path = handler.path.lstrip("/")
        with self.changed:
            left = self._down.get(path, 0)
            if left > 0:
                self._down[path] = left - 1
            status = 500 if left else 200
            self.requests.append(Request(method, path, status, payload))
            self.changed.notify_all()
        handler.send_response(status)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def accepted(self, path: str) -> list[str]:
        """Titles of the notifications this path accepted, in order."""
        with self.changed:
            return [
                r.payload["title"]
                for r in self.requests
                if r.path == path and r.status == 200 and r.method == "POST"
            ]

    def count(self, path: str, status: int | None = None, method: str = "POST") -> int:
        """Requests on this path (with that answer)."""
        with self.changed:
            return sum(
                1
                for r in self.requests
                if r.path == path and r.method == method and status in (None, r.status)
            )

    def wait(self, condition: Callable[[], bool], what: str) -> None:
        """Wait until a request makes `condition` true (woken by each request, no polling)."""
        with self.changed:
            assert self.changed.wait_for(condition, WAIT_S), f"timed out waiting for {what}"

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()

    def http_url(self, path: str) -> str:
        """A plain http:// URL of this path (a heartbeat's)."""
        return f"http://127.0.0.1:{self.port}/{path}"

    def wait_accepted(
        self, path: str, title: str, count: int = 1, timeout_s: float = WAIT_S
    ) -> None:
        """Wait until this path accepted `title` `count` times."""
        with self.changed:
            done = self.changed.wait_for(
                lambda: self.accepted(path).count(title) >= count, timeout_s
            )
        assert done, f"timed out waiting for {title!r} on /{path}"
