"""What Mosquitto does with a shared subscription's QoS 1 messages when a member dies.

Masters share node metrics through `$share/picluster/cluster/+/metrics` at QoS 1, each with its
own client id, and acknowledge a message only once it is committed (paho `manual_ack`). These
tests pin what the installed Mosquitto (2.0.11, Debian's build) does with the messages a member
took but never acknowledged when its TCP connection drops without DISCONNECT (the relay in
front of it is cut, as when its process is killed), and with those published while it is away:

- persistent session: they wait in that member's session and come back, unacknowledged ones
  first with DUP set, when it resumes with the same client id; nothing goes to the others,
  and the round robin keeps handing the absent member its share (queued, up to
  max_queued_messages, then dropped);
- session expiry 0: its unacknowledged messages are lost, new ones go to the others;
- a persistent session that expires loses everything queued in it;
- a plain DISCONNECT is no different from a kill; to leave the round robin a member must
  UNSUBSCRIBE first (its unacknowledged messages stay in its session) or end its session
  (DISCONNECT with Session Expiry Interval 0: its unacknowledged messages are lost).

Each test runs its own broker, so the round robin starts at the first member to subscribe:
with members A then B, A gets messages 1, 3, 5, ... and B gets 2, 4, 6, ...
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from tests.support.broker import MosquittoBroker
from tests.support.mqtt_proxy import MqttProxy
from tests.support.waiting import wait_until
from tests.support.watcher import Watcher

SHARED = "$share/picluster/cluster/+/metrics"
TOPIC = "cluster/pi-01/metrics"
GONE = "test/gone"  # the members' wills: the broker publishes one when it drops a member
WAIT_S = 10.0
LONG_EXPIRY_S = 300


@dataclass(frozen=True)
class Delivery:
    """One PUBLISH a member received: its payload (a number) and its DUP flag."""

    payload: int
    dup: bool


class Member:
    """A master's MQTT 5 connection to the shared subscription that acknowledges only on request."""

    def __init__(
        self, client_id: str, port: int, session_expiry: int, will_delay: int | None = None
    ) -> None:
        self.client_id = client_id
        self.port = port
        self.session_expiry = session_expiry
        self.deliveries: list[Delivery] = []
        self.session_present: bool | None = None
        self.changed = threading.Condition()
        self._unacked: list[mqtt.MQTTMessage] = []
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._unsubscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
            reconnect_on_failure=False,  # as a killed process: the test starts a new one
        )
        if will_delay is not None:
            will = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
            if will_delay:
                will.WillDelayInterval = will_delay
            self.client.will_set(f"{GONE}/{client_id}", b"gone", qos=1, properties=will)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_unsubscribe
        self.client.on_message = self._on_message

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        with self.changed:
            self.session_present = bool(flags.session_present)
        self._connected.set()

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, rcs: list[ReasonCode], props: Any
    ) -> None:
        self._subscribed.set()

    def _on_unsubscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, rcs: list[ReasonCode], props: Any
    ) -> None:
        self._unsubscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.changed:
            self.deliveries.append(Delivery(int(message.payload), bool(message.dup)))
            self._unacked.append(message)
            self.changed.notify_all()

    def connect(self) -> Member:
        """Connect with clean_start False and the session expiry; wait for the CONNACK."""
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self.session_expiry
        self.client.connect(
            "127.0.0.1", self.port, keepalive=60, clean_start=False, properties=properties
        )
        self.client.loop_start()
        if not self._connected.wait(WAIT_S):
            raise AssertionError(f"{self.client_id} got no CONNACK")
        return self

    def subscribe(self) -> Member:
        """Join the shared subscription at QoS 1; wait for the SUBACK."""
        self._subscribed.clear()
        self.client.subscribe([(SHARED, SubscribeOptions(qos=1))])
        if not self._subscribed.wait(WAIT_S):
            raise AssertionError(f"{self.client_id} got no SUBACK")
        return self

    def unsubscribe(self) -> None:
        """Leave the shared subscription; wait for the UNSUBACK."""
        self._unsubscribed.clear()
        self.client.unsubscribe(SHARED)
        if not self._unsubscribed.wait(WAIT_S):
            raise AssertionError(f"{self.client_id} got no UNSUBACK")

    def ack_all(self) -> None:
        """Send the PUBACK of every message received and not yet acknowledged."""
        with self.changed:
            unacked, self._unacked = self._unacked, []
        for message in unacked:
            self.client.ack(message.mid, message.qos)

    def payloads(self) -> list[int]:
        """The payloads received, in order of arrival."""
        with self.changed:
            return [delivery.payload for delivery in self.deliveries]

    def wait_for(self, count: int) -> list[Delivery]:
        """Wait (woken by each message) until `count` messages arrived; return them all."""
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.deliveries) >= count, WAIT_S):
                raise AssertionError(
                    f"{self.client_id} received {self.payloads()}, expected {count} messages"
                )
            return list(self.deliveries)

    def close(self) -> None:
        """Disconnect (if still connected) and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Cluster:
    """A broker of the test's own, its publisher, the members and a watcher of their wills."""

    broker: MosquittoBroker
    proxy: MqttProxy
    publisher: mqtt.Client
    wills: Watcher
    members: list[Member] = field(default_factory=list)
    published: list[int] = field(default_factory=list)

    def member(self, client_id: str, session_expiry: int) -> Member:
        """A member connected straight to the broker, without a will."""
        member = Member(client_id, self.broker.port, session_expiry)
        self.members.append(member)
        return member.connect()

    def killable_member(self, client_id: str, session_expiry: int, will_delay: int = 0) -> Member:
        """A member connected through the relay (so it can be killed) with a will."""
        member = Member(client_id, self.proxy.port, session_expiry, will_delay)
        self.members.append(member)
        return member.connect()

    def kill(self, member: Member) -> None:
        """Drop the member's TCP connection without DISCONNECT, as a killed process would.

        The relay stays cut and the member does not reconnect: a new Member plays its restart.
        """
        assert member.port == self.proxy.port, "only a member behind the relay can be killed"
        self.proxy.cut()

    def publish(self, count: int) -> list[int]:
        """Publish the next `count` numbers at QoS 1, each once the broker acknowledged it."""
        numbers = [len(self.published) + 1 + i for i in range(count)]
        for number in numbers:
            info = self.publisher.publish(TOPIC, str(number), qos=1)
            info.wait_for_publish(WAIT_S)
            assert info.is_published(), f"the broker did not acknowledge message {number}"
            self.published.append(number)
        return numbers

    def gone(self, member: Member, timeout_s: float = WAIT_S) -> None:
        """Wait until the broker published the member's will."""
        self.wills.wait_for(f"{GONE}/{member.client_id}", 1, timeout_s)

    def logged(self, line: str) -> None:
        """Wait until the broker's log has that line (it logs everything here)."""
        wait_until(
            lambda: line in self.broker.log_path.read_text(errors="replace"),
            message=f"the broker's log line {line!r}",
        )


