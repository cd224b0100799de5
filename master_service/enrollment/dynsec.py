"""A client of Mosquitto's dynamic security plugin: JSON commands on `$CONTROL/dynamic-security/v1`.

Each call opens a short-lived MQTT connection as the master's broker user (which must hold the
plugin's `admin` role), publishes one batch of commands, each with its own `correlationData`,
and waits for the plugin's answer on `$CONTROL/dynamic-security/v1/response`. The master's
ingest connection is left alone: a control call never delays or reorders ingest.
"""

from __future__ import annotations

import json
import logging
import secrets
import ssl
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cluster_protocol.broker_url import BrokerAddress

logger = logging.getLogger(__name__)

CONTROL_TOPIC: Final = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC: Final = f"{CONTROL_TOPIC}/response"
DEFAULT_TIMEOUT_S: Final = 5.0
# After the plugin failed to answer, calls fail at once for this long: a broker without the
# plugin would otherwise hold every enrollment request for the whole timeout.
SILENT_BACKOFF_S: Final = 30.0
NODE_ROLE_PREFIX: Final = "picluster-node-"


class DynsecError(RuntimeError):
    """A dynamic security call failed; the message says why, for people."""


class DynsecUnavailableError(DynsecError):
    """The broker could not be reached, refused the login, or the plugin did not answer."""


class DynsecNotConfiguredError(DynsecUnavailableError):
    """The broker runs without the plugin, or this user is not its admin: nothing answers."""


class DynsecRefusedError(DynsecError):
    """The plugin answered a command with an error (e.g. `Client already exists`)."""

    def __init__(self, command: str, error: str) -> None:
        super().__init__(f"the broker refused {command}: {error}")
        self.command = command
        self.error = error


@dataclass(frozen=True, slots=True)
class Answer:
    """The plugin's answer to one command: its `error` (None when done) and `data`."""

    command: str
    error: str | None
    data: Mapping[str, Any]


def node_role(node: str) -> str:
    """The name of a node's own role (dynamic security ACLs have no %u, so one role a node)."""
    return f"{NODE_ROLE_PREFIX}{node}"


def node_acls(node: str, prefix: str) -> list[dict[str, Any]]:
    """A node's ACLs, as the static ACL file gives them (docs/protocol.md, mosquitto/acl)."""
    own = f"{prefix}/{node}"
    return [
        # Its status, details, metrics, message and replies: only inside its own subtree.
        {"acltype": "publishClientSend", "topic": f"{own}/#", "allow": True, "priority": 0},
        # Its own commands only.
        {"acltype": "subscribePattern", "topic": f"{own}/cmd/#", "allow": True, "priority": 0},
        # Whether a master is listening (retained, not secret).
        {
            "acltype": "subscribePattern",
            "topic": f"{prefix}/_master/status",
            "allow": True,
            "priority": 0,
        },
    ]


