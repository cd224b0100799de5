"""Layered configuration shared by both services: defaults < TOML file < environment < flags."""

from __future__ import annotations

import dataclasses
import tomllib
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, get_args, get_type_hints

ENV_PREFIX: Final = "CLUSTER_"


class SettingsError(ValueError):
    """A setting with a bad value; the message names the field and what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML config file; raise SettingsError naming the file when it cannot be used."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as error:
        raise SettingsError("config", f"file {path} does not exist") from error
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise SettingsError("config", f"cannot read {path}: {error}") from error


def env_name(field: str) -> str:
    """The environment variable that sets a field: `broker` -> `CLUSTER_BROKER`."""
    return ENV_PREFIX + field.upper()


def layer(
    defaults: Mapping[str, Any],
    file_values: Mapping[str, Any],
    environ: Mapping[str, str],
    flags: Mapping[str, Any],
    converters: Mapping[str, Callable[[str], Any]],
) -> dict[str, Any]:
    """Merge the four layers; unknown file keys are errors, flags left as None do not count."""
    unknown = sorted(set(file_values) - set(defaults))
    if unknown:
        raise SettingsError(
            unknown[0], f"unknown key in config file (known: {', '.join(sorted(defaults))})"
        )
    merged = dict(defaults)
    merged.update(file_values)
    for field in defaults:
        raw = environ.get(env_name(field))
        if raw is None or raw == "":
            continue
        convert = converters.get(field, str)
        try:
            merged[field] = convert(raw)
        except ValueError as error:
            raise SettingsError(
                field, f"{env_name(field)}={raw!r} is not valid: {error}"
            ) from error
    merged.update({key: value for key, value in flags.items() if value is not None})
    return merged


def to_bool(raw: str) -> bool:
    """Parse an environment boolean: 1/0, true/false, yes/no, on/off."""
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{raw!r} is not a boolean (use true or false)")


def read_secret_file(field: str, path: str) -> str:
    """Read a password from a file (first line), so it never appears in `ps` output."""
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, IndexError) as error:
        raise SettingsError(field, f"cannot read a password from {path}: {error}") from error


def check_types(settings: Any) -> None:
    """Raise SettingsError when a settings field holds a wrong type (e.g. from TOML)."""
    hints = get_type_hints(type(settings))
    for item in dataclasses.fields(settings):
        value = getattr(settings, item.name)
        allowed = _allowed_types(hints[item.name])
        if isinstance(value, bool) and bool not in allowed:
            ok = False
        else:
            ok = isinstance(value, allowed)
        if not ok:
            names = " or ".join(sorted(t.__name__ for t in allowed))
            raise SettingsError(item.name, f"must be {names}, got {type(value).__name__} {value!r}")


def _allowed_types(hint: Any) -> tuple[type, ...]:
    members = get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    allowed = tuple(type(None) if m is None else m for m in members)
    if float in allowed:
        allowed += (int,)  # TOML and env give 10 for 10.0
    return allowed


def field_defaults(settings_class: type) -> dict[str, Any]:
    """Each field's default value of a settings dataclass (default factories called)."""
    defaults: dict[str, Any] = {}
    for item in dataclasses.fields(settings_class):
        if item.default is not dataclasses.MISSING:
            defaults[item.name] = item.default
        elif item.default_factory is not dataclasses.MISSING:
            defaults[item.name] = item.default_factory()
    return defaults
