"""Just enough MQTT 3.1.1 to publish QoS 1 packets fast, and the v1 envelopes that go in them.

The load generator writes packets straight to a socket so that one Python process can offer
far more than the master can take (a paho publisher tops out near 12k msg/s at QoS 1 on this
machine, about what the master consumes); the broker still parses, acknowledges and routes
every packet as it would a node's.
"""

from __future__ import annotations

import json
import socket
from typing import Any, Final

METRICS_PAYLOAD: Final[dict[str, Any]] = {
    "cpu_percent": 12.5,
    "cpu_percent_per_core": [10.1, 14.0, 9.8, 16.2],
    "load_1": 0.42,
    "load_5": 0.37,
    "load_15": 0.31,
    "memory_total_bytes": 4_025_409_536,
    "memory_available_bytes": 3_120_562_176,
    "memory_percent": 22.5,
    "swap_percent": 0.0,
    "disks": [
        {"mount": "/", "total_bytes": 31_254_278_144, "used_bytes": 5_112_365_056, "percent": 17.2},
        {
            "mount": "/boot/firmware",
            "total_bytes": 535_805_952,
            "used_bytes": 63_963_136,
            "percent": 12.6,
        },
    ],
    "disk_read_bytes_per_s": 2048.0,
    "disk_write_bytes_per_s": 18_432.7,
    "net_rx_bytes_per_s": 1532.25,
    "net_tx_bytes_per_s": 2210.5,
    "temperature_celsius": 47.2,
    "uptime_s": 86_400.5,
    "process_count": 142,
    "throttled": {"raw": "0x0", "under_voltage": False, "throttled": False},
    "spool_dropped": 0,
}
"""A Raspberry Pi 4's metrics payload as the node sends it (about 650 bytes encoded)."""


def details_payload(node: str, interval_s: float) -> dict[str, Any]:
    """A machine_details payload for a simulated Pi 4."""
    return {
        "hostname": node,
        "cpu_percent_used": 12.5,
        "ram": 4_025_409_536,
        "cpu": "Cortex-A72",
        "cpu_cores": 4,
        "os": "Debian GNU/Linux 12 (bookworm)",
        "kernel": "6.6.51+rpt-rpi-v8",
        "arch": "aarch64",
        "model": "Raspberry Pi 4 Model B Rev 1.5",
        "boot_time": 1_764_000_000.0,
        "disk_total_bytes": 31_254_278_144,
        "ip_addresses": ["192.0.2.10"],
        "agent_version": "0.1.0",
        "interval_s": interval_s,
    }


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def envelope_bytes(message_type: str, node: str, ts: float, seq: int, payload: Any) -> bytes:
    """One v1 envelope, compact JSON."""
    return b'{"v":1,"type":"%s","node":"%s","ts":%.6f,"seq":%d,"payload":%s}' % (
        message_type.encode(),
        node.encode(),
        ts,
        seq,
        _compact(payload),
    )


def varint(length: int) -> bytes:
    """MQTT's variable-length 'remaining length' encoding."""
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def topic_field(topic: str) -> bytes:
    """A topic as a length-prefixed UTF-8 string."""
    data = topic.encode()
    return len(data).to_bytes(2, "big") + data


def publish_packet(topic: bytes, packet_id: int, payload: bytes, retain: bool = False) -> bytes:
    """A QoS 1 PUBLISH; `topic` is already length-prefixed (see topic_field)."""
    header = 0x33 if retain else 0x32
    return (
        bytes((header,))
        + varint(len(topic) + 2 + len(payload))
        + topic
        + packet_id.to_bytes(2, "big")
        + payload
    )


def connect_packet(client_id: str, keepalive_s: int = 0) -> bytes:
    """CONNECT, MQTT 3.1.1, clean session, no will, no credentials."""
    body = (
        topic_field("MQTT")
        + bytes((4, 0x02))
        + keepalive_s.to_bytes(2, "big")
        + topic_field(client_id)
    )
    return bytes((0x10,)) + varint(len(body)) + body


def open_connection(host: str, port: int, client_id: str) -> socket.socket:
    """Connect and wait for a successful CONNACK; raise ConnectionError otherwise."""
    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect_packet(client_id))
    connack = _read_exactly(sock, 4)
    if connack[0] != 0x20 or connack[3] != 0:
        raise ConnectionError(f"broker refused the connection: {connack.hex()}")
    sock.settimeout(None)
    return sock


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        data += chunk
    return data


def publish_one(host: str, port: int, topic: str, payload: bytes, retain: bool = False) -> None:
    """Publish one QoS 1 message and wait for its PUBACK."""
    with open_connection(host, port, "bench-one") as sock:
        sock.sendall(publish_packet(topic_field(topic), 1, payload, retain))
        puback = _read_exactly(sock, 4)
        if puback[0] != 0x40:
            raise ConnectionError(f"expected PUBACK, got {puback.hex()}")
        sock.sendall(b"\xe0\x00")  # DISCONNECT
