"""Deep size of Python objects: every object reachable through containers and attributes, once."""

from __future__ import annotations

import sys
import types
from typing import Any

_SKIP = (type, types.ModuleType, types.FunctionType, types.MethodType, types.BuiltinFunctionType)


def deep_size(root: Any) -> int:
    """Bytes held by `root` and everything it reaches (classes, modules and functions excluded)."""
    seen: set[int] = set()
    stack = [root]
    total = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _SKIP):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        elif not isinstance(obj, str | bytes | int | float | bool | type(None)):
            stack.extend(_attributes(obj))
    return total


def _attributes(obj: Any) -> list[Any]:
    values: list[Any] = []
    if hasattr(obj, "__dict__"):
        values.append(vars(obj))
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if hasattr(obj, name):
                values.append(getattr(obj, name))
    return values
