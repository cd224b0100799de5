"""Tasks a node may `run`: named in its TOML config, arguments checked, time and output bounded.

    [tasks.disk-report]
    command = ["df", "-h", "{mount}"]
    timeout_s = 10
    max_output_bytes = 8192
    args.mount = { type = "string", pattern = "^/[a-z0-9/]*$", default = "/" }

Each `{name}` inside a command element is replaced by the checked argument; the argv list goes to
the kernel as is, never through a shell.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any, Final

from cluster_protocol.config import SettingsError

DEFAULT_TIMEOUT_S: Final = 30.0
MAX_TIMEOUT_S: Final = 3600.0
DEFAULT_MAX_OUTPUT_BYTES: Final = 8192
# Both streams together must fit in one reply envelope (64 KiB) with room for the JSON around them.
MAX_OUTPUT_BYTES: Final = 24 * 1024
ARG_TYPES: Final = ("string", "integer", "number", "boolean")
_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_PLACEHOLDER: Final = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_TASK_KEYS: Final = frozenset({"command", "timeout_s", "max_output_bytes", "args"})
_ARG_KEYS: Final = frozenset({"type", "pattern", "default", "choices", "min", "max"})


class TaskArgError(ValueError):
    """Arguments that do not match the task's declaration."""


@dataclass(frozen=True, slots=True)
class ArgSpec:
    """One declared argument of a task."""

    name: str
    type: str = "string"
    pattern: str | None = None
    default: Any = None  # None: the argument is required
    choices: tuple[Any, ...] = ()
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One task from `[tasks.<name>]`."""

    name: str
    command: tuple[str, ...]
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    args: tuple[ArgSpec, ...] = ()

    def build_argv(self, given: Mapping[str, Any]) -> list[str]:
        """The argv with every placeholder filled from checked arguments; raise TaskArgError."""
        values = check_args(self.args, given)
        return [
            _PLACEHOLDER.sub(lambda m: _render(values[m.group(1)]), part) for part in self.command
        ]


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def check_args(specs: tuple[ArgSpec, ...], given: Mapping[str, Any]) -> dict[str, Any]:
    """Validate and convert the given arguments against their declarations."""
    known = {spec.name for spec in specs}
    unknown = sorted(set(given) - known)
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise TaskArgError(f"unknown argument {unknown[0]!r} (allowed: {allowed})")
    values: dict[str, Any] = {}
    for spec in specs:
        if spec.name not in given:
            if spec.default is None:
                raise TaskArgError(f"argument {spec.name!r} is required")
            values[spec.name] = spec.default
            continue
        values[spec.name] = _check_one(spec, given[spec.name])
    return values


def _check_one(spec: ArgSpec, raw: Any) -> Any:
    value = _convert(spec, raw)
    if spec.choices and value not in spec.choices:
        choices = ", ".join(map(str, spec.choices))
        raise TaskArgError(f"argument {spec.name!r} must be one of {choices}, got {raw!r}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if spec.min is not None and value < spec.min:
            raise TaskArgError(f"argument {spec.name!r} must be >= {spec.min:g}, got {value}")
        if spec.max is not None and value > spec.max:
            raise TaskArgError(f"argument {spec.name!r} must be <= {spec.max:g}, got {value}")
    if spec.pattern is not None and not re.fullmatch(spec.pattern, _render(value)):
        raise TaskArgError(f"argument {spec.name!r} does not match {spec.pattern!r}: {raw!r}")
    return value


def _convert(spec: ArgSpec, raw: Any) -> Any:
    """Accept the declared type, or its text form (command lines send strings)."""
    bad = TaskArgError(f"argument {spec.name!r} must be {spec.type}, got {raw!r}")
    if spec.type == "string":
        if isinstance(raw, str):
            value = raw
        elif isinstance(raw, int | float) and not isinstance(raw, bool):
            value = str(raw)
        else:
            raise bad
        if "\x00" in value:
            raise bad
        return value
    if spec.type == "boolean":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        raise bad
    if isinstance(raw, bool):
        raise bad
    if spec.type == "integer":
        if isinstance(raw, int):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        if isinstance(raw, str) and re.fullmatch(r"[+-]?[0-9]+", raw.strip()):
            return int(raw)
        raise bad
    if isinstance(raw, int | float):
        number = float(raw)
    elif isinstance(raw, str):
        try:
            number = float(raw)
        except ValueError:
            raise bad from None
    else:
        raise bad
    if not math.isfinite(number):
        raise bad
    return number


# -- parsing the config ------------------------------------------------------------------------


def parse_tasks(raw: Any) -> dict[str, TaskSpec]:
    """Build task specs from the TOML `[tasks]` table; raise SettingsError naming the bad key."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SettingsError("tasks", "must be a table of [tasks.<name>] sections")
    return {name: _parse_task(name, table) for name, table in raw.items()}


