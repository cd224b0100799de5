"""Enrollment: add a node (broker client + one-time token), exchange a token, remove a node."""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cluster_protocol.broker_url import BrokerAddress
from master_service.enrollment.dynsec import NodeClients, new_password
from master_service.enrollment.tokens import TOKEN_TTL_S, EnrollTokens, Issued

logger = logging.getLogger(__name__)

# A removed node's retained topics: without clearing them a restarted master (and Home
# Assistant) would see the node again from the broker's retained copies.
RETAINED_TYPES: Final = ("status", "machine_details")
CLEAR_TIMEOUT_S: Final = 5.0


class TokenRejectedError(RuntimeError):
    """The token is unknown, used already, or expired."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a node gets for its token: its id, broker URL (with user) and password."""

    node: str
    broker: str | None
    password: str


class Enrollment:
    """The master's side of enrollment, over the dynamic security plugin and the token table."""

    def __init__(
        self,
        clients: NodeClients,
        tokens: EnrollTokens,
        forget: Callable[[str], bool],
        broker_port: int = 1883,
        broker_tls: bool = False,
        clear_retained: Callable[[Sequence[str]], None] | None = None,
    ) -> None:
        self.clients = clients
        self.tokens = tokens
        self._forget = forget
        self.broker_port = broker_port
        self.broker_tls = broker_tls
        self._clear_retained = clear_retained or self._clear_as_master

    def broker_for(self, node: str, stored: str | None, host: str) -> str:
        """The broker URL a node gets: the one given at `add`, else the host it reached us at."""
        if stored:
            scheme, _, rest = stored.partition("://")
            return f"{scheme}://{node}@{rest.rpartition('@')[2]}"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        scheme = "mqtts" if self.broker_tls else "mqtt"
        return f"{scheme}://{node}@{host}:{self.broker_port}"

    def add(self, node: str, ttl_s: float = TOKEN_TTL_S, broker: str | None = None) -> Issued:
        """Create (or re-key) broker client `node` with its role; return a one-time token.

        The client gets a random password nobody sees: the node's own password is made when
        the token is exchanged, so no password waits anywhere in between.
        """
        self.clients.ensure(node, new_password())
        issued = self.tokens.issue(node, ttl_s, broker)
        logger.info("node %s added: enrollment token valid until %.0f", node, issued.expires)
        return issued

    def exchange(self, token: str) -> Credentials:
        """Take a token once: set a new broker password for its node and return it."""
        taken = self.tokens.take(token)
        if taken is None:
            raise TokenRejectedError("the enrollment token is unknown, used already, or expired")
        password = new_password()
        try:
            self.clients.set_password(taken.node, password)
        except BaseException:
            self.tokens.give_back(taken)
            raise
        logger.info("node %s enrolled: its broker password was handed over", taken.node)
        return Credentials(taken.node, taken.broker, password)

    def _clear_as_master(self, topics: Sequence[str]) -> None:
        dynsec = self.clients.dynsec
        prefix = f"{dynsec.client_id_prefix}-clear"
        clear_retained_topics(dynsec.address, topics, dynsec.ca_file, prefix)

    def remove(self, node: str) -> tuple[bool, bool]:
        """Delete broker client `node` (disconnected at once), forget the node, clear its retained.

        Returns (a broker client was deleted, the master knew the node).
        """
        deleted = self.clients.delete(node)
        self.tokens.drop(node)
        known = self._forget(node)
        # After the delete: the broker has published the node's will (retained) by now.
        topics = [f"{self.clients.prefix}/{node}/{kind}" for kind in RETAINED_TYPES]
        try:
            self._clear_retained(topics)
        except (OSError, ValueError, RuntimeError) as error:  # ssl.SSLError is an OSError
            logger.warning("node %s removed, but its retained topics stay: %s", node, error)
        return deleted, known


def clear_retained_topics(
    address: BrokerAddress,
    topics: Sequence[str],
    ca_file: str | None = None,
    client_id_prefix: str = "picluster-clear",
    timeout_s: float = CLEAR_TIMEOUT_S,
) -> None:
    """Publish an empty retained message (QoS 1) to each topic, which deletes its retained copy.

    A short-lived connection as the master's user, as for the plugin's commands; raises
    RuntimeError when the broker refuses or does not acknowledge in time.
    """
    acked: set[int] = set()
    refused: list[str] = []
    connected = threading.Event()
    done = threading.Event()
    wanted: set[int] = set()
    sent = threading.Event()  # every publish made: `wanted` is complete
    lock = threading.Lock()

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            refused.append(f"the broker refused the login of {address.username}: {reason}")
            done.set()
            return
        connected.set()

    def on_publish(client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with lock:
            if reason.is_failure:
                refused.append(f"the broker refused to clear a retained topic: {reason}")
            acked.add(mid)
            if sent.is_set() and wanted <= acked:
                done.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{client_id_prefix}-{secrets.token_hex(4)}",
        protocol=mqtt.MQTTv5,
    )
    client.enable_logger(logging.getLogger("paho.clear"))
    if address.username is not None:
        client.username_pw_set(address.username, address.password)
    if address.tls:
        client.tls_set(ca_certs=ca_file)
    client.on_connect = on_connect
    client.on_publish = on_publish
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 0
    client.connect(address.host, address.port, keepalive=30, properties=properties)
    client.loop_start()
    try:
        if connected.wait(timeout_s):
            # Not under `lock`: paho calls on_publish holding the lock publish() needs.
            mids = [client.publish(topic, b"", qos=1, retain=True).mid for topic in topics]
            with lock:
                wanted.update(mids)
                sent.set()
                if wanted <= acked:
                    done.set()
        finished = done.wait(timeout_s)
    finally:
        if client.is_connected():
            client.disconnect()
        client.loop_stop()
    if refused:
        raise RuntimeError(refused[0])
    if not finished:
        raise RuntimeError(
            f"the broker at {address.redacted()} did not acknowledge in {timeout_s} s"
        )
    logger.info("cleared the retained %s", ", ".join(topics))
