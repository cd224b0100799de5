"""One declaration per setting, from which its TOML key, variable, flag and checks all follow.

A settings class is a frozen dataclass whose fields are made with `setting(...)`. For a field
`keepalive` that gives the TOML key `keepalive`, the variable `CLUSTER_KEEPALIVE` and the flag
`--keepalive` (secrets get no flag: a flag shows in `ps`). `load(cls, flags, environ)` merges
defaults < TOML file < environment < flags; `finish(self)` in `__post_init__` takes a password
out of the broker URL and checks every field's type and rule, raising SettingsError naming it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Final, TypeVar, get_args, get_origin, get_type_hints

from cluster_protocol.broker_url import BrokerUrlError, split_password
from cluster_protocol.config import (
    SettingsError,
    env_name,
    read_secret_file,
    read_toml,
    to_bool,
)

CONFIG_ENV: Final = "CLUSTER_CONFIG"
DEFAULT_BROKER: Final = "mqtt://127.0.0.1:1883"
DEFAULT_INTERVAL_S: Final = 10.0  # the node's sampling interval; the master assumes it too
DEFAULT_KEEPALIVE_S: Final = 30
PASSWORD_IN_FILE: Final = "keep passwords out of config files: use password_file"
_SPEC: Final = "picluster.setting"

Check = Callable[[Any], str | None]
"""A rule for one value: None when it holds, else what is wrong ("must be greater than 0...")."""

T = TypeVar("T")
_SPECS: dict[type, tuple[Spec, ...]] = {}


class Kind(Enum):
    """The value types a setting can have, each with its text and TOML forms."""

    TEXT = "a string"
    WHOLE = "a whole number"
    NUMBER = "a number"
    BOOL = "true or false"
    PATH = "a path"
    ARGV = "a list of strings (an argv)"
    TABLE = "a table"


@dataclass(frozen=True, slots=True)
class Spec:
    """What one `setting(...)` declared, plus what follows from the field's name and type."""

    help: str
    check: Check | None = None
    secret: bool = False
    flag: bool = True
    env: bool = True
    in_file: str | None = None  # None: allowed in the TOML file; else why it is refused
    normalize: Callable[[Any], Any] | None = None
    from_file: Callable[[Any], Any] | None = None  # parses a TOML value of kind TABLE
    default_from_env: Callable[[Mapping[str, str]], Any] | None = None
    password_of: str | None = None  # this URL's password moves to that field
    secret_file_of: str | None = None  # this file's first line fills that field
    metavar: str | None = None
    name: str = ""
    kind: Kind = Kind.TEXT
    optional: bool = False

    @property
    def env_name(self) -> str | None:
        """`CLUSTER_<NAME>`, or None for a setting read from the TOML file only."""
        return env_name(self.name) if self.env else None

    @property
    def flag_name(self) -> str | None:
        """`--name-with-dashes`, or None for secrets and file-only settings."""
        return "--" + self.name.replace("_", "-") if self.flag else None


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    default_factory: Any = dataclasses.MISSING,
    check: Check | None = None,
    secret: bool = False,
    file_only: bool = False,
    in_file: str | None = None,
    normalize: Callable[[Any], Any] | None = None,
    from_file: Callable[[Any], Any] | None = None,
    default_from_env: Callable[[Mapping[str, str]], Any] | None = None,
    password_of: str | None = None,
    secret_file_of: str | None = None,
    metavar: str | None = None,
) -> Any:
    """A dataclass field declaring one setting (secret: no flag and left out of repr)."""
    spec = Spec(
        help=help,
        check=check,
        secret=secret,
        flag=not (secret or file_only),
        env=not file_only,
        in_file=in_file,
        normalize=normalize,
        from_file=from_file,
        default_from_env=default_from_env,
        password_of=password_of,
        secret_file_of=secret_file_of,
        metavar=metavar,
    )
    return dataclasses.field(
        default=default,
        default_factory=default_factory,
        repr=not secret,
        metadata={_SPEC: spec},
    )