def _parse_task(name: str, table: Any) -> TaskSpec:
    where = f"tasks.{name}"
    if not _NAME.match(name):
        raise SettingsError(where, "task names use a-z, 0-9, '_' and '-' (up to 63 characters)")
    if not isinstance(table, dict):
        raise SettingsError(where, "must be a table")
    unknown = sorted(set(table) - _TASK_KEYS)
    if unknown:
        raise SettingsError(f"{where}.{unknown[0]}", f"unknown key (known: {sorted(_TASK_KEYS)})")
    command = table.get("command")
    if (
        not isinstance(command, list)
        or not command
        or not all(isinstance(part, str) for part in command)
    ):
        raise SettingsError(f"{where}.command", "must be a non-empty list of strings (the argv)")
    if "{" in command[0]:
        raise SettingsError(f"{where}.command", "the program itself must not be an argument")
    timeout = table.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise SettingsError(f"{where}.timeout_s", f"must be a number, got {timeout!r}")
    if not 0 < timeout <= MAX_TIMEOUT_S:
        raise SettingsError(f"{where}.timeout_s", f"must be > 0 and <= {MAX_TIMEOUT_S:g}")
    limit = table.get("max_output_bytes", DEFAULT_MAX_OUTPUT_BYTES)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_OUTPUT_BYTES:
        raise SettingsError(f"{where}.max_output_bytes", f"must be 1..{MAX_OUTPUT_BYTES}")
    args = _parse_args(where, table.get("args", {}))
    declared = {arg.name for arg in args}
    for part in command:
        for placeholder in _PLACEHOLDER.findall(part):
            if placeholder not in declared:
                raise SettingsError(f"{where}.command", f"{{{placeholder}}} is not a declared arg")
    return TaskSpec(name, tuple(command), float(timeout), limit, args)


def _parse_args(where: str, raw: Any) -> tuple[ArgSpec, ...]:
    if not isinstance(raw, dict):
        raise SettingsError(f"{where}.args", "must be a table of argument declarations")
    specs: list[ArgSpec] = []
    for name, decl in raw.items():
        key = f"{where}.args.{name}"
        if not _PLACEHOLDER.fullmatch("{" + name + "}"):
            raise SettingsError(key, "argument names use a-z, 0-9 and '_'")
        if not isinstance(decl, dict):
            raise SettingsError(key, 'must be a table such as { type = "string" }')
        unknown = sorted(set(decl) - _ARG_KEYS)
        if unknown:
            raise SettingsError(f"{key}.{unknown[0]}", f"unknown key (known: {sorted(_ARG_KEYS)})")
        arg_type = decl.get("type", "string")
        if arg_type not in ARG_TYPES:
            raise SettingsError(f"{key}.type", f"must be one of {', '.join(ARG_TYPES)}")
        pattern = decl.get("pattern")
        if pattern is not None:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as error:
                raise SettingsError(
                    f"{key}.pattern", f"not a regular expression: {error}"
                ) from None
        choices = decl.get("choices", [])
        if not isinstance(choices, list):
            raise SettingsError(f"{key}.choices", "must be a list")
        spec = ArgSpec(
            name=name,
            type=arg_type,
            pattern=pattern,
            default=decl.get("default"),
            choices=tuple(choices),
            min=decl.get("min"),
            max=decl.get("max"),
        )
        if spec.default is not None:
            try:
                _check_one(spec, spec.default)
            except TaskArgError as error:
                raise SettingsError(f"{key}.default", str(error)) from None
        specs.append(spec)
    return tuple(specs)


# -- running -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskResult:
    """What a finished (or killed) task did."""

    exit_code: int | None
    stdout: str
    stderr: str
    truncated: bool
    timed_out: bool
    duration_s: float

    def to_dict(self) -> dict[str, Any]:
        """The result as it goes into the reply."""
        return {
            "exit_code": self.exit_code,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "truncated": self.truncated,
            "timed_out": self.timed_out,
            "duration_s": round(self.duration_s, 3),
        }


def run_argv(argv: list[str], timeout_s: float, max_output_bytes: int) -> TaskResult:
    """Run an argv (no shell) in its own process group; kill the group on timeout.

    Output goes to temporary files, not pipes: a grandchild that keeps a pipe open would
    otherwise hold us past the timeout, and a chatty task cannot fill our memory.
    """
    started = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
            close_fds=True,
        )
        timed_out = False
        try:
            exit_code: int | None = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(process.pid)
            process.wait()
            exit_code = None
        stdout, cut_out = _read_bounded(out, max_output_bytes)
        stderr, cut_err = _read_bounded(err, max_output_bytes - len(stdout.encode()))
    return TaskResult(
        exit_code=exit_code,
        stdout=stdout,
        stderr=stderr,
        truncated=cut_out or cut_err,
        timed_out=timed_out,
        duration_s=time.monotonic() - started,
    )


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(pid, signal.SIGKILL)


def _read_bounded(handle: IO[bytes], limit: int) -> tuple[str, bool]:
    size = handle.seek(0, os.SEEK_END)
    handle.seek(0)
    data = handle.read(max(0, limit))
    return data.decode("utf-8", errors="replace"), size > len(data)
