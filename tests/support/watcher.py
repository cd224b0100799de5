"""A paho subscriber that records QoS and the retain flag (capmqtt records neither)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.support.waiting import wait_until


@dataclass(frozen=True)
class Seen:
    """One message as a subscriber saw it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


class Watcher:
    """Subscribe to a filter and keep every message; waits for the SUBACK."""

    def __init__(
        self,
        host: str,
        port: int,
        topic_filter: str = "cluster/#",
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.messages: list[Seen] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._filter = topic_filter
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, client_id="")
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise AssertionError(f"watcher could not subscribe to {topic_filter}")

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        client.subscribe(self._filter, qos=1)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, rcs: list[ReasonCode], props: Any
    ) -> None:
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Seen(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain)))

    def on(self, topic: str) -> list[Seen]:
        """Messages seen on one exact topic, oldest first."""
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(self, topic: str, count: int = 1, timeout_s: float = 10.0) -> list[Seen]:
        """Wait until `count` messages arrived on `topic`; return them."""
        return wait_until(
            lambda: found if len(found := self.on(topic)) >= count else None,
            timeout_s,
            message=f"{count} message(s) on {topic}",
        )

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


__all__ = ["Properties", "Seen", "Watcher"]