def specs(settings_class: type) -> tuple[Spec, ...]:
    """Every declared setting of a settings class, in declaration order."""
    known = _SPECS.get(settings_class)
    if known is not None:  # a class's declarations never change; get_type_hints is slow
        return known
    hints = get_type_hints(settings_class)
    found = []
    for item in dataclasses.fields(settings_class):
        spec = item.metadata.get(_SPEC)
        if spec is None:
            raise TypeError(f"{settings_class.__name__}.{item.name} is not made with setting()")
        kind, optional = _kind_of(hints[item.name])
        found.append(dataclasses.replace(spec, name=item.name, kind=kind, optional=optional))
    _SPECS[settings_class] = tuple(found)
    return _SPECS[settings_class]


def _kind_of(hint: Any) -> tuple[Kind, bool]:
    members = get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    optional = type(None) in members
    (base,) = [m for m in members if m is not type(None)]
    simple = {str: Kind.TEXT, int: Kind.WHOLE, float: Kind.NUMBER, bool: Kind.BOOL, Path: Kind.PATH}
    if base in simple:
        return simple[base], optional
    if get_origin(base) is tuple:
        return Kind.ARGV, optional
    return Kind.TABLE, optional


# -- the command line ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, settings_class: type) -> None:
    """Add `--config` and one flag per setting (all default to None, i.e. not given)."""
    parser.add_argument("--config", metavar="FILE", help=f"TOML config file (or {CONFIG_ENV})")
    for spec in specs(settings_class):
        flag = spec.flag_name
        if flag is None:
            continue
        if spec.kind is Kind.BOOL:
            help_text = f"{spec.help}; --no-{flag[2:]} for false (env {spec.env_name})"
            # `--ha-discovery`, `--ha-discovery false` and `--no-ha-discovery` all work.
            parser.add_argument(
                flag, dest=spec.name, nargs="?", const="true", metavar="BOOL", help=help_text
            )
            parser.add_argument(
                "--no-" + flag[2:], dest=spec.name, action="store_const", const="false",
                help=argparse.SUPPRESS,
            )  # fmt: skip
        else:
            metavar = spec.metavar or spec.name.upper()
            help_text = f"{spec.help} (env {spec.env_name})"
            parser.add_argument(flag, dest=spec.name, metavar=metavar, help=help_text)


# -- loading ------------------------------------------------------------------------------------


def load(settings_class: type[T], flags: Mapping[str, Any], environ: Mapping[str, str]) -> T:
    """Merge defaults < TOML file < environment < flags into `settings_class`; SettingsError."""
    all_specs = specs(settings_class)
    by_name = {spec.name: spec for spec in all_specs}
    values: dict[str, Any] = {}
    config = flags.get("config") or environ.get(CONFIG_ENV)
    if config:
        for key, raw in read_toml(Path(config)).items():
            spec = by_name.get(key)
            if spec is None:
                known = ", ".join(sorted(n for n, s in by_name.items() if s.in_file is None))
                raise SettingsError(key, f"unknown key in config file (known: {known})")
            if spec.in_file is not None:
                raise SettingsError(key, spec.in_file)
            values[key] = from_toml(spec, raw)
    for spec in all_specs:
        variable = spec.env_name
        raw = environ.get(variable) if variable else None
        if variable and raw:
            values[spec.name] = from_text(spec, raw, variable)
    for spec in all_specs:
        raw = flags.get(spec.name) if spec.flag_name else None
        if spec.flag_name and raw is not None:
            values[spec.name] = from_text(spec, str(raw), spec.flag_name)
    for spec in all_specs:
        if spec.name not in values and spec.default_from_env is not None:
            values[spec.name] = spec.default_from_env(environ)
    _take_url_password(all_specs, values)
    for spec in all_specs:
        target = spec.secret_file_of
        if target and values.get(spec.name) and values.get(target) is None:
            values[target] = read_secret_file(spec.name, values[spec.name])
    return settings_class(**values)


def from_text(spec: Spec, raw: str, source: str) -> Any:
    """Convert a flag's or variable's text to the setting's type; SettingsError naming both."""
    try:
        value: Any = _TEXT_PARSERS[spec.kind](raw)
    except (ValueError, KeyError) as error:
        why = error if isinstance(error, ValueError) else f"is not {spec.kind.value}"
        raise SettingsError(spec.name, f"{source} {raw!r} {why}") from error
    return spec.normalize(value) if spec.normalize else value


