"""A dead man's switch: GET a push URL (Healthchecks, Uptime Kuma) while the master is healthy.

The outside service alerts when the pings stop, which covers what the master cannot report
itself: the master, its host or its network being down. While `healthy()` is False the ping
is skipped on purpose, so the outside service notices that too.
"""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Final

logger = logging.getLogger(__name__)

TIMEOUT_S: Final = 10.0
USER_AGENT: Final = "picluster-heartbeat"


def _label(url: str) -> str:
    """Scheme and host only: push URLs carry their secret in the path."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}"


class Heartbeat(threading.Thread):
    """Pings `url` every `interval_s` while `healthy()` is True; counts and logs outages once."""

    def __init__(
        self,
        url: str,
        interval_s: float,
        healthy: Callable[[], bool],
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        super().__init__(name="picluster-heartbeat", daemon=True)
        if interval_s <= 0:
            raise ValueError("interval_s must be more than 0")
        self.url = url
        self.label = _label(url)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._healthy = healthy
        self._stopping = threading.Event()
        self.sent = 0  # pings the URL answered with 2xx
        self.failed = 0  # pings that failed (error status, network, timeout)
        self.skipped = 0  # pings left out while unhealthy
        self._failures = 0  # failed pings in a row
        self._was_healthy = True

    def stop(self) -> None:
        """End the thread now (an HTTP request under way finishes first)."""
        self._stopping.set()
        if self.is_alive():
            self.join(timeout=self.timeout_s + 5)

    def run(self) -> None:
        """Beat at once, then every interval, until stopped."""
        while not self._stopping.is_set():
            self.beat()
            self._stopping.wait(self.interval_s)

    def beat(self) -> bool:
        """One turn: ping if healthy; True when the URL was reached."""
        if not self._is_healthy():
            self.skipped += 1
            if self._was_healthy:
                logger.warning("master unhealthy: heartbeat to %s paused", self.label)
            self._was_healthy = False
            return False
        if not self._was_healthy:
            logger.info("master healthy again: heartbeat to %s resumed", self.label)
        self._was_healthy = True
        try:
            request = urllib.request.Request(self.url, headers={"User-Agent": USER_AGENT})
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
        except Exception as error:  # HTTPError (non-2xx), URLError, timeout: all an outage
            self.failed += 1
            self._failures += 1
            if self._failures == 1:
                logger.error("heartbeat to %s failed: %s; retrying", self.label, _reason(error))
            return False
        self.sent += 1
        if self._failures:
            logger.info("heartbeat reaches %s again after %d failures", self.label, self._failures)
        self._failures = 0
        return True

    def _is_healthy(self) -> bool:
        try:
            return bool(self._healthy())
        except Exception:  # a broken health check means: not healthy
            if self._was_healthy:  # once, as the pause it causes is logged once
                logger.exception("the health check for the heartbeat failed")
            return False


def _reason(error: Exception) -> str:
    """Why a ping failed, without the URL (urllib's messages name only status or cause)."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code}"
    if isinstance(error, urllib.error.URLError):
        return f"{error.reason}"
    return f"{type(error).__name__}: {error}"