@pytest.fixture
def start_cluster(
    make_broker: Callable[..., MosquittoBroker],
) -> Iterator[Callable[..., Cluster]]:
    """Start a Cluster on a broker of its own (options go to MosquittoBroker); clean up after."""
    started: list[Cluster] = []

    def start(**broker_options: Any) -> Cluster:
        broker = make_broker(**broker_options)
        publisher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        publisher.connect(broker.host, broker.port)
        publisher.loop_start()
        cluster = Cluster(
            broker, MqttProxy(broker.port), publisher, Watcher(broker.host, broker.port, "test/#")
        )
        started.append(cluster)
        return cluster

    yield start
    for cluster in started:
        for member in cluster.members:
            member.close()
        cluster.publisher.disconnect()
        cluster.publisher.loop_stop()
        cluster.wills.close()
        cluster.proxy.close()


def two_members(cluster: Cluster, a_expiry: int, a_will_delay: int = 0) -> tuple[Member, Member]:
    """A (killable, subscribed first) and B (persistent); A holds 1, 3, 5 unacknowledged."""
    a = cluster.killable_member("master-a", a_expiry, a_will_delay).subscribe()
    b = cluster.member("master-b", LONG_EXPIRY_S).subscribe()
    cluster.publish(6)
    assert [d.payload for d in a.wait_for(3)] == [1, 3, 5]
    assert [d.payload for d in b.wait_for(3)] == [2, 4, 6]
    b.ack_all()
    return a, b


