"""Commands from the master: checked on paho's thread, run on a worker thread, answered on `reply`.

Never run: a retained command (no reply), a repeated id (no reply: the first one was answered),
an expired one (an error reply saying so). Unknown commands and bad arguments get an error reply.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import psutil

from cluster_protocol import MACHINE_DETAILS_FIELDS, EnvelopeError
from cluster_protocol.commands import (
    ALWAYS_ACCEPTED,
    CommandName,
    CommandPayloadError,
    build_reply,
    parse_command,
)
from cluster_protocol.payloads import ReplyPayload
from node_publisher import __version__
from node_publisher.collectors import PsutilLike
from node_publisher.settings import PublisherSettings
from node_publisher.tasks import TaskArgError, run_argv

logger = logging.getLogger(__name__)

MAX_SEEN_IDS: Final = 1000  # recent command ids kept (and persisted) to refuse repeats
QUEUE_SIZE: Final = 64
MIN_INTERVAL_S: Final = 0.1
MAX_INTERVAL_S: Final = 86_400.0
POWER_DELAY_S: Final = 1.0  # lets the reply leave before reboot/shutdown starts
POWER_TIMEOUT_S: Final = 60.0
ADVERTISED_KEYS: Final = frozenset({"commands", "tasks"})


class CommandError(Exception):
    """A command that cannot be carried out; the message goes into the error reply."""


class NodeControls(Protocol):
    """What commands may do to the agent (NodeAgent satisfies it)."""

    @property
    def interval(self) -> float:
        """Seconds between samples now."""
        ...

    def set_interval(self, interval_s: float) -> None:
        """Change the sampling interval and re-publish the details."""
        ...

    def refresh(self) -> int | None:
        """Publish details and one metrics sample now."""
        ...

    def publish_reply(self, payload: ReplyPayload) -> int:
        """Send one reply envelope."""
        ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """A command's result, and what to do once its reply is on its way."""

    result: Any
    after: Callable[[], None] | None = None


