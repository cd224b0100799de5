"""What each of several masters subscribes to: metrics shared, everything else the leader's."""

from __future__ import annotations

from typing import Final

from cluster_protocol import MASTER_NODE_ID, MessageType

SHARE_GROUP: Final = "picluster"


def shared_metrics(prefix: str) -> str:
    """The shared subscription every master takes: each metrics message goes to one of them."""
    return f"$share/{SHARE_GROUP}/{prefix}/+/{MessageType.METRICS.value}"


def follower_topics(prefix: str) -> list[str]:
    """A follower receives only its share of the metrics."""
    return [shared_metrics(prefix)]


def leader_topics(prefix: str) -> list[str]:
    """The leader: its share of the metrics, and every other type in full.

    Not `<prefix>/#`: that would bring every metrics message to the leader a second time.
    """
    others = (t.value for t in MessageType if t is not MessageType.METRICS)
    return [shared_metrics(prefix), *(f"{prefix}/+/{level}" for level in others)]


def adoption_marker(prefix: str, client_id: str) -> str:
    """Where a session being taken over (peers/adoption.py) publishes its end marker."""
    return f"{prefix}/{MASTER_NODE_ID}/adoption/{client_id}"


def left_behind(prefix: str, role_topics: list[str]) -> list[str]:
    """What a session may hold from another role or a single master, and this role does not take."""
    every = [f"{prefix}/#", *leader_topics(prefix), adoption_marker(prefix, "+")]
    return [topic for topic in every if topic not in role_topics]
