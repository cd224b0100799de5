"""Open the ingest connection: TCP (TLS with the ssl module), CONNECT, and the broker's CONNACK."""

from __future__ import annotations

import logging
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Final

import mqtt5

from cluster_protocol.broker_url import BrokerAddress
from cluster_protocol.config import SettingsError

logger = logging.getLogger(__name__)

# PUBACKs wait until a message's effects are committed, so the broker must let that many
# messages be in flight to us at once (Mosquitto's default for clients that do not ask is 20).
# A commit every 0.02-0.1 s leaves about 2,000 in flight at 20,000 msg/s; 16,384 leaves room
# for Mosquitto 2.0's overrun of it (mqtt5_listener.OVERRUN_FACTOR) within the 65,535 packet
# ids that can be in flight at once: past that the broker must reuse an id still unacknowledged.
# (Never 65,535: mqtt5 0.8 leaves the property out at the protocol's default value, and
# Mosquitto 2.0 then applies its own max_inflight_messages, 20.)
RECEIVE_MAXIMUM: Final = 16_384
# The largest packet we take: an envelope is at most 64 KiB, and a bigger one must still
# reach the router to be counted as `oversize` (Mosquitto drops what exceeds this for us).
MAX_PACKET_BYTES: Final = 1024 * 1024
CONNACK_TIMEOUT_S: Final = 10.0


class RefusedError(Exception):
    """The broker answered CONNECT with a failure reason code."""

    def __init__(self, reason: mqtt5.ConnAckReasonCode) -> None:
        super().__init__(reason_text(reason))
        self.reason = reason


def reason_text(reason: mqtt5.ConnAckReasonCode | mqtt5.DisconnectReasonCode) -> str:
    """A reason code in words, as paho and the MQTT 5 spec name it ("Not authorized")."""
    return reason.name.replace("_", " ").capitalize().replace("qos", "QoS")


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """A client context that checks the broker's certificate and host name; SettingsError."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as error:
        message = f"cannot load CA certificate {ca_file!r}: {error}"
        raise SettingsError("ca_file", message) from error


@dataclass
class Connection:
    """A connected socket after a successful CONNACK, with any bytes read past it."""

    sock: socket.socket
    session_present: bool
    leftover: bytes
    server_keepalive: int | None


def connect_packet(
    client_id: str,
    address: BrokerAddress,
    keepalive: int,
    session_expiry: int,
    receive_maximum: int = RECEIVE_MAXIMUM,
) -> bytes:
    """CONNECT for a persistent session: clean start off, an expiry, Receive Maximum."""
    password = address.password.encode() if address.password is not None else None
    # Without clean_start=False on every connect and an expiry, Mosquitto drops the
    # session and everything queued for us while we were away (docs/protocol.md).
    packet = mqtt5.ConnectPacket(
        client_id,
        username=address.username,
        password=password,
        clean_start=False,
        keep_alive=keepalive,
        session_expiry_interval=session_expiry,
        receive_max=receive_maximum,
        max_packet_size=MAX_PACKET_BYTES,
    )
    return packet.write()


def open_connection(
    address: BrokerAddress,
    context: ssl.SSLContext | None,
    connect: bytes,
    timeout_s: float = CONNACK_TIMEOUT_S,
) -> Connection:
    """Connect, send CONNECT, wait for CONNACK; raise OSError, ssl errors or RefusedError."""
    deadline = time.monotonic() + timeout_s
    raw = socket.create_connection((address.host, address.port), timeout=timeout_s)
    sock: socket.socket = raw
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context is not None:
            sock = context.wrap_socket(raw, server_hostname=address.host)
        sock.sendall(connect)
        received = b""
        while True:
            try:
                packet, size = mqtt5.read(memoryview(received))
                break
            except IndexError:
                pass  # not all of it yet
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no CONNACK from the broker (is it frozen?)")
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("the broker closed the connection before CONNACK")
            received += chunk
        if not isinstance(packet, mqtt5.ConnAckPacket):
            raise ConnectionError(f"the broker answered CONNECT with {type(packet).__name__}")
        if packet.reason_code != mqtt5.ConnAckReasonCode.SUCCESS:
            raise RefusedError(packet.reason_code)
        return Connection(sock, packet.session_present, received[size:], packet.server_keep_alive)
    except BaseException:
        sock.close()
        raise