class CommandState:
    """Recent command ids and an interval set by command, kept in a small JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: deque[str] = deque(maxlen=MAX_SEEN_IDS)
        self._seen_set: set[str] = set()
        self.interval_s: float | None = None
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as error:
            logger.warning("ignoring unreadable command state %s: %s", self.path, error)
            return
        ids = data.get("seen") if isinstance(data, dict) else None
        for command_id in ids if isinstance(ids, list) else []:
            if isinstance(command_id, str):
                self._remember(command_id)
        interval = data.get("interval_s") if isinstance(data, dict) else None
        if isinstance(interval, int | float) and not isinstance(interval, bool) and interval > 0:
            self.interval_s = float(interval)

    def has_seen(self, command_id: str) -> bool:
        """True when this id was received before (here or before a restart)."""
        return command_id in self._seen_set

    def mark_seen(self, command_id: str) -> None:
        """Remember an id and save at once, so a restart in the middle does not re-run it."""
        self._remember(command_id)
        self.save()

    def _remember(self, command_id: str) -> None:
        if len(self.seen) == self.seen.maxlen:
            self._seen_set.discard(self.seen[0])
        self.seen.append(command_id)
        self._seen_set.add(command_id)

    def save(self) -> None:
        """Write the file atomically (a crash leaves the old or the new one, never half)."""
        data = {"seen": list(self.seen), "interval_s": self.interval_s}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        with temporary.open("w", encoding="utf-8") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)


def advertised_details(settings: PublisherSettings) -> dict[str, Any]:
    """Extra machine_details keys: the commands this node obeys and the tasks it defines.

    Sent only once the wire contract documents both keys (MACHINE_DETAILS_FIELDS), so a node
    never puts undocumented keys on the wire.
    """
    if not set(MACHINE_DETAILS_FIELDS) >= ADVERTISED_KEYS:
        return {}
    commands = [name.value for name in ALWAYS_ACCEPTED]
    if settings.allow_reboot:
        commands.append(CommandName.REBOOT.value)
    if settings.allow_shutdown:
        commands.append(CommandName.SHUTDOWN.value)
    return {"commands": commands, "tasks": sorted(settings.tasks)}


class CommandProcessor:
    """The node's CommandHandler: queue on paho's thread, check and run on a worker thread."""

    def __init__(
        self,
        settings: PublisherSettings,
        clock: Callable[[], float] = time.time,
        ps: PsutilLike = psutil,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._ps = ps
        self.state = CommandState(settings.command_state_path)
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(QUEUE_SIZE)
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        self._agent: NodeControls | None = None
        self._started_at = time.monotonic()
        self.ignored: dict[str, int] = {"retained": 0, "duplicate": 0, "expired": 0, "no_id": 0}
        self.handled = 0
        self._handlers: Mapping[str, Callable[[Mapping[str, Any]], Outcome]] = {
            CommandName.PING: self._ping,
            CommandName.REFRESH: self._refresh,
            CommandName.SET_INTERVAL: self._set_interval,
            CommandName.RUN: self._run,
            CommandName.REBOOT: self._reboot,
            CommandName.SHUTDOWN: self._shutdown,
        }

    def bind(self, agent: NodeControls) -> None:
        """Attach the agent; an interval set by an earlier command is applied again."""
        self._agent = agent
        if self.state.interval_s is not None and self.state.interval_s != agent.interval:
            logger.info(
                "sampling every %s s as set by command (overrides the configured %s s; kept in %s)",
                self.state.interval_s,
                agent.interval,
                self.state.path,
            )
            agent.set_interval(self.state.interval_s)

    def start(self) -> None:
        """Start the worker thread."""
        self._worker = threading.Thread(target=self._work, name="commands", daemon=True)
        self._worker.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop taking commands; wait briefly for the one running."""
        self._stopping.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        if self._worker is not None:
            self._worker.join(timeout_s)

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """True once every queued command is handled (for tests and orderly stops)."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    # -- paho's thread: decide quickly, never block -------------------------------------------

    def __call__(self, name: str, payload: bytes, retained: bool) -> None:
        """Queue one command message; a retained one is dropped without a reply."""
        if retained:
            # A retained command would replay on every reconnect: it is a mistake or an attack.
            self.ignored["retained"] += 1
            logger.warning("ignoring retained command %r: commands must never be retained", name)
            return
        try:
            self._queue.put_nowait((name, payload))
        except queue.Full:
            logger.warning("command queue full; dropping command %r", name)

    # -- the worker thread ------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._handle(*item)
            except Exception:
                logger.exception("command handling failed")
            finally:
                self._queue.task_done()

    def _handle(self, name: str, raw: bytes) -> None:
        try:
            command = parse_command(raw)
        except CommandPayloadError as error:
            self._refuse(name, error)
            return
        command_id = command.id
        if not self._first_time(name, command_id):
            return
        now = self._clock()
        if command.expires < now:
            self.ignored["expired"] += 1
            logger.warning(
                "not running expired command %r id %s (expired %.1f s ago)",
                name,
                command_id,
                now - command.expires,
            )
            self._reply(
                command_id, False, None, f"expired {now - command.expires:.1f} s ago; not run"
            )
            return
        handler = self._handlers.get(name)
        if handler is None:
            known = ", ".join(sorted(self._handlers))
            self._reply(command_id, False, None, f"unknown command {name!r} (known: {known})")
            return
        args = command.args
        logger.info("running command %r id %s", name, command_id)
        try:
            outcome = handler(args)
        except TaskFailedError as error:
            self._reply(command_id, False, error.result, str(error))
            return
        except CommandError as error:
            self._reply(command_id, False, None, str(error))
            return
        except Exception as error:
            logger.exception("command %r id %s failed", name, command_id)
            self._reply(command_id, False, None, f"internal error: {type(error).__name__}")
            return
        self.handled += 1
        self._reply(command_id, True, outcome.result, None)
        if outcome.after is not None:
            outcome.after()

    def _refuse(self, name: str, error: CommandPayloadError) -> None:
        """A payload that breaks the contract: an error reply when it has a usable id."""
        if error.command_id is None:
            self.ignored["no_id"] += 1
            logger.warning("ignoring command %r without a usable id (nothing to reply to)", name)
            return
        if self._first_time(name, error.command_id):
            self._reply(error.command_id, False, None, str(error))

    def _first_time(self, name: str, command_id: str) -> bool:
        """Remember an id; False (and nothing else happens) when it was seen before."""
        if self.state.has_seen(command_id):
            self.ignored["duplicate"] += 1
            logger.warning(
                "ignoring repeated command %r id %s (already answered)", name, command_id
            )
            return False
        self.state.mark_seen(command_id)
        return True

    def _reply(self, command_id: str, ok: bool, result: Any, error: str | None) -> None:
        try:
            self._controls().publish_reply(build_reply(command_id, ok, result, error))
        except EnvelopeError as failure:  # the result does not fit in one message
            logger.error("reply to %s not sent as is: %s", command_id, failure)
            self._controls().publish_reply(build_reply(command_id, False, None, "reply too large"))

    def _controls(self) -> NodeControls:
        if self._agent is None:
            raise RuntimeError("CommandProcessor.bind(agent) was not called")
        return self._agent

    # -- built-in commands ------------------------------------------------------------------

    def _ping(self, args: Mapping[str, Any]) -> Outcome:
        _no_args("ping", args)
        now = self._clock()
        return Outcome(
            {
                "time": now,
                "uptime_s": round(now - float(self._ps.boot_time()), 3),
                "agent_uptime_s": round(time.monotonic() - self._started_at, 3),
                "agent_version": __version__,
                "interval_s": self._controls().interval,
            }
        )

    def _refresh(self, args: Mapping[str, Any]) -> Outcome:
        _no_args("refresh", args)
        seq = self._controls().refresh()
        return Outcome({"metrics_seq": seq})

    def _set_interval(self, args: Mapping[str, Any]) -> Outcome:
        unknown = sorted(set(args) - {"interval_s"})
        if unknown:
            raise CommandError(f"set_interval: unknown argument {unknown[0]!r} (takes interval_s)")
        value = args.get("interval_s")
        if isinstance(value, str):
            with contextlib.suppress(ValueError):  # a command line sends text
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CommandError(f"set_interval needs interval_s, a number of seconds; got {value!r}")
        if not MIN_INTERVAL_S <= value <= MAX_INTERVAL_S:
            raise CommandError(
                f"interval_s must be between {MIN_INTERVAL_S:g} and {MAX_INTERVAL_S:g}, got {value}"
            )
        controls = self._controls()
        previous = controls.interval
        self.state.interval_s = float(value)
        self.state.save()  # before applying: a restart right after still uses the new value
        controls.set_interval(float(value))
        return Outcome({"interval_s": float(value), "previous_s": previous})

    def _run(self, args: Mapping[str, Any]) -> Outcome:
        unknown = sorted(set(args) - {"task", "args"})
        if unknown:
            raise CommandError(f"run: unknown argument {unknown[0]!r} (takes task and args)")
        name = args.get("task")
        defined = ", ".join(sorted(self.settings.tasks)) or "none"
        if not isinstance(name, str) or name not in self.settings.tasks:
            raise CommandError(f"no task {name!r} is defined on this node (defined: {defined})")
        task = self.settings.tasks[name]
        task_args = args.get("args", {})
        if not isinstance(task_args, dict):
            raise CommandError("run: args must be a JSON object")
        try:
            argv = task.build_argv(task_args)
        except TaskArgError as error:
            raise CommandError(f"task {name!r}: {error}") from None
        try:
            result = run_argv(argv, task.timeout_s, task.max_output_bytes)
        except OSError as error:
            raise CommandError(f"task {name!r} could not start: {error}") from None
        if result.timed_out:
            raise TaskFailedError(
                f"task {name!r} timed out after {task.timeout_s:g} s and was killed",
                result.to_dict(),
            )
        if result.exit_code != 0:
            raise TaskFailedError(
                f"task {name!r} exited with code {result.exit_code}", result.to_dict()
            )
        return Outcome(result.to_dict())

    def _reboot(self, args: Mapping[str, Any]) -> Outcome:
        return self._power("reboot", args, self.settings.allow_reboot, self.settings.reboot_command)

    def _shutdown(self, args: Mapping[str, Any]) -> Outcome:
        return self._power(
            "shutdown", args, self.settings.allow_shutdown, self.settings.shutdown_command
        )

    def _power(
        self, name: str, args: Mapping[str, Any], allowed: bool, argv: tuple[str, ...]
    ) -> Outcome:
        _no_args(name, args)
        if not allowed:
            raise CommandError(
                f"{name} is not enabled on this node (set allow_{name} = true in its config)"
            )

        def act() -> None:
            self._stopping.wait(POWER_DELAY_S)
            logger.warning("%s requested by the master: running %s", name, list(argv))
            try:
                done = subprocess.run(list(argv), timeout=POWER_TIMEOUT_S, check=False)
            except (OSError, subprocess.TimeoutExpired) as error:
                logger.error("%s command %s failed: %s", name, list(argv), error)
                return
            if done.returncode != 0:
                logger.error("%s command %s exited %s", name, list(argv), done.returncode)

        return Outcome({"scheduled": name, "in_s": POWER_DELAY_S}, after=act)


class TaskFailedError(CommandError):
    """A task that ran but failed: the reply carries both the error and the output."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


def _no_args(name: str, args: Mapping[str, Any]) -> None:
    if args:
        raise CommandError(f"{name} takes no arguments, got {', '.join(sorted(args))}")
