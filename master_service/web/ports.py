"""What the HTTP layer needs from a running master: a narrow read and command interface.

`MasterService` satisfies `MasterPort` as it is (its attributes and methods have these
shapes); the HTTP layer sees nothing else of it, so the two can change apart.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol

from cluster_protocol.payloads import ClusterSummary
from master_service.alerts.delivery import TestResult
from master_service.alerts.model import Silence
from master_service.auth.accounts import Accounts
from master_service.enrollment.service import Enrollment
from master_service.ingest.health import Health
from master_service.state import NodeView
from master_service.storage.command_log import CommandRecord
from master_service.storage.database import Database
from master_service.web.prometheus import MasterMetrics


class NodeReader(Protocol):
    """Node views (as the API shows them) and the cluster totals."""

    def view(self, node_id: str) -> NodeView | None:
        """One node, or None when it is not known."""
        ...

    def views(self) -> list[NodeView]:
        """Every node, sorted by id."""
        ...

    def summary(self) -> ClusterSummary:
        """Cluster totals: nodes by state, cores, RAM, average CPU and load."""
        ...

    def nodes_json(self, tags: Collection[str] = ()) -> bytes:
        """Every node's view as a JSON array sorted by id, only those with all `tags`."""
        ...

    def node_json(self, node_id: str) -> bytes | None:
        """One node's view as JSON, or None when it is not known."""
        ...


class CounterReader(Protocol):
    """The master's own ingest counters."""

    def snapshot(self) -> dict[str, Any]:
        """The counters as plain data."""
        ...


class CommandPort(Protocol):
    """Send commands to nodes and read their records."""

    def send(
        self,
        node: str,
        command: str,
        args: Mapping[str, Any] | None = ...,
        timeout_s: float = ...,
    ) -> CommandRecord:
        """Publish a command and wait for the reply (or the timeout)."""
        ...

    def recent(self, node: str, limit: int = ...) -> list[CommandRecord]:
        """A node's latest commands, newest first."""
        ...


class TagPort(Protocol):
    """Master-side node tags (master_service.storage.node_tags)."""

    def add(self, node: str, tag: str) -> bool:
        """Tag a node once stored; False when it had the tag already."""
        ...

    def remove(self, node: str, tag: str) -> bool:
        """Remove a master-side tag once stored; False when the node did not have it."""
        ...

    def tags(self, node: str) -> tuple[str, ...]:
        """A node's master-side tags, sorted."""
        ...


class WebSettings(Protocol):
    """The settings the HTTP layer reads: where history lives, how long raw samples stay, token."""

    @property
    def database(self) -> Database:
        """The database holding the history (SQLite or PostgreSQL)."""
        ...

    @property
    def history_raw_days(self) -> float:
        """Days raw samples are kept (older ranges come from minute averages)."""
        ...

    @property
    def api_token(self) -> str | None:
        """A bearer token with the admin role; on localhost without it, writes are open."""
        ...

    @property
    def metrics_token(self) -> str | None:
        """The bearer token `/metrics` needs; None: open."""
        ...

    @property
    def login_required(self) -> bool:
        """True when reading needs a login and writing the admin role."""
        ...


class AlertPort(Protocol):
    """Alerts as the HTTP layer reads and changes them (master_service.alerts.service)."""

    def firing(self) -> list[dict[str, Any]]:
        """Alerts firing now, with `silenced` and `flapping`."""
        ...

    def delivery_stats(self) -> dict[str, Any]:
        """Notification delivery counters."""
        ...

    def history(self, limit: int, node: str | None = None) -> list[dict[str, Any]]:
        """The latest alert events, newest first."""
        ...

    def silences(self) -> list[Silence]:
        """Silences not yet ended."""
        ...

    def rule_names(self) -> list[str]:
        """Every rule a silence may name."""
        ...

    def silence(self, node: str, rule: str | None, for_s: float, comment: str = "") -> Silence:
        """Add a silence; raises SilenceError for an unknown rule."""
        ...

    def unsilence(self, silence_id: int) -> bool:
        """End a silence; False when there was none."""
        ...

    def test(self, index: int | None) -> list[TestResult]:
        """Send a test notification; IndexError or ValueError for a bad or missing channel."""
        ...


class MasterPort(Protocol):
    """Everything the HTTP layer reads from, and commands, a running master."""

    @property
    def settings(self) -> WebSettings:
        """History location and retention, API token."""
        ...

    @property
    def clock(self) -> Callable[[], float]:
        """The master's clock (Unix seconds)."""
        ...

    @property
    def state(self) -> NodeReader:
        """Node views and cluster totals."""
        ...

    @property
    def counters(self) -> CounterReader:
        """Ingest counters."""
        ...

    @property
    def metrics(self) -> MasterMetrics:
        """The Prometheus registry `/metrics` serves."""
        ...

    @property
    def commands(self) -> CommandPort:
        """Commands to nodes."""
        ...

    @property
    def node_tags(self) -> TagPort:
        """Master-side node tags."""
        ...

    @property
    def enrollment(self) -> Enrollment:
        """Broker clients and one-time enrollment tokens for new nodes."""
        ...

    @property
    def alerting(self) -> AlertPort:
        """Alerts, their history and silences."""
        ...

    @property
    def accounts(self) -> Accounts:
        """Dashboard and API users, their sessions and API tokens."""
        ...

    def health(self) -> Health:
        """Is the master storing what it receives; the reasons when not."""
        ...

    @property
    def role(self) -> str:
        """sole, or leader or follower among several masters (master_service.peers)."""
        ...

    @property
    def own_api(self) -> str:
        """This master's dashboard address, as other masters point to it."""
        ...

    def leader_api(self) -> str | None:
        """The leading master's dashboard address, when known."""
        ...

    def forget(self, node: str) -> bool:
        """Drop a node everywhere; True when it was known."""
        ...
