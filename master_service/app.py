"""MasterService: wires listener, ingest, state, store and HTTP together and runs them."""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Final

import uvicorn

from cluster_protocol import (
    MASTER_NODE_ID,
    Envelope,
    encode_envelope,
    master_status_topic,
    subscription,
)
from master_service.alerts.engine import GAP_SETTLE_MIN_S
from master_service.alerts.service import Alerting, Restored
from master_service.auth.accounts import Accounts
from master_service.control.commands import CommandService
from master_service.enrollment.dynsec import DynsecClient, NodeClients
from master_service.enrollment.service import Enrollment
from master_service.enrollment.tokens import EnrollTokens
from master_service.home_assistant.bridge import HomeAssistantObserver
from master_service.home_assistant.discovery import CLUSTER_SUMMARY_TYPE, cluster_summary_topic
from master_service.home_assistant.presses import ButtonPresses
from master_service.home_assistant.publisher import DiscoveryPublisher
from master_service.ingest.counters import IngestCounters
from master_service.ingest.handlers import Context
from master_service.ingest.health import Health, assess
from master_service.ingest.ingestor import FLUSH_BUSY_S, Ingestor
from master_service.ingest.listener import Listener, master_status
from master_service.ingest.mqtt5_listener import Mqtt5Listener
from master_service.ingest.observers import Notice, Observer, notify
from master_service.ingest.router import RawMessage
from master_service.peers.adoption import CHECK_EVERY_S as ADOPTION_CHECK_EVERY_S
from master_service.peers.follower import forward_batch, share_history_writes
from master_service.peers.leadership import FOLLOWER, LEADER, SOLE, LeaderLock
from master_service.peers.mirror import NodeMirror
from master_service.peers.topics import follower_topics, leader_topics, left_behind
from master_service.settings import MasterSettings
from master_service.state import ClusterState, NodeState
from master_service.storage.command_log import CommandLog
from master_service.storage.database import Connection
from master_service.storage.forwarded import take_forwarded
from master_service.storage.node_tags import NodeTags, delete_node_tags, load_node_tags
from master_service.storage.retention import RetentionJob
from master_service.storage.store import Store
from master_service.web.alert_metrics import AlertCollector
from master_service.web.api import create_app
from master_service.web.prometheus import IngestErrors, MasterMetrics

logger = logging.getLogger(__name__)

SUMMARY_EVERY_S: Final = 10.0
STATUS_ECHO_WAIT_S: Final = 2.0  # at stop: our offline status back on the ingest connection


def build(
    settings: MasterSettings,
    clock: Callable[[], float] = time.time,
    role: str = SOLE,
    lock: LeaderLock | None = None,
) -> MasterService:
    """Open the database (migrating it), restore the nodes it holds, and wire a master.

    All the I/O of setting a master up happens here, so `MasterService(...)` itself stays a
    plain wiring of parts; raises `SettingsError` (e.g. a database from a newer release).
    """
    store = Store(settings.database)
    try:
        nodes = list(store.load_nodes())
        restored = Restored.load(store, clock())
        master_tags = load_node_tags(store)
    except BaseException:
        store.close()
        raise
    return MasterService(settings, store, nodes, clock, restored, master_tags, role=role, lock=lock)


def dashboard_url(settings: MasterSettings) -> str:
    """The dashboard's address for links in notifications (this host's name if on all)."""
    host = settings.http_host
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.http_port}/"


