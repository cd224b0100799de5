"""Small helpers for settings: the error type, the TOML file, variable names, booleans, secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

ENV_PREFIX: Final = "CLUSTER_"


class SettingsError(ValueError):
    """A setting with a bad value; the message names the field and what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML config file; raise SettingsError naming the file when it cannot be used."""
    import tomllib  # only with a config file: a node configured by flags never loads it

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
