"""GET /api/nodes and GET /metrics on a loaded master: the served listing beside the old path.

Run inside `bench/master_proc.py` once the scale load is done (every node known, nothing
arriving), after the memory figures were taken. The new path is timed over real HTTP
(uvicorn on loopback, one keep-alive connection, the whole body read), each time after a
commit that changed `CHANGED_PER_COMMIT` random nodes, so that the listing or the exposition
is made again as after every flush under load (from the last one, those nodes encoded anew),
and again with nothing committed in between (served as kept). The old
path is what the routes did before, run in-process on the same state: `views()` (every node
decoded), then FastAPI's `jsonable_encoder` and `JSONResponse` for the list, and
prometheus_client's `generate_latest` over `node_families(views())` for /metrics.
"""

from __future__ import annotations

import ctypes
import gc
import json
import random
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import uvicorn
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from bench.procstat import memory_kib
from master_service.app import MasterService
from master_service.state import ClusterState
from master_service.web.prometheus import node_families

REPEATS: Final = 7
TAG: Final = "bench-rack"
TAG_EVERY: Final = 10  # one node in ten gets the tag (master-side)
CURL_TIMED: Final = (
    "curl",
    "-s",
    "-o",
    "/dev/null",
    "-w",
    "%{http_code} %{size_download} %{time_total}",
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _timed(call: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = call()
    return (time.perf_counter() - started) * 1000, result


def _trimmed_rss_kib() -> int | None:
    """Resident memory once glibc returned its free heap pages (malloc_trim), or None."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    libc.malloc_trim(0)
    return memory_kib()["VmRSS"]


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


class _Http:
    """GETs by curl, in a process of its own: the bodies never land in the master's memory."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def timed_get(self, path: str) -> tuple[float, int]:
        """(ms from connect to the last byte, body size) of a 200 answer."""
        done = subprocess.run(
            [*CURL_TIMED, self.base + path],
            capture_output=True,
            text=True,
            check=True,
        )
        status, size, seconds = done.stdout.split()
        if status != "200":
            raise RuntimeError(f"GET {path}: {status}")
        return float(seconds) * 1000, int(size)

    def get(self, path: str) -> bytes:
        """The body of a 200 answer."""
        done = subprocess.run(["curl", "-sf", self.base + path], capture_output=True, check=True)
        return done.stdout


def _serve(service: MasterService) -> tuple[uvicorn.Server, threading.Thread, int]:
    port = _free_port()
    config = uvicorn.Config(
        service.app, host="127.0.0.1", port=port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="bench-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:  # a bench helper, not a test: polling uvicorn's flag is fine
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    return server, thread, port


def _old_list(service: MasterService) -> bytes:
    """GET /api/nodes as the route did it: every view decoded, FastAPI's encoder, JSON."""
    views = service.state.views()
    content = jsonable_encoder({"nodes": views, "generated_at": time.time()})
    return bytes(JSONResponse(content).body)


def _old_metrics(service: MasterService) -> bytes:
    """The nodes' families as /metrics wrote them: prometheus_client over decoded views."""

    class Nodes(Collector):
        def collect(self) -> Iterator[Metric]:
            yield from node_families(service.state.views())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Nodes())
    return generate_latest(registry)


# Nodes changed by each commit before a timed read: 1,000 msg/s over 10,000 nodes, committed
# every 0.1 s, changes ~100 nodes per commit.
CHANGED_PER_COMMIT: Final = 100


def _commit(state: ClusterState, rng: random.Random) -> None:
    """A commit as under load: nodes changed by ingest (handed out by `node`), then committed."""
    with state.lock:
        for node_id in rng.sample(state.node_ids(), CHANGED_PER_COMMIT):
            state.node(node_id)
    state.committed()


def measure(service: MasterService) -> dict[str, Any]:
    """Time the routes both ways; figures in ms (medians) and the sizes."""
    state = service.state
    rng = random.Random(14)
    for index, node_id in enumerate(state.node_ids()):
        if index % TAG_EVERY == 0:
            state.set_master_tags(node_id, [TAG])
    some_node = state.node_ids()[len(state.node_ids()) // 2]
    server, thread, port = _serve(service)
    http = _Http(port)
    figures: dict[str, Any] = {"nodes": len(state.node_ids()), "repeats": REPEATS}
    try:
        paths = {
            "list": "/api/nodes",
            "tagged": f"/api/nodes?tag={TAG}",
            "metrics": "/metrics",
        }
        for name, path in paths.items():
            after_commit: list[float] = []
            kept: list[float] = []
            size = 0
            for _ in range(REPEATS):
                _commit(state, rng)  # as after every flush: the listing is made again
                elapsed, size = http.timed_get(path)
                after_commit.append(elapsed)
                kept.append(http.timed_get(path)[0])
            figures[name] = {
                "http_after_commit_ms": _median(after_commit),
                "http_kept_ms": _median(kept),
                "bytes": size,
            }
        one = [http.timed_get(f"/api/nodes/{some_node}")[0] for _ in range(REPEATS)]
        figures["one_node_http_ms"] = _median(one)
        # The same work in-process, without HTTP: what the handler itself costs.
        in_list: list[float] = []
        in_metrics: list[float] = []
        for _ in range(REPEATS):
            _commit(state, rng)
            in_list.append(_timed(state.nodes_json)[0])
            in_metrics.append(_timed(service.metrics.node_text)[0])
        figures["list"]["in_process_ms"] = _median(in_list)
        figures["metrics"]["in_process_ms"] = _median(in_metrics)
        gc.collect()
        figures["rss_after_api_kib"] = memory_kib()["VmRSS"]  # listing and text kept
        _commit(state, rng)  # as the next flush does (both stay kept: they were just read)
        gc.collect()
        figures["rss_after_api_committed_kib"] = memory_kib()["VmRSS"]
        figures["rss_after_api_trimmed_kib"] = _trimmed_rss_kib()
        tagged = json.loads(http.get(paths["tagged"]))["nodes"]
        figures["tagged"]["nodes"] = len(tagged)
        del tagged
        # The old path, once each (it takes seconds), and the decode alone.
        figures["old_decode_ms"] = _median([_timed(state.views)[0] for _ in range(3)])
        elapsed, body = _timed(lambda: _old_list(service))
        figures["old_list_ms"], figures["old_list_bytes"] = elapsed, len(body)  # type: ignore[arg-type]
        elapsed, body = _timed(lambda: _old_metrics(service))
        figures["old_metrics_ms"], figures["old_metrics_bytes"] = elapsed, len(body)  # type: ignore[arg-type]
    finally:
        server.should_exit = True
        thread.join(10)
    return figures