def test_a_killed_persistent_member_gets_its_unacknowledged_messages_back_on_resume(
    start_cluster: Callable[..., Cluster],
) -> None:
    cluster = start_cluster()
    a, b = two_members(cluster, LONG_EXPIRY_S)

    cluster.kill(a)
    cluster.gone(a)  # the broker saw the connection drop (no DISCONNECT: it sent the will)
    cluster.publish(6)  # 7..12: any hand-over of 1, 3, 5 to B would reach B before these
    assert [d.payload for d in b.wait_for(6)] == [2, 4, 6, 8, 10, 12]

    a_again = cluster.member("master-a", LONG_EXPIRY_S)
    assert a_again.session_present
    # In flight first, resent with DUP; then what was queued while away. No SUBSCRIBE needed.
    assert a_again.wait_for(6) == [
        Delivery(1, True),
        Delivery(3, True),
        Delivery(5, True),
        Delivery(7, False),
        Delivery(9, False),
        Delivery(11, False),
    ]
    a_again.ack_all()
    assert sorted(a_again.payloads() + b.payloads()) == cluster.published  # none lost, none twice


def test_an_absent_persistent_member_keeps_its_share_of_the_round_robin(
    start_cluster: Callable[..., Cluster],
) -> None:
    cluster = start_cluster()
    a, b = two_members(cluster, LONG_EXPIRY_S)
    cluster.kill(a)
    cluster.gone(a)

    away = cluster.publish(10)  # 7..16: every second one is queued for A, B is not given more
    assert [d.payload for d in b.wait_for(8)][3:] == away[1::2]
    b.ack_all()

    a_again = cluster.member("master-a", LONG_EXPIRY_S)
    assert [d.payload for d in a_again.wait_for(8)] == [1, 3, 5, *away[::2]]
    a_again.ack_all()
    # The resumed session is still a member (no SUBSCRIBE yet), and subscribing again as the
    # master does on every connect updates that membership instead of adding a second one.
    back = cluster.publish(2)
    assert a_again.wait_for(9)[-1].payload == back[0]
    assert b.wait_for(9)[-1].payload == back[1]
    a_again.subscribe()
    again = cluster.publish(4)
    assert [d.payload for d in a_again.wait_for(11)][-2:] == again[::2]
    assert [d.payload for d in b.wait_for(11)][-2:] == again[1::2]
    assert sorted(a_again.payloads() + b.payloads()) == cluster.published


def test_a_killed_member_without_session_loses_its_unacknowledged_messages(
    start_cluster: Callable[..., Cluster],
) -> None:
    cluster = start_cluster()
    a, b = two_members(cluster, 0)  # session expiry 0: the session ends with the connection
    cluster.kill(a)
    cluster.gone(a)

    away = cluster.publish(6)  # 7..12: B is the only member left, and 1, 3, 5 are not resent
    assert [d.payload for d in b.wait_for(9)] == [2, 4, 6, *away]
    b.ack_all()

    a_again = cluster.member("master-a", 0)
    assert a_again.session_present is False
    a_again.subscribe()
    fresh = cluster.publish(2)  # the round robin has A's new membership after B's
    assert b.wait_for(10)[-1].payload == fresh[0]
    assert a_again.wait_for(1) == [Delivery(fresh[1], False)]  # nothing from before
    lost = sorted(set(cluster.published) - set(a_again.payloads() + b.payloads()))
    assert lost == [1, 3, 5]


