"""A TCP relay between an MQTT client and a real broker that can slip bytes to the client.

It records what each client connection sent (to read the client's DISCONNECT reason code)
and, on request, writes bytes of the test's choosing to the client between two chunks from
the broker: a malformed or unexpected packet, as if the broker had sent it. It can also be
cut like a network link: live connections dropped, new ones refused until restored.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from dataclasses import dataclass, field

import mqtt5


@dataclass
class Relay:
    """One client connection and its upstream connection to the broker."""

    client: socket.socket
    upstream: socket.socket
    sent_by_client: bytearray = field(default_factory=bytearray)
    inject: list[bytes] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)

    def client_packets(self) -> list[mqtt5.Packet]:
        """Every whole packet the client sent on this connection, in order."""
        packets: list[mqtt5.Packet] = []
        view = memoryview(bytes(self.sent_by_client))
        position = 0
        while position < len(view):
            try:
                packet, size = mqtt5.read(view[position:])
            except (IndexError, ValueError):
                break
            packets.append(packet)
            position += size
        return packets


class MqttProxy:
    """Listens on `host`:free port and relays every connection to the broker's port."""

    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream_port = upstream_port
        self._server = socket.create_server((host, 0))
        self.host = host
        self.port: int = self._server.getsockname()[1]
        self.relays: list[Relay] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._cut = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="mqtt-proxy", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self._server.settimeout(0.2)
        while not self._stopping.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._cut.is_set():  # as a router answering with a reset
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            relay = Relay(client, upstream)
            with self._lock:
                self.relays.append(relay)
            threading.Thread(target=self._pump, args=(relay,), daemon=True).start()

    def _pump(self, relay: Relay) -> None:
        selector = selectors.DefaultSelector()
        selector.register(relay.client, selectors.EVENT_READ, "client")
        selector.register(relay.upstream, selectors.EVENT_READ, "upstream")
        try:
            while not self._stopping.is_set():
                with self._lock:
                    pending, relay.inject[:] = list(relay.inject), []
                for data in pending:
                    relay.client.sendall(data)
                for key, _ in selector.select(0.05):
                    source = relay.client if key.data == "client" else relay.upstream
                    chunk = source.recv(65536)
                    if not chunk:
                        return
                    if key.data == "client":
                        relay.sent_by_client += chunk
                        relay.upstream.sendall(chunk)
                    else:
                        relay.client.sendall(chunk)
        except OSError:
            return
        finally:
            selector.close()
            for sock in (relay.client, relay.upstream):
                with contextlib.suppress(OSError):
                    sock.close()
            relay.closed.set()

    def latest(self, client_id: str) -> Relay | None:
        """The newest connection of the client with that id, or None before it connects."""
        with self._lock:
            relays = list(self.relays)
        for relay in reversed(relays):
            packets = relay.client_packets()
            first = packets[0] if packets else None
            if isinstance(first, mqtt5.ConnectPacket) and first.client_id == client_id:
                return relay
        return None

    def send_to_client(self, client_id: str, data: bytes) -> Relay:
        """Write `data` to that client's newest connection, as if the broker had sent it."""
        relay = self.latest(client_id)
        if relay is None:
            raise AssertionError(f"no connection from {client_id} through the relay")
        with self._lock:
            relay.inject.append(data)
        return relay

    @property
    def connections(self) -> int:
        """Connections relayed to the broker so far."""
        with self._lock:
            return len(self.relays)

    def cut(self) -> None:
        """Drop every live connection and refuse new ones until `restore`."""
        self._cut.set()
        with self._lock:
            live = [relay for relay in self.relays if not relay.closed.is_set()]
        for relay in live:
            for sock in (relay.client, relay.upstream):
                # shutdown wakes the pump's select at once; close alone may not.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        """Relay new connections again."""
        self._cut.clear()

    def close(self) -> None:
        """Stop relaying and close every connection."""
        self._stopping.set()
        self._server.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MqttProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
