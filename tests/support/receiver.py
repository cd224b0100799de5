"""A real HTTP receiver for notifications: Apprise's `json://` posts here; it can play down."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.waiting import wait_until


@dataclass(frozen=True)
class Received:
    """One request as it arrived, and what the receiver answered."""

    method: str
    path: str
    body: dict[str, Any]
    status: int

    @property
    def title(self) -> str:
        """The notification's title (Apprise json:// sends `title`, `message`, `type`)."""
        return str(self.body.get("title", ""))


class Receiver:
    """Records every request; answers 200, or 500 while `down`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[Received] = []
        self._failing = False
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = {"raw": raw.decode(errors="replace")}
                receiver._answer(self, "POST", body)

            def do_GET(self) -> None:
                receiver._answer(self, "GET", {})

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        """The port it listens on (127.0.0.1)."""
        return int(self._server.server_address[1])

    def url(self, path: str = "/hook", scheme: str = "json") -> str:
        """An Apprise URL (json://) or plain URL (http://) to this receiver."""
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def down(self) -> None:
        """Answer 500 from now on."""
        with self._lock:
            self._failing = True

    def up(self) -> None:
        """Answer 200 from now on."""
        with self._lock:
            self._failing = False

    def _answer(self, handler: BaseHTTPRequestHandler, method: str, body: dict[str, Any]) -> None:
        with self._lock:
            status = 500 if self._failing else 200
            self._requests.append(Received(method, handler.path, body, status))
        handler.send_response(status)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def requests(self, method: str = "POST") -> list[Received]:
        """Every request of that method so far, in arrival order."""
        with self._lock:
            return [r for r in self._requests if r.method == method]

    def delivered(self) -> list[str]:
        """Titles of the notifications accepted (answered 200), in order."""
        return [r.title for r in self.requests() if r.status == 200]

    def wait_for(self, condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
        """Wait until `condition()` holds (re-checked as requests arrive)."""
        wait_until(condition, timeout_s, 0.05, what)

    def wait_delivered(self, title: str, count: int = 1, timeout_s: float = 30.0) -> None:
        """Wait until `title` was accepted `count` times."""
        self.wait_for(lambda: self.delivered().count(title) >= count, repr(title), timeout_s)

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
