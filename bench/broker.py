"""A Mosquitto for benchmarks: the production queue limits, without the tests' per-packet log."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tests.support.broker import MosquittoBroker

# The queue and size limits of mosquitto/mosquitto.conf, so a slow consumer is measured, not
# silently dropped at Mosquitto's default max_queued_messages of 1000 (docs/protocol.md).
PRODUCTION_LIMITS: Final = (
    "max_queued_messages 400000",
    "max_queued_bytes 536870912",
    "message_size_limit 69632",
    "max_packet_size 131072",
)


@dataclass
class BenchBroker(MosquittoBroker):
    """MosquittoBroker that logs errors and warnings only (the tests log every packet)."""

    def write_config(self) -> Path:
        """Write a lean mosquitto.conf into workdir; return its path."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            *(["user root"] if os.geteuid() == 0 else []),
            f"listener {self.port} {self.host}",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "persistence false",
            "allow_anonymous true",
            *PRODUCTION_LIMITS,
        ]
        config = self.workdir / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n")
        return config
