"""Check picluster's Home Assistant discovery against a real Home Assistant, end to end.

Not a test of the suite: it needs Home Assistant installed (a big download), so it is run by
hand through scripts/verify-home-assistant.sh, with the Python of Home Assistant's venv (it
uses aiohttp and paho-mqtt from there). It starts Mosquitto, a master, two nodes and Home
Assistant, onboards Home Assistant, adds its MQTT integration through the config flow and
checks, as a user would see it: devices and live values, a killed node turning unavailable, a
Home Assistant restart losing nothing, a forgotten node leaving nothing behind.

Both nodes run on this one machine, so they report the same hostname, as Pis left as
`raspberrypi` or VMs cloned from one image do: each must still be its own device named by its
node id, with entity ids `<platform>.<node>_<key>` (no `_2`), kept across an HA restart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import aiohttp
import paho.mqtt.client as mqtt
from homeassistant.util import slugify
from paho.mqtt.enums import CallbackAPIVersion

# A hyphen, as in many real node ids: Home Assistant's entity ids spell it `_`.
KEPT: Final = "node-1"  # runs throughout
KILLED: Final = "node-2"  # killed, then forgotten
NODES: Final = (KEPT, KILLED)
REBOOT_ENABLED: Final = KEPT  # its config turns reboot on (pointed at a harmless stand-in)
BUTTONS: Final = frozenset({"refresh", "reboot", "shutdown"})
DISCOVERY_PREFIX: Final = "homeassistant"
CLUSTER_OBJECT_ID: Final = "picluster__cluster"
CLUSTER_ENTITY_OWNER: Final = "picluster"  # the cluster's entity ids: sensor.picluster_<key>
# May be unknown whatever the node sends (one failed vcgencmd read). Other than this, only a
# metric the node itself sends as null (a VM has no temperature sensor, maybe no swap) may be
# unknown: every other entity must hold a value.
ALWAYS_MAY_BE_UNKNOWN: Final = frozenset({"throttled"})
MUST_HAVE: Final = (
    "cpu_percent",
    "load_1",
    "memory_percent",
    "disk_root_percent",
    "net_rx_bytes_per_s",
    "net_tx_bytes_per_s",
    "boot_time",
    "hostname",
    "online",
    "refresh",
    "problem",
)
# Gated by the master's status only (like online): the node_offline alert must stay visible.
MASTER_GATED: Final = frozenset({"online", "problem"})
CLUSTER_KEYS: Final = ("nodes_online", "cores_total", "ram_total", "cpu_percent_avg")
GONE: Final = frozenset({"unavailable"})
NO_VALUE: Final = frozenset({"unknown", "unavailable"})
# Our payloads' trouble shows up from these loggers (bad unit, template error) or by our ids.
LOG_PROBLEM: Final = re.compile(
    r" (WARNING|ERROR|CRITICAL) .*(\[homeassistant\.(components\.(mqtt|sensor|binary_sensor)"
    r"|helpers\.(template|entity))|picluster)"
)

T = TypeVar("T")


def say(text: str) -> None:
    """Progress output of this script."""
    sys.stdout.write(f"--- {text}\n")
    sys.stdout.flush()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_for(
    what: str, probe: Callable[[], Awaitable[T | None]], timeout_s: float, every_s: float = 1.0
) -> T:
    """Poll `probe` until it returns something other than None; TimeoutError names `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = await probe()
        except (aiohttp.ClientError, OSError):
            result = None
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
        await asyncio.sleep(every_s)


@dataclass
class Results:
    """PASS/FAIL lines, printed as a summary at the end."""

    rows: list[tuple[bool, str, str]] = field(default_factory=list)

    def check(self, ok: bool, name: str, detail: str = "") -> bool:
        """Record one check and print it at once."""
        self.rows.append((ok, name, detail))
        sys.stdout.write(f"{'PASS' if ok else 'FAIL'}  {name}{'  ' + detail if detail else ''}\n")
        sys.stdout.flush()
        return ok

    def summary(self) -> str:
        """The final block: one line per check, then the verdict."""
        lines = ["", "=== summary ==="]
        lines += [f"{'PASS' if ok else 'FAIL'}  {name}" for ok, name, _ in self.rows]
        failed = sum(1 for ok, _, _ in self.rows if not ok)
        verdict = "PASS" if failed == 0 and self.rows else "FAIL"
        lines.append(f"=== {verdict}: {len(self.rows) - failed}/{len(self.rows)} checks passed ===")
        return "\n".join(lines)

    @property
    def passed(self) -> bool:
        """True when every check passed (and there was at least one)."""
        return bool(self.rows) and all(ok for ok, _, _ in self.rows)


class Processes:
    """The processes this script starts, by name; stopped by their own PIDs."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: Sequence[str], cwd: Path | None = None) -> None:
        """Start `argv` with its output in `<logs>/<name>.log` (appended)."""
        log = (self.logs / f"{name}.log").open("ab")
        self.running[name] = subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
        )
        log.close()

    def stop(self, name: str, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 60) -> int:
        """Send `sig` to one process and wait for it; SIGKILL when it does not end in time."""
        process = self.running.pop(name)
        if process.poll() is None:
            process.send_signal(sig)
            try:
                return process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
        return process.wait()

    def alive(self, name: str) -> bool:
        """True while the named process runs."""
        process = self.running.get(name)
        return process is not None and process.poll() is None

    def stop_all(self) -> None:
        """Stop everything still running, last started first."""
        for name in reversed(list(self.running)):
            self.stop(name, timeout_s=30)


def retained_discovery(port: int, prefix: str = DISCOVERY_PREFIX) -> dict[str, dict[str, Any]]:
    """The retained device-discovery configs on the broker: object id -> payload."""
    configs: dict[str, dict[str, Any]] = {}
    marker = f"picluster-verify/{os.getpid()}/{time.monotonic_ns()}"
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
        c.subscribe([(f"{prefix}/device/+/config", 1), (marker, 1)])

    def on_subscribe(c: mqtt.Client, _u: Any, _mid: Any, _rc: Any, _p: Any) -> None:
        # Retained messages are queued at subscribe time, before anything published later.
        c.publish(marker, b"done", qos=1)

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == marker:
            done.set()
        elif msg.payload:
            configs[msg.topic.split("/")[-2]] = json.loads(msg.payload)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        if not done.wait(10):
            raise TimeoutError("reading the retained discovery configs timed out")
    finally:
        client.disconnect()
        client.loop_stop()
    return configs


class HomeAssistant:
    """Talks to one Home Assistant over its REST and websocket APIs."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base
        self.token = ""
        self.tokens: dict[str, Any] = {}  # the onboarding login, for the frontend

    @property
    def client_id(self) -> str:
        """The OAuth client id Home Assistant expects: the base URL."""
        return self.base + "/"

    async def up(self) -> bool | None:
        """True once the HTTP API answers at all."""
        async with self.session.get(self.base + "/api/onboarding") as response:
            return True if response.status in (200, 401, 404) else None

    async def rest(self, method: str, path: str, body: Any = None) -> Any:
        """One authenticated REST call; raise on an HTTP error."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with self.session.request(
            method, self.base + path, json=body, headers=headers
        ) as response:
            text = await response.text()
            if response.status >= 400:
                raise RuntimeError(f"{method} {path}: HTTP {response.status}: {text[:300]}")
            return json.loads(text) if text else None

    async def onboard(self) -> None:
        """Create the owner, log in, finish onboarding; keep a long-lived token."""
        done = {step["step"] for step in await self.rest("GET", "/api/onboarding") if step["done"]}
        if "user" in done:
            raise RuntimeError("Home Assistant is onboarded already: use an empty config dir")
        user = await self.rest(
            "POST",
            "/api/onboarding/users",
            {
                "client_id": self.client_id,
                "name": "picluster check",
                "username": "picluster",
                "password": "picluster-check",
                "language": "en",
            },
        )
        async with self.session.post(
            self.base + "/auth/token",
            data={
                "grant_type": "authorization_code",
                "code": user["auth_code"],
                "client_id": self.client_id,
            },
        ) as response:
            self.tokens = await response.json()
        self.token = self.tokens["access_token"]
        await self.rest("POST", "/api/onboarding/core_config")
        await self.rest("POST", "/api/onboarding/analytics")
        await self.rest(
            "POST",
            "/api/onboarding/integration",
            {"client_id": self.client_id, "redirect_uri": self.client_id},
        )
        self.token = await self.ws(
            {"type": "auth/long_lived_access_token", "client_name": "picluster", "lifespan": 1}
        )

    async def ws(self, command: Mapping[str, Any]) -> Any:
        """Send one websocket command and return its result; raise on an error."""
        async with self.session.ws_connect(self.base + "/api/websocket") as sock:
            await sock.receive_json()  # auth_required
            await sock.send_json({"type": "auth", "access_token": self.token})
            answer = await sock.receive_json()
            if answer.get("type") != "auth_ok":
                raise RuntimeError(f"websocket auth failed: {answer}")
            await sock.send_json({"id": 1, **command})
            while True:
                answer = await sock.receive_json()
                if answer.get("id") == 1 and answer.get("type") == "result":
                    break
        if not answer.get("success"):
            raise RuntimeError(f"{command['type']}: {answer.get('error')}")
        return answer["result"]

    async def add_mqtt(self, port: int) -> dict[str, Any]:
        """Add the MQTT integration through its config flow, as the UI does."""
        flow = await self.rest("POST", "/api/config/config_entries/flow", {"handler": "mqtt"})
        for _ in range(5):
            if flow.get("type") == "create_entry":
                return dict(flow)
            if flow.get("type") == "menu":
                flow = await self.rest(
                    "POST",
                    f"/api/config/config_entries/flow/{flow['flow_id']}",
                    {"next_step_id": "broker" if "broker" in flow["menu_options"] else "user"},
                )
            elif flow.get("type") == "form":
                flow = await self.rest(
                    "POST",
                    f"/api/config/config_entries/flow/{flow['flow_id']}",
                    {"broker": "127.0.0.1", "port": port},
                )
            else:
                break
        raise RuntimeError(f"the MQTT config flow ended with {flow}")


@dataclass(frozen=True)
class View:
    """What Home Assistant shows of picluster: devices and entities by our ids."""

    devices: dict[str, dict[str, Any]]  # object id (picluster_node-1) -> device registry entry
    entities: dict[str, dict[str, Any]]  # unique_id -> entity registry entry
    states: dict[str, dict[str, Any]]  # entity_id -> state object

    def state(self, unique_id: str) -> str | None:
        """The state of the entity with this unique_id; None when there is none."""
        entry = self.entities.get(unique_id)
        found = self.states.get(entry["entity_id"]) if entry else None
        return None if found is None else str(found["state"])

    def of(self, object_id: str) -> dict[str, str | None]:
        """Key -> state for every entity whose unique_id starts with `<object_id>_`."""
        prefix = object_id + "_"
        return {
            uid[len(prefix) :]: self.state(uid) for uid in self.entities if uid.startswith(prefix)
        }


async def look(ha: HomeAssistant) -> View:
    """Read HA's device and entity registries and states, keeping picluster's."""
    devices: dict[str, dict[str, Any]] = {}
    for device in await ha.ws({"type": "config/device_registry/list"}):
        for domain, ident in device.get("identifiers", []):
            if domain == "mqtt" and str(ident).startswith("picluster_"):
                devices[str(ident)] = device
    entities = {
        str(e["unique_id"]): e
        for e in await ha.ws({"type": "config/entity_registry/list"})
        if e.get("platform") == "mqtt" and str(e.get("unique_id", "")).startswith("picluster_")
    }
    states = {s["entity_id"]: s for s in await ha.rest("GET", "/api/states")}
    return View(devices, entities, states)


def numeric(value: str | None) -> bool:
    """True when a state is a finite number."""
    try:
        return value is not None and float(value) == float(value)
    except ValueError:
        return False


def value_ok(key: str, value: str | None, unknown_ok: frozenset[str]) -> bool:
    """Whether a live node entity's state is a plausible value for its key."""
    if key in BUTTONS:  # a button's state is its last press: none yet, or when
        return value == "unknown" or _timestamp_ok(value or "")
    if value is None or value in NO_VALUE:
        return key in unknown_ok | ALWAYS_MAY_BE_UNKNOWN and value == "unknown"
    if key == "online":
        return value == "on"
    if key in ("throttled", "problem"):
        return value in ("on", "off")
    if key == "boot_time":
        return _timestamp_ok(value)
    if key == "hostname":
        return bool(value.strip())
    return numeric(value)


def _timestamp_ok(value: str) -> bool:
    try:
        return datetime.fromisoformat(value).year > 2000
    except ValueError:
        return False


def node_problems(
    view: View, node: str, expected: Sequence[str], unknown_ok: frozenset[str]
) -> list[str]:
    """What is wrong with a running node as Home Assistant shows it (empty: all fine)."""
    shown = view.of(f"picluster_{node}")
    problems = [f"{key} missing" for key in expected if key not in shown]
    problems += [
        f"{k}={v}" for k, v in shown.items() if k in expected and not value_ok(k, v, unknown_ok)
    ]
    problems += [f"unexpected entity {k}" for k in shown if k not in expected]
    return problems


def cluster_problems(view: View, nodes_online: int) -> list[str]:
    """What is wrong with the cluster device's values (empty: all fine)."""
    shown = view.of(CLUSTER_OBJECT_ID)
    problems = [f"{k}={shown.get(k)}" for k in CLUSTER_KEYS if not numeric(shown.get(k))]
    if numeric(shown.get("nodes_online")) and float(shown["nodes_online"] or 0) != nodes_online:
        problems.append(f"nodes_online={shown['nodes_online']}, expected {nodes_online}")
    return problems


def expected_entity_id(platform: str, owner: str, key: str) -> str:
    """The entity id picluster pins, `<platform>.<owner>_<key>` as HA's own slugify spells it."""
    return f"{platform}.{slugify(f'{owner}_{key}')}"


def entity_id_problems(view: View, configs: Mapping[str, dict[str, Any]]) -> list[str]:
    """Entities whose id is not the pinned one (a `_2` suffix, a hostname, a missing one)."""
    owners = {f"picluster_{n}": n for n in NODES} | {CLUSTER_OBJECT_ID: CLUSTER_ENTITY_OWNER}
    problems = []
    for object_id, owner in owners.items():
        cmps = configs.get(object_id, {}).get("cmps", {})
        if not cmps:
            problems.append(f"{object_id}: nothing announced")
        for key, component in cmps.items():
            entry = view.entities.get(f"{object_id}_{key}")
            got = entry["entity_id"] if entry else "not registered"
            want = expected_entity_id(component["p"], owner, key)
            if got != want:
                problems.append(f"{got}, expected {want}")
    return problems


def device_names(view: View) -> dict[str, str | None]:
    """Node id -> the name Home Assistant shows for its device."""
    return {n: view.devices.get(f"picluster_{n}", {}).get("name") for n in NODES}


def expected_keys(configs: Mapping[str, dict[str, Any]], object_id: str) -> list[str]:
    """The component keys the master announced for one device."""
    return sorted(configs.get(object_id, {}).get("cmps", {}))


def log_problems(config: Path) -> list[str]:
    """Warnings and errors about MQTT or our payloads, in this and the previous run's log."""
    return [
        line
        for path in sorted(config.glob("home-assistant.log*"))
        for line in path.read_text(errors="replace").splitlines()
        if LOG_PROBLEM.search(line)
    ]


def write_login_page(www: Path, ha: HomeAssistant, target: str) -> None:
    """A page under /local/ that stores the login for the frontend and opens `target`."""
    www.mkdir(parents=True, exist_ok=True)
    tokens = {
        "access_token": ha.tokens["access_token"],
        "refresh_token": ha.tokens["refresh_token"],
        "token_type": "Bearer",
        "expires_in": ha.tokens["expires_in"],
        "expires": int(time.time() * 1000) + 1000 * int(ha.tokens["expires_in"]),
        "hassUrl": ha.base,
        "clientId": ha.client_id,
    }
    (www / "login.html").write_text(
        "<!doctype html><script>"
        f"localStorage.setItem('hassTokens', {json.dumps(json.dumps(tokens))});"
        f"location.replace({json.dumps(target)});"
        "</script>\n"
    )


def screenshot(url: str, out: Path, chromium: str) -> bool:
    """Let headless Chromium load `url` (and what it leads to) and save a PNG."""
    profile = out.parent / "chromium-profile"
    argv = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--window-size=1280,1300",
        "--virtual-time-budget=30000",
        f"--screenshot={out}",
        url,
    ]
    result = subprocess.run(argv, capture_output=True, timeout=180, check=False)
    return result.returncode == 0 and out.exists()


@dataclass(frozen=True)
class Setup:
    """Paths and programs, from the command line."""

    work: Path
    picluster_bin: Path
    hass: Path
    mosquitto: str
    screenshot: Path | None
    chromium: str


class Run:
    """One verification run: the processes, the Home Assistant client and the results."""

    def __init__(self, setup: Setup, session: aiohttp.ClientSession) -> None:
        self.setup = setup
        self.results = Results()
        self.procs = Processes(setup.work)
        self.broker_port = free_port()
        self.master_api = f"http://127.0.0.1:{free_port()}"
        self.ha_port = free_port()
        self.config = setup.work / "config"
        self.ha = HomeAssistant(session, f"http://127.0.0.1:{self.ha_port}")
        self.unknown_ok: dict[str, frozenset[str]] = {n: frozenset() for n in NODES}

    def start_stack(self) -> None:
        """Mosquitto, the master and the nodes."""
        work, bin_ = self.setup.work, self.setup.picluster_bin
        conf = work / "mosquitto.conf"
        conf.write_text(
            f"listener {self.broker_port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence false\nlog_dest file {work / 'mosquitto.log'}\n"
            + ("user root\n" if os.geteuid() == 0 else "")
        )
        broker = f"mqtt://127.0.0.1:{self.broker_port}"
        self.procs.start("mosquitto", [self.setup.mosquitto, "-c", str(conf)])
        http = self.master_api.removeprefix("http://")
        self.procs.start(
            "master",
            [
                str(bin_ / "cluster-master"),
                "run",
                "--broker",
                broker,
                "--db",
                str(work / "master.db"),
                "--http",
                http,
            ],
        )
        for node in NODES:
            self.start_node(node)

    def start_node(self, node: str) -> None:
        """One node agent sampling every 2 s; REBOOT_ENABLED gets a Reboot button."""
        broker = f"mqtt://127.0.0.1:{self.broker_port}"
        argv = [
            str(self.setup.picluster_bin / "cluster-node"),
            "run",
            "--broker",
            broker,
            "--node-id",
            node,
            "--interval",
            "2",
            "--state-dir",
            str(self.setup.work / node),
        ]
        if node == REBOOT_ENABLED:
            config = self.setup.work / f"{node}.toml"
            config.write_text('allow_reboot = true\nreboot_command = ["true"]\n')
            argv += ["--config", str(config)]
        self.procs.start(node, argv)

    def write_ha_config(self) -> None:
        """A minimal configuration: no default_config, only what this check needs."""
        self.config.mkdir(parents=True, exist_ok=True)
        frontend = ""
        if self.setup.screenshot:
            frontend = "frontend:\n"
            (self.config / "www").mkdir(exist_ok=True)  # /local/ exists only if this did at start
        (self.config / "configuration.yaml").write_text(
            "homeassistant:\n  name: picluster check\n  unit_system: metric\n"
            "  time_zone: UTC\n  country: DE\n  currency: EUR\n"
            "  latitude: 52.5\n  longitude: 13.4\n  elevation: 30\n"
            f"http:\n  server_host: 127.0.0.1\n  server_port: {self.ha_port}\n"
            "api:\nwebsocket_api:\nconfig:\nonboarding:\n" + frontend + "logger:\n  default: info\n"
            "  logs:\n    homeassistant.components.mqtt: debug\n"
        )

    def start_ha(self) -> None:
        """Start Home Assistant on the config dir (no pip at run time: all is preinstalled)."""
        self.procs.start(
            "hass",
            [
                str(self.setup.hass),
                "-c",
                str(self.config),
                "--log-file",
                str(self.config / "home-assistant.log"),
            ],
        )

    async def until(self, what: str, probe: Callable[[View], list[str]], timeout_s: float) -> bool:
        """Wait until `probe(view)` reports no problem; record a check either way."""
        last: list[str] = ["never looked"]

        async def attempt() -> bool | None:
            nonlocal last
            last = probe(await look(self.ha))
            return True if not last else None

        try:
            await wait_for(what, attempt, timeout_s)
        except TimeoutError:
            return self.results.check(False, what, "; ".join(last[:8]))
        return self.results.check(True, what)

    async def live(self, unique_id: str, timeout_s: float = 20) -> bool:
        """True when the entity's last_reported moves on: values keep arriving."""
        first = await look(self.ha)
        entity_id = first.entities[unique_id]["entity_id"]
        before = first.states[entity_id].get("last_reported")

        async def moved() -> bool | None:
            now = (await look(self.ha)).states[entity_id].get("last_reported")
            return True if now != before else None

        try:
            await wait_for(f"{unique_id} updated", moved, timeout_s)
        except TimeoutError:
            return self.results.check(False, f"{unique_id} receives live samples")
        return self.results.check(True, f"{unique_id} receives live samples", entity_id)

    async def reannounced(self, births: int, timeout_s: float = 60) -> bool:
        """Wait for the master to log its re-announce on Home Assistant's `births`-th birth."""
        log = self.setup.work / "master.log"

        async def seen() -> bool | None:
            count = log.read_text(errors="replace").count("Home Assistant is online: re-announcing")
            return True if count >= births else None

        what = f"the master re-announced on Home Assistant's birth ({births} births)"
        try:
            await wait_for(what, seen, timeout_s)
        except TimeoutError:
            return self.results.check(False, what)
        return self.results.check(True, what)

    async def master_get(self, path: str) -> Any:
        """GET a JSON document from the master's API."""
        async with self.ha.session.get(self.master_api + path) as response:
            response.raise_for_status()
            return await response.json()

    async def press_refresh(self, node: str) -> None:
        """Press the node's Refresh button through HA's REST API; the node must answer."""
        check = self.results.check
        view = await look(self.ha)
        entry = view.entities.get(f"picluster_{node}_refresh")
        if not check(entry is not None, f"{node} has a Refresh button in Home Assistant"):
            return
        assert entry is not None
        entity_id = entry["entity_id"]
        before = (await self.master_get(f"/api/nodes/{node}"))["details_ts"]
        known = {
            c["id"] for c in (await self.master_get(f"/api/nodes/{node}/commands"))["commands"]
        }
        say(f"pressing {entity_id} (POST /api/services/button/press)")
        await self.ha.rest("POST", "/api/services/button/press", {"entity_id": entity_id})

        async def answered() -> dict[str, Any] | None:
            commands = (await self.master_get(f"/api/nodes/{node}/commands"))["commands"]
            new = [c for c in commands if c["id"] not in known and c["status"] != "pending"]
            return new[0] if new else None

        try:
            record = await wait_for("the master's record of the press", answered, 30, 0.5)
        except TimeoutError:
            check(False, f"pressing Refresh sent refresh to {node} and it answered")
            return
        check(
            record["command"] == "refresh" and record["ok"] is True,
            f"pressing Refresh sent refresh to {node} and it answered",
            f"{record['command']}: {record['status']} {record.get('result')}",
        )
        after = (await self.master_get(f"/api/nodes/{node}"))["details_ts"]
        check(after != before, f"{node} re-sent its machine details", f"{before} -> {after}")
        state = (await look(self.ha)).state(f"picluster_{node}_refresh")
        check(
            _timestamp_ok(state or ""), "Home Assistant shows when Refresh was pressed", state or ""
        )
        refused = (await self.master_get("/api/cluster"))["master"]["rejected"]
        check("bad_ha_command" not in refused, "the master refused no press", json.dumps(refused))

    async def go(self) -> None:
        """Every step, in the order a user would live through them."""
        check = self.results.check
        self.start_stack()
        self.write_ha_config()
        self.start_ha()
        say(f"Home Assistant starting on {self.ha.base} (log: {self.config}/home-assistant.log)")
        await wait_for("Home Assistant HTTP", self.ha.up, 300)
        await self.ha.onboard()
        check(True, "Home Assistant onboarded through its API")
        configs = await asyncio.to_thread(retained_discovery, self.broker_port)
        nodes = {n: expected_keys(configs, f"picluster_{n}") for n in NODES}
        for node, keys in nodes.items():
            check(
                all(k in keys for k in MUST_HAVE),
                f"master announced {node} with every required entity",
                ", ".join(keys),
            )
        for node in NODES:
            metrics = (await self.master_get(f"/api/nodes/{node}")).get("metrics") or {}
            self.unknown_ok[node] = frozenset(k for k, v in metrics.items() if v is None)
        nulls = {n: sorted(keys) for n, keys in self.unknown_ok.items()}
        say(f"metrics the nodes send as null (may show unknown): {json.dumps(nulls)}")
        entry = await self.ha.add_mqtt(self.broker_port)
        check(True, "MQTT integration added through the config flow", entry.get("title", ""))

        def all_live(view: View) -> list[str]:
            problems = [
                f"no device picluster_{n}" for n in NODES if f"picluster_{n}" not in view.devices
            ]
            if CLUSTER_OBJECT_ID not in view.devices:
                problems.append("no cluster device")
            for node, keys in nodes.items():
                problems += [
                    f"{node}: {p}" for p in node_problems(view, node, keys, self.unknown_ok[node])
                ]
            return problems + [f"cluster: {p}" for p in cluster_problems(view, len(NODES))]

        await self.until(
            "every node and the cluster appear as devices with live values", all_live, 90
        )
        await self.reannounced(1)
        view = await look(self.ha)
        hostnames = {n: view.state(f"picluster_{n}_hostname") for n in NODES}
        check(
            set(hostnames.values()) == {socket.gethostname()},
            "both nodes report this machine's hostname, shown as their Hostname sensor",
            json.dumps(hostnames),
        )
        check(
            device_names(view) == {n: n for n in NODES},
            "each node's device is named by its node id, not by the shared hostname",
            json.dumps(device_names(view)),
        )
        wrong = entity_id_problems(view, configs)
        check(
            not wrong,
            "every entity id is <platform>.<node>_<key>, none with a _2 suffix",
            "; ".join(wrong[:8])
            or f"e.g. {view.entities[f'picluster_{KEPT}_cpu_percent']['entity_id']}",
        )
        registered = {uid: entry["entity_id"] for uid, entry in view.entities.items()}
        cluster_id = view.devices.get(CLUSTER_OBJECT_ID, {}).get("id")
        for node in NODES:
            device = view.devices.get(f"picluster_{node}", {})
            check(
                device.get("via_device_id") == cluster_id and cluster_id is not None,
                f"{node}'s device is connected via the picluster device",
                f"{device.get('name')} / {device.get('model')} / sw {device.get('sw_version')}",
            )
        await self.live(f"picluster_{KEPT}_cpu_percent")
        check(
            "reboot" in nodes[REBOOT_ENABLED]
            and all("reboot" not in keys for n, keys in nodes.items() if n != REBOOT_ENABLED)
            and all("shutdown" not in keys for keys in nodes.values()),
            f"a Reboot button only on {REBOOT_ENABLED} (the only node enabling it), no Shutdown",
        )
        await self.press_refresh(KEPT)
        self.dump_states(view, "states-live.json")
        if self.setup.screenshot:
            self.take_screenshot(view)

        say(f"SIGKILL {KILLED}")
        self.procs.stop(KILLED, signal.SIGKILL)
        killed_keys = [k for k in nodes[KILLED] if k not in MASTER_GATED]

        def killed_unavailable(view: View) -> list[str]:
            shown = view.of(f"picluster_{KILLED}")
            problems = [f"{k}={shown.get(k)}" for k in killed_keys if shown.get(k) not in GONE]
            if shown.get("online") != "off":
                problems.append(f"online={shown.get('online')} (expected off)")
            return problems

        await self.until(f"killed {KILLED}: its entities turn unavailable", killed_unavailable, 30)
        await self.until(
            "the other node stays live while one is dead",
            lambda v: (
                node_problems(v, KEPT, nodes[KEPT], self.unknown_ok[KEPT])
                + cluster_problems(v, len(NODES) - 1)
            ),
            30,
        )

        say("restarting Home Assistant")
        code = self.procs.stop("hass", signal.SIGTERM, timeout_s=120)
        check(code in (0, 100), "Home Assistant stopped cleanly", f"exit code {code}")
        self.start_ha()
        await wait_for("Home Assistant HTTP after restart", self.ha.up, 300)

        def after_restart(view: View) -> list[str]:
            wanted = (f"picluster_{KEPT}", f"picluster_{KILLED}", CLUSTER_OBJECT_ID)
            problems = [f"no device {o}" for o in wanted if o not in view.devices]
            problems += [
                f"{KEPT}: {p}"
                for p in node_problems(view, KEPT, nodes[KEPT], self.unknown_ok[KEPT])
            ]
            problems += [f"cluster: {p}" for p in cluster_problems(view, len(NODES) - 1)]
            return problems + [f"{KILLED}: {p}" for p in killed_unavailable(view)]

        await self.until("after an HA restart everything is back, with values", after_restart, 120)
        view = await look(self.ha)
        moved = [
            f"{uid}: {was} -> {view.entities[uid]['entity_id'] if uid in view.entities else None}"
            for uid, was in registered.items()
            if view.entities.get(uid, {}).get("entity_id") != was
        ]
        check(
            not moved and device_names(view) == {n: n for n in NODES},
            "after an HA restart every entity id and device name is unchanged",
            "; ".join(moved[:8]) or f"{len(registered)} entities",
        )
        await self.live(f"picluster_{KEPT}_cpu_percent")
        await self.reannounced(2)
        say(f"cluster-master forget {KILLED}")
        master = str(self.setup.picluster_bin / "cluster-master")
        forget = await asyncio.to_thread(
            subprocess.run,
            [master, "forget", KILLED, "--api", self.master_api],
            capture_output=True,
            text=True,
            check=False,
        )
        check(forget.returncode == 0, f"cluster-master forget {KILLED}", forget.stdout.strip())

        def forgotten(view: View) -> list[str]:
            prefix = f"picluster_{KILLED}"
            problems = [f"device {d} remains" for d in view.devices if d == prefix]
            problems += [f"entity {u} remains" for u in view.entities if u.startswith(prefix + "_")]
            return problems

        await self.until(f"forgotten {KILLED} leaves no device or entity behind", forgotten, 30)
        left = await asyncio.to_thread(retained_discovery, self.broker_port)
        check(
            f"picluster_{KILLED}" not in left and f"picluster_{KEPT}" in left,
            f"no retained discovery for {KILLED} on the broker, {KEPT}'s still there",
            ", ".join(sorted(left)),
        )
        await self.until(
            f"{KEPT} and the cluster unaffected by the forget",
            lambda v: (
                node_problems(v, KEPT, nodes[KEPT], self.unknown_ok[KEPT]) + cluster_problems(v, 1)
            ),
            30,
        )
        self.dump_states(await look(self.ha), "states-end.json")
        problems = log_problems(self.config)
        check(
            not problems,
            "no MQTT/discovery warnings or errors in Home Assistant's log",
            "".join(f"\n      {line}" for line in problems[:20]),
        )

    def dump_states(self, view: View, name: str) -> None:
        """Save what HA shows for picluster's entities (unique_id -> state, unit, attributes)."""
        shown = {
            uid: view.states.get(entry["entity_id"], {"state": None})
            for uid, entry in sorted(view.entities.items())
        }
        (self.setup.work / name).write_text(json.dumps(shown, indent=1, sort_keys=True))
        say(f"states saved in {self.setup.work / name}")

    def take_screenshot(self, view: View) -> None:
        """Screenshot KEPT's device page through a login page served under /local/."""
        assert self.setup.screenshot is not None
        device_id = view.devices[f"picluster_{KEPT}"]["id"]
        write_login_page(self.config / "www", self.ha, f"/config/devices/device/{device_id}")
        ok = screenshot(
            self.ha.base + "/local/login.html", self.setup.screenshot, self.setup.chromium
        )
        say(f"screenshot {'saved in ' + str(self.setup.screenshot) if ok else 'failed'}")


async def amain(setup: Setup) -> int:
    """Run the whole check; always stop what it started; print the summary."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        run = Run(setup, session)
        try:
            await run.go()
        except Exception as error:  # a broken step ends the run but still gets a summary
            run.results.check(False, "the run completed", f"{type(error).__name__}: {error}")
        finally:
            run.procs.stop_all()
    sys.stdout.write(run.results.summary() + "\n")
    sys.stdout.write(f"logs and saved states in {setup.work}\n")
    return 0 if run.results.passed else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="an empty directory for this run")
    parser.add_argument("--picluster-bin", type=Path, required=True, help="picluster venv's bin/")
    parser.add_argument("--hass", type=Path, required=True, help="Home Assistant's hass program")
    parser.add_argument("--mosquitto", default="mosquitto")
    parser.add_argument("--screenshot", type=Path, help="save a PNG of a node's device page")
    parser.add_argument("--chromium", default="chromium")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    setup = Setup(
        args.work.resolve(),
        args.picluster_bin,
        args.hass,
        args.mosquitto,
        args.screenshot.resolve() if args.screenshot else None,
        args.chromium,
    )
    return asyncio.run(amain(setup))


if __name__ == "__main__":
    sys.exit(main())