def test_a_member_that_never_returns_loses_its_queue_when_the_session_expires(
    start_cluster: Callable[..., Cluster],
) -> None:
    cluster = start_cluster()
    # Its will waits longer than the session: the broker sends it when the session expires.
    a, b = two_members(cluster, 2, a_will_delay=3600)
    cluster.kill(a)
    away = cluster.publish(6)  # 7..12 while the session lives: 7, 9, 11 queued for A
    assert [d.payload for d in b.wait_for(6)] == [2, 4, 6, *away[1::2]]
    assert not cluster.wills.on(f"{GONE}/master-a"), "the session expired too early for the test"

    cluster.gone(a)  # session expired (within expiry + 1 s: the broker checks each second)
    after = cluster.publish(4)  # A's membership went with its session: B gets them all
    assert [d.payload for d in b.wait_for(10)][6:] == after
    b.ack_all()

    a_again = cluster.member("master-a", LONG_EXPIRY_S)
    assert a_again.session_present is False
    a_again.subscribe()
    fresh = cluster.publish(2)
    assert b.wait_for(11)[-1].payload == fresh[0]
    assert a_again.wait_for(1) == [Delivery(fresh[1], False)]
    lost = sorted(set(cluster.published) - set(a_again.payloads() + b.payloads()))
    assert lost == [1, 3, 5, 7, 9, 11]


def test_the_absent_members_share_past_max_queued_messages_is_dropped(
    start_cluster: Callable[..., Cluster],
) -> None:
    # The limit counts the absent member's unacknowledged messages too: 1, 3, 5 and one more.
    cluster = start_cluster(extra_config="max_queued_messages 4")
    a, b = two_members(cluster, LONG_EXPIRY_S)
    cluster.kill(a)
    cluster.gone(a)

    away = cluster.publish(6)  # 7..12: 7 is queued for A, 9 and 11 dropped, B still gets 8..12
    assert [d.payload for d in b.wait_for(6)][3:] == away[1::2]
    b.ack_all()
    cluster.logged("Outgoing messages are being dropped for client master-a.")

    a_again = cluster.member("master-a", LONG_EXPIRY_S)
    assert [d.payload for d in a_again.wait_for(4)] == [1, 3, 5, 7]
    a_again.ack_all()
    back = cluster.publish(2)  # anything more for A would arrive before this
    assert a_again.wait_for(5)[-1].payload == back[0]
    assert b.wait_for(7)[-1].payload == back[1]
    lost = sorted(set(cluster.published) - set(a_again.payloads() + b.payloads()))
    assert lost == [9, 11]


@pytest.mark.parametrize(
    ("leaving", "a_gets_back"),
    [
        # A plain DISCONNECT keeps the session, and with it the membership: as if killed.
        pytest.param("disconnect", [1, 3, 5, 7, 9, 11], id="disconnect"),
        # UNSUBSCRIBE first: new messages go to the others, the unacknowledged stay with A.
        pytest.param("unsubscribe, disconnect", [1, 3, 5], id="unsubscribe-then-disconnect"),
        # DISCONNECT with Session Expiry Interval 0 ends the session: 1, 3, 5 are lost.
        pytest.param("disconnect with session expiry 0", [], id="disconnect-expiry-0"),
    ],
)
def test_how_a_member_leaves_decides_where_its_messages_go(
    start_cluster: Callable[..., Cluster], leaving: str, a_gets_back: list[int]
) -> None:
    cluster = start_cluster()
    a, b = two_members(cluster, LONG_EXPIRY_S)
    if leaving.startswith("unsubscribe"):
        a.unsubscribe()
    properties = None
    if leaving.endswith("session expiry 0"):
        properties = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 0
    a.client.disconnect(properties=properties)
    cluster.logged("Client master-a disconnected.")

    away = cluster.publish(6)  # 7..12
    b_share = away[1::2] if 7 in a_gets_back else away  # still a member: B gets every second
    assert [d.payload for d in b.wait_for(3 + len(b_share))][3:] == b_share
    b.ack_all()

    a_again = cluster.member("master-a", LONG_EXPIRY_S)
    assert a_again.session_present is (leaving != "disconnect with session expiry 0")
    a_again.subscribe()
    markers = cluster.publish(2)  # one for each member: anything else for A comes first
    a_payloads = [d.payload for d in a_again.wait_for(len(a_gets_back) + 1)]
    assert a_payloads[:-1] == a_gets_back
    assert b.wait_for(4 + len(b_share))[-1].payload in markers
    assert {a_payloads[-1], b.payloads()[-1]} == set(markers)
    lost = sorted(set(cluster.published) - set(a_payloads + b.payloads()))
    assert lost == ([1, 3, 5] if not a_gets_back else [])