class DynsecClient:
    """Sends command batches to the plugin as one broker user and returns the answers."""

    def __init__(
        self,
        address: BrokerAddress,
        ca_file: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        client_id_prefix: str = "picluster-dynsec",
    ) -> None:
        self.address = address
        self.ca_file = ca_file
        self.timeout_s = timeout_s
        self.client_id_prefix = client_id_prefix
        self._silent_until = 0.0
        self._silent_reason = ""

    def run(self, commands: Sequence[Mapping[str, Any]]) -> list[Answer]:
        """Send one batch; return an answer per command in order (errors included, not raised)."""
        if time.monotonic() < self._silent_until:
            raise DynsecNotConfiguredError(f"{self._silent_reason} (not retried for a moment)")
        batch = [{**command, "correlationData": secrets.token_hex(8)} for command in commands]
        wanted = {str(command["correlationData"]) for command in batch}
        answers: dict[str, Answer] = {}
        done = threading.Event()
        connected = threading.Event()
        subscribed = threading.Event()
        published = threading.Event()
        failure: list[str] = []
        lock = threading.Lock()

        def on_connect(
            client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
        ) -> None:
            if reason.is_failure:
                failure.append(f"the broker refused the login of {self.address.username}: {reason}")
                done.set()
                return
            connected.set()
            client.subscribe(RESPONSE_TOPIC, qos=1)

        def on_subscribe(
            client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
        ) -> None:
            if any(code.is_failure for code in reasons):
                failure.append(
                    f"the broker does not let {self.address.username} read {RESPONSE_TOPIC}: "
                    "give that user the dynamic security admin role"
                )
                done.set()
                return
            subscribed.set()
            client.publish(CONTROL_TOPIC, json.dumps({"commands": batch}), qos=1)

        def on_publish(
            client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
        ) -> None:
            if reason.is_failure:
                failure.append(
                    f"the broker does not let {self.address.username} publish to {CONTROL_TOPIC} "
                    f"({reason}): give that user the dynamic security admin role"
                )
                done.set()
                return
            published.set()

        def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
            try:
                document = json.loads(message.payload)
                responses = document.get("responses", [])
            except (ValueError, AttributeError):
                return
            with lock:
                for response in responses if isinstance(responses, list) else []:
                    if not isinstance(response, dict):
                        continue
                    key = str(response.get("correlationData"))
                    if key in wanted:
                        answers[key] = Answer(
                            str(response.get("command")),
                            response.get("error"),
                            response.get("data") or {},
                        )
                if wanted.issubset(answers):
                    done.set()

        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{self.client_id_prefix}-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv5,
        )
        client.enable_logger(logging.getLogger("paho.dynsec"))
        if self.address.username is not None:
            client.username_pw_set(self.address.username, self.address.password)
        if self.address.tls:
            try:
                client.tls_set(ca_certs=self.ca_file)
            except (OSError, ssl.SSLError) as error:
                raise DynsecUnavailableError(f"cannot load CA {self.ca_file!r}: {error}") from error
        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_publish = on_publish
        client.on_message = on_message
        # A clean session that ends with the connection: nothing is left behind on the broker.
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 0
        try:
            client.connect(
                self.address.host, self.address.port, keepalive=30, properties=properties
            )
        except (OSError, ValueError) as error:
            raise DynsecUnavailableError(
                f"cannot reach the broker at {self.address.redacted()}: {error}"
            ) from error
        client.loop_start()
        try:
            finished = done.wait(self.timeout_s)
        finally:
            if client.is_connected():  # a refused login has nothing to disconnect
                client.disconnect()
            client.loop_stop()
        if failure:
            if connected.is_set():  # logged in, but not allowed the control topics
                raise DynsecNotConfiguredError(failure[0])
            raise DynsecUnavailableError(failure[0])
        if not finished:
            reason = self._silence(connected, subscribed, published)
            if published.is_set():
                self._silent_until = time.monotonic() + SILENT_BACKOFF_S
                self._silent_reason = reason
                raise DynsecNotConfiguredError(reason)
            raise DynsecUnavailableError(reason)
        return [answers[str(command["correlationData"])] for command in batch]

    def _silence(
        self, connected: threading.Event, subscribed: threading.Event, published: threading.Event
    ) -> str:
        where = self.address.redacted()
        if not connected.is_set():
            return f"the broker at {where} did not accept a connection within {self.timeout_s} s"
        if not subscribed.is_set() or not published.is_set():
            return f"the broker at {where} did not take the control command in {self.timeout_s} s"
        user = self.address.username or "the master's (anonymous) user"
        return (
            f"no answer on {RESPONSE_TOPIC} within {self.timeout_s} s: enrollment needs the "
            "broker's dynamic security plugin (mosquitto_dynamic_security.so, the head's dynsec "
            f"configuration in docs/deploy.md) with {user} holding its admin role"
        )

    def check(self, commands: Sequence[Mapping[str, Any]], tolerated: Iterable[str] = ()) -> None:
        """Run a batch; raise DynsecRefusedError for the first error not in `tolerated`."""
        allowed = set(tolerated)
        for answer in self.run(commands):
            if answer.error and answer.error not in allowed:
                raise DynsecRefusedError(answer.command, answer.error)


class NodeClients:
    """Broker clients for nodes: created with their own role, re-keyed, deleted."""

    def __init__(self, dynsec: DynsecClient, prefix: str) -> None:
        self.dynsec = dynsec
        self.prefix = prefix

    def ensure(self, node: str, password: str) -> bool:
        """Make broker client `node` with its role and this password; False if it existed."""
        role = node_role(node)
        answers = self.dynsec.run(
            [
                {"command": "createRole", "rolename": role, "acls": node_acls(node, self.prefix)},
                {
                    "command": "createClient",
                    "username": node,
                    "password": password,
                    "textname": f"picluster node {node}",
                    "roles": [{"rolename": role, "priority": 0}],
                },
            ]
        )
        created_role, created_client = answers
        if created_role.error and "already exists" not in created_role.error:
            raise DynsecRefusedError(created_role.command, created_role.error)
        if created_client.error is None:
            logger.info("broker client %s created with role %s", node, role)
            return True
        if "already exists" not in created_client.error:
            raise DynsecRefusedError(created_client.command, created_client.error)
        # Added again (a lost command, a reinstalled node): same client, new password, its role.
        self.dynsec.check(
            [
                {
                    "command": "modifyClient",
                    "username": node,
                    "password": password,
                    "roles": [{"rolename": role, "priority": 0}],
                },
                {"command": "enableClient", "username": node},
            ]
        )
        logger.info("broker client %s existed: new password, role %s", node, role)
        return False

    def set_password(self, node: str, password: str) -> None:
        """Give broker client `node` a new password (connections already made stay)."""
        self.dynsec.check(
            [{"command": "setClientPassword", "username": node, "password": password}]
        )

    def delete(self, node: str) -> bool:
        """Delete broker client `node` (the broker disconnects it) and its role; False if none."""
        client, _role = self.dynsec.run(
            [
                {"command": "deleteClient", "username": node},
                {"command": "deleteRole", "rolename": node_role(node)},
            ]
        )
        if client.error and client.error != "Client not found":
            raise DynsecRefusedError(client.command, client.error)
        deleted = client.error is None
        logger.info("broker client %s %s", node, "deleted" if deleted else "did not exist")
        return deleted

    def exists(self, node: str) -> bool:
        """True when the broker has a client named `node`."""
        (answer,) = self.dynsec.run([{"command": "getClient", "username": node}])
        if answer.error and answer.error != "Client not found":
            raise DynsecRefusedError(answer.command, answer.error)
        return answer.error is None


def new_password() -> str:
    """A random broker password (32 URL-safe characters, 192 bits)."""
    return secrets.token_urlsafe(24)
