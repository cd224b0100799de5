"""The master announces itself on `cluster/_master/status`, so nodes and tools know it listens."""

from __future__ import annotations

import json
from typing import Any

from tests.support.processes import start_master
from tests.support.waiting import wait_until

MASTER_STATUS = "cluster/_master/status"


def states_seen(capmqtt: Any) -> list[str]:
    return [
        json.loads(m.payload)["payload"]["state"]
        for m in capmqtt.messages
        if m.topic == MASTER_STATUS and m.payload
    ]


def test_master_says_online_while_running_and_offline_when_stopped(broker, tmp_path, capmqtt):
    master = start_master(broker.url, tmp_path, "--client-id", "picluster-master-presence")
    wait_until(lambda: "online" in states_seen(capmqtt), message="master online")
    assert master.stop() == 0
    wait_until(lambda: states_seen(capmqtt)[-1] == "offline", message="master offline")
    assert "reconnecting" not in master.log()  # its own clean disconnect is no warning
    envelope = json.loads(
        next(m.payload for m in reversed(capmqtt.messages) if m.topic == MASTER_STATUS)
    )
    assert envelope["v"] == 1
    assert envelope["type"] == "status"
    assert envelope["node"] == "_master"