class MasterService:
    """One master: `build()` it, `start()` the background parts, serve HTTP, `stop()`."""

    def __init__(
        self,
        settings: MasterSettings,
        store: Store,
        nodes: Iterable[NodeState] = (),
        clock: Callable[[], float] = time.time,
        restored: Restored | None = None,
        master_tags: Mapping[str, Iterable[str]] | None = None,
        *,
        role: str = SOLE,
        lock: LeaderLock | None = None,
    ) -> None:
        self.settings = settings
        # Several masters (master_service.peers): a follower stores its share of the metrics
        # and forwards them; the leader does everything else. SOLE: the only master.
        self.role = role
        self.leader_api: Callable[[], str | None] = lock.leader_api if lock else lambda: None
        self.own_api = dashboard_url(settings)
        self.clock = clock
        self.store = store
        self.state = ClusterState(clock, settings.stale_factor)
        self.state.restore(iter(nodes))
        self.state.load_master_tags(master_tags or {})  # before the alert engine reads them
        self.counters = IngestCounters()
        self.observers: list[Observer] = []
        self.ctx = Context(self.state, self.counters, settings.prefix, self.observers)
        self.ingestor = Ingestor(self.ctx, self.store, clock)
        # Who receives cluster/#: paho's Listener itself, or a connection of its own on the
        # mqtt5 codec (`ingest_client`); the Listener publishes either way.
        self.listener = Listener(
            settings,
            self.ingestor.submit,
            receive=settings.ingest_client == "paho",
            announce=role != FOLLOWER,
        )
        self.receiver: Listener | Mqtt5Listener = self.listener
        if settings.ingest_client == "mqtt5":
            topics_of = {LEADER: leader_topics, FOLLOWER: follower_topics}.get(role)
            topics = topics_of(settings.prefix) if topics_of else [subscription(settings.prefix)]
            self.receiver = Mqtt5Listener(
                settings,
                self.ingestor.submit_many,
                clock,
                topics=topics,
                # A session that served several masters before holds their filters too.
                unsubscribe=left_behind(settings.prefix, topics),
            )
        if role != SOLE:
            # Each of N masters gets 1/N of the messages, so it reaches FLUSH_BUSY_ROWS N
            # times later: at 2,000 msg/s two masters doubled the p99 from node to commit
            # (bench/README.md, several masters). The database is a server here, not an SD
            # card whose wear the 0.1 s pause spares: commit what waits after 0.02 s.
            self.ingestor.flush_every_s = FLUSH_BUSY_S
        self.mirror: NodeMirror | None = None
        if role == FOLLOWER:
            self.ingestor.route = forward_batch
            self.ingestor.guard = share_history_writes
            # The alerts are built below; the lambda reads them when a pass runs.
            self.mirror = NodeMirror(
                self.state,
                self.ingestor.call_in_writer,
                also=[lambda store: self.alerting.reload(store)],
            )
        elif role == LEADER:
            self.ingestor.drain = lambda connection: _drain_forwarded(connection, clock)
            if lock is not None:
                self.ingestor.guard = lock.check_epoch
        self.ingestor.commit_listeners.append(self.receiver.acknowledge)  # PUBACK once stored
        self.ingestor.commit_listeners.append(self.state.committed)  # the API's listing
        self.commands = CommandService(
            CommandLog(self.store, self.ingestor.write),
            self.listener.publish,
            self.state,
            self.listener.connected.is_set,
            settings.prefix,
            clock,
        )
        self.observers.append(self.commands)
        self.node_tags = NodeTags(self.ingestor.write, self.state)
        # Enrollment: broker clients over the dynamic security plugin, as the master's user.
        address = settings.broker_address
        self.enrollment = Enrollment(
            NodeClients(
                DynsecClient(
                    address, settings.ca_file, client_id_prefix=f"{settings.client_id}-ctl"
                ),
                settings.prefix,
            ),
            EnrollTokens(self.ingestor.write, clock),
            self.forget,
            broker_port=address.port,
            broker_tls=address.tls,
        )
        self.home_assistant: HomeAssistantObserver | None = None
        self._announce_home_assistant: Callable[[], None] = lambda: None
        if settings.ha_discovery and role != FOLLOWER:
            self._attach_home_assistant()
        self.alerting = Alerting.create(
            settings.alerts,
            store=self.store,
            state=self.state,
            ingestor=self.ingestor,
            restored=restored or Restored(),
            publish=self.listener.publish,
            prefix=settings.prefix,
            observers=self.observers,
            observer_errors=self.ctx.observer_errors,
            link_base=dashboard_url(settings),
            healthy=lambda: self.health().ok,
            connected=self.listener.connected.is_set,
            clock=clock,
            gap_settle_s=gap_settle_s(settings),
        )
        self.observers.append(self.alerting.observer)
        self._ticker_stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="picluster-ticker", daemon=True)
        self.retention = RetentionJob(
            self.ingestor.call_in_writer,
            settings.history_raw_days,
            settings.history_rollup_days,
            clock=clock,
        )
        self.metrics = MasterMetrics(
            self.state, self.counters, self._health_gauges, clock, ingest_errors=self._ingest_errors
        )
        self.store.commit_observers.append(self.metrics.observe_committed)
        self.metrics.registry.register(AlertCollector(self.alerting))
        self.accounts = Accounts(lambda: settings.database.connect(autocommit=True), clock)
        if settings.login_required and not self.accounts.has_users():
            logger.warning(
                "the dashboard and API at %s need a login, and there is no user yet: add one "
                "with `cluster-master users add NAME --role admin`",
                settings.http,
            )
        self.app = create_app(self)

    def _attach_home_assistant(self) -> None:
        publisher = DiscoveryPublisher(
            self.listener.client.publish,  # its receipts pace the announcements by PUBACK
            prefix=self.settings.ha_prefix,
            cluster_prefix=self.settings.prefix,
            per_entity=self.settings.ha_per_entity,
            connected=self.listener.connected,
        )
        observer = HomeAssistantObserver(publisher)
        self._announce_home_assistant = lambda: self._restore_home_assistant(observer, publisher)
        # Home Assistant's birth arrives on the network thread; the announce runs on the
        # ingest thread so it never races the ingest path's own calls.
        self.listener.extra_topics[publisher.ha_status_topic] = lambda payload: (
            self.ingestor.call_in_writer(lambda _store: publisher.on_ha_status(payload))
        )
        # Button presses: checked on the network thread, sent from a worker thread.
        presses = ButtonPresses(self.commands, self.state, self.counters, self.settings.prefix)
        self.listener.extra_topics[presses.topic] = presses.submit
        self.observers.append(observer)
        self.home_assistant = observer

    def _restore_home_assistant(
        self, observer: HomeAssistantObserver, publisher: DiscoveryPublisher
    ) -> None:
        with self.state.lock:
            known = [n for i in self.state.node_ids() if (n := self.state.get(i))]
        firing: dict[str, list[str]] = {}
        for alert in self.alerting.engine.firing():
            firing.setdefault(alert.node, []).append(alert.rule)
        # Publishing happens outside the cluster lock; ingest has not started, so nothing
        # changes these states meanwhile.
        observer.restore(known, firing)
        publisher.announce_cluster()  # QoS 1: paho sends it once connected

    def start(self) -> None:
        """Start ingest, the MQTT listener and the periodic ticker."""
        self._announce_home_assistant()
        self.ingestor.start()
        self.listener.start()
        if self.receiver is not self.listener:
            self.receiver.start()
        if self.mirror is not None:
            self.mirror.start()
            return  # a follower: the summary, retention and alerts are the leader's
        self._ticker.start()
        self.retention.start()
        self.alerting.start()

    def stop(self) -> None:
        """Drain and flush the queue, say offline, stop listening, close the store."""
        self._ticker_stop.set()
        if self.mirror is not None:
            self.mirror.stop()
        self.retention.stop()
        self.alerting.stop()  # before ingest: delivery waits on ingest's writes
        # Flush first, while still connected: the PUBACKs of what was stored go out now,
        # instead of the broker resending those messages to the next run.
        if isinstance(self.receiver, Mqtt5Listener):
            # The offline status goes out first, while the ingest connection still listens,
            # and is stored and acknowledged with the last batch: left unacknowledged it
            # would take a place in our session's queue (no_local spares only our own
            # connection's messages). Then the flush, then its PUBACKs and the DISCONNECT.
            seen = self.receiver.watch(master_status_topic(self.settings.prefix))
            echo = (
                self.listener.announce
                and self.listener.connected.is_set()
                and self.receiver.connected.is_set()
            )
            self.listener.stop()
            if echo:
                seen.wait(STATUS_ECHO_WAIT_S)
            self.ingestor.stop()
            self.receiver.stop()
        else:
            self.ingestor.stop()
            self.listener.stop()
        self.commands.close()
        try:
            self.store.close()
        except Exception as error:  # e.g. the disk is full: what is not stored was not acked
            logger.error("closing the store failed: %s", error)

    def forget(self, node: str) -> bool:
        """Remove a node from state, store and observers; True when it was known."""
        known = self.state.forget(node)

        def forget_in_writer(store: Store) -> None:
            store.delete_node(node)
            delete_node_tags(store, node)
            store.commit()
            # Observers' own writes (the command log) go with the next flush.
            notify(self.observers, [Notice("node_forgotten", node)], self.ctx.observer_errors)

        # On the ingest thread, so no message of that node is half-way through its handler.
        self.ingestor.call_in_writer(forget_in_writer)
        return known

    def serve(
        self,
        watch: Callable[[], str | None] | None = None,
        stop: threading.Event | None = None,
    ) -> str | None:
        """Run everything until SIGINT or SIGTERM, then shut down in order.

        `watch`, called every second, may end the run early by returning a reason (several
        masters: a follower that took the lead, a leader that lost it), which is returned.
        `stop` is the event the signals set: one kept across runs, so that a signal between
        two of them is not lost.
        """
        stop = stop or threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        self.start()
        config = uvicorn.Config(
            self.app,
            host=self.settings.http_host,
            port=self.settings.http_port,
            log_level=self.settings.log_level.lower(),
            access_log=False,
        )
        server = uvicorn.Server(config)
        # Off the main thread uvicorn leaves the signals to us, so the shutdown below
        # (offline status, queue drained, store flushed) always runs.
        http = threading.Thread(target=server.run, name="picluster-http", daemon=True)
        http.start()
        logger.info("API and dashboard on http://%s/", self.settings.http)
        failed = False
        reason: str | None = None
        try:
            while not stop.wait(1.0):
                if watch is not None and (reason := watch()) is not None:
                    logger.info("this master stops as %s: %s", self.role, reason)
                    break
                if not http.is_alive():
                    logger.error("the HTTP server stopped (is %s free?)", self.settings.http)
                    break
                if not self.ingestor.is_alive():
                    # Fail fast: a master that no longer stores anything must not look alive.
                    # Exiting non-zero lets systemd or compose restart it; nothing it received
                    # since the last commit was acknowledged, so the broker sends it again.
                    logger.critical(
                        "ingest stopped (%r); exiting so the master is restarted",
                        self.ingestor.failure,
                    )
                    failed = True
                    break
        finally:
            server.should_exit = True
            http.join(timeout=10)
            self.stop()
        if failed or (not http.is_alive() and not server.started):
            raise SystemExit(1)
        return reason

    def health(self) -> Health:
        """The ingest path's health; `/healthz` answers 503 with the reasons when not ok."""
        ingestor = self.ingestor
        return assess(
            ingest_running=ingestor.is_alive(),
            ingest_silent_s=time.monotonic() - ingestor.heartbeat,
            store_error=ingestor.store_error,
            mqtt_connected=self._mqtt_connected(),
            disconnected_s=self._disconnected_for(),
            keepalive_s=float(self.settings.keepalive),
            queue_depth=ingestor.queue.qsize(),
            committed=ingestor.committed,
        )

    def _mqtt_connected(self) -> bool:
        """Both connections up (one when paho also receives)."""
        return self.listener.connected.is_set() and self.receiver.connected.is_set()

    def _disconnected_for(self) -> float | None:
        """How long the longer-down connection has been down; None when both are up."""
        downs = [
            s for s in (self.listener.disconnected_for(), self.receiver.disconnected_for()) if s
        ]
        return max(downs) if downs else None

    def _health_gauges(self) -> dict[str, float]:
        return {
            "mqtt_connected": float(self._mqtt_connected()),
            "ingest_queue_depth": float(self.ingestor.queue.qsize()),
            "healthy": float(self.health().ok),
        }

    def _ingest_errors(self) -> IngestErrors:
        return IngestErrors.read(
            self.ingestor, self.listener, self.ctx.observer_errors, self.observers
        )

    def _tick(self) -> None:
        """Publish the retained cluster summary now and then (Home Assistant's cluster device)."""
        while not self._ticker_stop.wait(SUMMARY_EVERY_S if self.listener.connects else 1.0):
            if not self.listener.connected.is_set():
                continue
            try:
                envelope = Envelope(
                    type=CLUSTER_SUMMARY_TYPE,
                    node=MASTER_NODE_ID,
                    ts=self.clock(),
                    seq=0,
                    payload=self.state.summary(),
                )
                topic = cluster_summary_topic(self.settings.prefix)
                self.listener.publish(topic, encode_envelope(envelope), qos=1, retain=True)
                if self.role == LEADER:
                    # A predecessor's will (its head lost power: sent a keepalive and a half
                    # later) or its stop says offline after this leader said online.
                    prefix = self.settings.prefix
                    status = master_status("online", self.clock)
                    self.listener.publish(master_status_topic(prefix), status, qos=1, retain=True)
            except Exception:
                logger.exception("publishing the cluster summary failed")


def _drain_forwarded(connection: Connection, clock: Callable[[], float]) -> list[RawMessage]:
    """A leader's source of the metrics its followers stored (in the open transaction).

    Received "now" by the leader's clock, not the follower's: a node's last-heard time must
    not jump about with the heads' clocks (the delay is a tenth of a second or so).
    """
    now = clock()
    return [
        RawMessage(topic, payload, False, now) for topic, payload, _ in take_forwarded(connection)
    ]


def gap_settle_s(settings: MasterSettings) -> float:
    """How long a gap may be filled before `data_loss` reports it.

    With several masters, a silent master's share comes late: when it restarts, or when the
    leader takes its session over, up to `member_timeout` and a check later.
    """
    if not settings.several_masters:
        return GAP_SETTLE_MIN_S
    return max(GAP_SETTLE_MIN_S, settings.member_timeout + ADOPTION_CHECK_EVERY_S + 10.0)
