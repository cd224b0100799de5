"""Enrollment: add a node (broker client + one-time token), exchange a token, remove a node."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from master_service.enrollment.dynsec import NodeClients, new_password
from master_service.enrollment.tokens import TOKEN_TTL_S, EnrollTokens, Issued

logger = logging.getLogger(__name__)


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
    ) -> None:
        self.clients = clients
        self.tokens = tokens
        self._forget = forget
        self.broker_port = broker_port
        self.broker_tls = broker_tls

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

    def remove(self, node: str) -> tuple[bool, bool]:
        """Delete broker client `node` (disconnected at once) and forget the node.

        Returns (a broker client was deleted, the master knew the node).
        """
        deleted = self.clients.delete(node)
        self.tokens.drop(node)
        known = self._forget(node)
        return deleted, known
