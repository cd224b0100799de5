"""Broker addresses: `mqtt://[user[:pass]@]host[:port]`, and `mqtts://` for TLS."""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote, unquote, urlsplit

DEFAULT_PORTS: Final = {"mqtt": 1883, "mqtts": 8883}


class BrokerUrlError(ValueError):
    """A broker URL that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where and how to reach the broker."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def redacted(self) -> str:
        """The URL with the password left out, safe for logs and the API."""
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse a broker URL; raise BrokerUrlError naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS:
        raise BrokerUrlError(f"broker URL {url!r} must start with mqtt:// or mqtts://")
    if not parts.hostname:
        raise BrokerUrlError(f"broker URL {url!r} has no host")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError as error:
        raise BrokerUrlError(f"broker URL {url!r} has a bad port: {error}") from error
    if parts.path not in ("", "/") or parts.query:
        raise BrokerUrlError(f"broker URL {url!r} must not have a path or query")
    return BrokerAddress(
        host=parts.hostname,
        port=port,
        tls=parts.scheme == "mqtts",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def split_password(url: str) -> tuple[str, str | None]:
    """The URL without its password, and the password (None when it has none)."""
    address = parse_broker_url(url)
    if address.password is None:
        return url, None
    scheme = "mqtts" if address.tls else "mqtt"
    user = f"{quote(address.username, safe='')}@" if address.username else ""
    host = f"[{address.host}]" if ":" in address.host else address.host
    return f"{scheme}://{user}{host}:{address.port}", address.password


def connect_failure_reason(error: BaseException | None, address: BrokerAddress) -> str:
    """Say in words why a connection attempt failed, naming the setting to check."""
    # Only a TLS connection raises SSL errors, and it has loaded ssl: a node on plain MQTT
    # need not load it (libssl and libcrypto, about 5 MiB) to learn that a refusal is not one.
    if "ssl" in sys.modules:
        import ssl

        if isinstance(error, ssl.SSLCertVerificationError):
            return (
                f"TLS certificate of {address.host} not trusted ({error.verify_message}): "
                "check that ca_file is the CA that signed the broker's certificate"
            )
        if isinstance(error, ssl.SSLError):
            hint = " (is that port a TLS listener?)" if "VERSION" in str(error.reason) else ""
            return f"TLS handshake failed: {error.reason or error}{hint}"
    if isinstance(error, ConnectionRefusedError):
        return f"connection refused on port {address.port} (is the broker running there?)"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve host {address.host!r}: {error.strerror}"
    if isinstance(error, TimeoutError):
        return "timed out (network, firewall or wrong address)"
    if error is None:
        return "unknown error"
    return f"{type(error).__name__}: {error}"