def from_toml(spec: Spec, raw: Any) -> Any:
    """Check a TOML value's type (any type can be written there) and bring it to the field's."""
    if spec.kind is Kind.TABLE and spec.from_file is not None:
        return spec.from_file(raw)
    complaint = _type_complaint(spec, raw, toml=True)
    if complaint:
        raise SettingsError(spec.name, complaint + " in the config file")
    value = _settle(spec, raw)
    return spec.normalize(value) if spec.normalize else value


def _whole(raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError("is not a whole number") from None


def _number(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError("is not a number") from None
    if not math.isfinite(value):
        raise ValueError("is not a finite number")
    return value


def _boolean(raw: str) -> bool:
    try:
        return to_bool(raw)
    except ValueError:
        raise ValueError("is not true or false") from None


def _argv(raw: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(raw))
    except ValueError as error:
        raise ValueError(f"is not a command line ({error})") from None


_TEXT_PARSERS: Final[Mapping[Kind, Callable[[str], Any]]] = {
    Kind.TEXT: str,
    Kind.WHOLE: _whole,
    Kind.NUMBER: _number,
    Kind.BOOL: _boolean,
    Kind.PATH: lambda raw: Path(raw).expanduser(),
    Kind.ARGV: _argv,
}


def _type_complaint(spec: Spec, value: Any, toml: bool) -> str | None:
    """None when `value` has the setting's type; else "must be ..., got ...".

    TOML values may still be in their TOML form (a string for a path, a list for an argv).
    """
    if value is None and (spec.optional or spec.kind is Kind.TABLE):
        return None
    if spec.kind is Kind.TABLE and spec.from_file is not None and not toml:
        return None  # already parsed by `from_file` into the setting's own type
    kind = spec.kind
    if kind is Kind.TEXT:
        ok = isinstance(value, str)
    elif kind is Kind.WHOLE:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is Kind.NUMBER:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind is Kind.BOOL:
        ok = isinstance(value, bool)
    elif kind is Kind.PATH:
        ok = isinstance(value, Path) or (toml and isinstance(value, str))
    elif kind is Kind.ARGV:
        sequence = list | tuple if toml else tuple
        ok = isinstance(value, sequence) and all(isinstance(part, str) for part in value)
    else:
        ok = isinstance(value, Mapping)
    if ok:
        return None
    return f"must be {kind.value}, got {type(value).__name__} {value!r}"


def _settle(spec: Spec, value: Any) -> Any:
    if spec.kind is Kind.NUMBER and isinstance(value, int):
        return float(value)
    if spec.kind is Kind.PATH and isinstance(value, str):
        return Path(value).expanduser()
    if spec.kind is Kind.ARGV and isinstance(value, list):
        return tuple(value)
    return value


def _take_url_password(all_specs: tuple[Spec, ...], values: dict[str, Any]) -> None:
    for spec in all_specs:
        url = values.get(spec.name)
        if spec.password_of and isinstance(url, str):
            try:
                values[spec.name], password = split_password(url)
            except BrokerUrlError as error:
                raise SettingsError(spec.name, str(error)) from error
            if password is not None:
                values[spec.password_of] = password  # the URL's password wins


# -- checking -----------------------------------------------------------------------------------


def finish(settings: Any) -> None:
    """Called by `__post_init__`: move a URL's password out of it, then check every field."""
    all_specs = specs(type(settings))
    values = {spec.name: getattr(settings, spec.name) for spec in all_specs}
    _take_url_password(all_specs, values)
    for spec in all_specs:
        value = values[spec.name]
        complaint = _type_complaint(spec, value, toml=False)
        if complaint:
            raise SettingsError(spec.name, complaint)
        value = _settle(spec, value)
        if spec.normalize and value is not None:
            value = spec.normalize(value)
        if value is not getattr(settings, spec.name):
            object.__setattr__(settings, spec.name, value)  # frozen: settled here, once
        complaint = spec.check(value) if spec.check and value is not None else None
        if complaint:
            raise SettingsError(spec.name, complaint)
