"""paho-mqtt's client, imported without the modules a node uses only for TLS or WebSockets.

`paho.mqtt.client` imports `ssl`, `hashlib`, `uuid` and `urllib.request` at its top, for TLS,
the WebSocket handshake, random client ids and proxies from the environment. A node on plain
MQTT with its own client id uses none of them, yet they were a fifth of its resident memory
(6.5 of 30 MiB on x86_64, libssl and libcrypto 5 of it; bench/README.md). While paho is first
imported, each of them that is not loaded yet is replaced by a stand-in that imports the real
module the first time paho touches it (`tls_set` with an `mqtts://` broker, for one), so TLS
works as before. Import this module before anything imports `paho.mqtt.client`.

The one exception: paho's socket reads and writes name `ssl.SSLWantReadError` and
`ssl.SSLWantWriteError` in their `except` clauses, evaluated whenever a read would block. As long
as `ssl` was never imported, no TLS socket exists in this process and nothing can raise those, so
the stand-in answers with exception types that nothing raises instead of loading `ssl`.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
from typing import Any, Final

logger = logging.getLogger(__name__)

DEFERRED: Final = ("ssl", "hashlib", "uuid", "urllib.request")


class _NeverRaisedError(Exception):
    """Matches nothing: stands for an SSL error while no TLS socket can exist."""


# Names paho evaluates on plain sockets; everything else loads the real module.
_INERT: Final[dict[str, dict[str, Any]]] = {
    "ssl": {"SSLWantReadError": _NeverRaisedError, "SSLWantWriteError": _NeverRaisedError},
}


class _OnFirstUse(types.ModuleType):
    """Stands in for a module in paho's namespace; imports the real one once one is read."""

    def __getattr__(self, attribute: str) -> Any:
        name = self.__name__
        real = sys.modules.get(name)
        if real is None or real is self:
            inert = _INERT.get(name, {})
            if attribute in inert:
                return inert[attribute]
            logger.debug("loading %s for paho (%s)", name, attribute)
            real = importlib.import_module(name)
        return getattr(real, attribute)


def _import_paho_client() -> types.ModuleType:
    """`paho.mqtt.client`, importing it with stand-ins if this is its first import."""
    loaded = sys.modules.get("paho.mqtt.client")
    if loaded is not None:
        return loaded
    # What someone already loaded is used as it is.
    placed = {name: _OnFirstUse(name) for name in DEFERRED if name not in sys.modules}
    sys.modules.update(placed)
    try:
        return importlib.import_module("paho.mqtt.client")
    finally:
        for name, stand_in in placed.items():
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]  # a later `import` anywhere gets the real module
        request = placed.get("urllib.request")
        parent = sys.modules.get("urllib")
        if request is not None and parent is not None and not hasattr(parent, "request"):
            parent.request = request  # type: ignore[attr-defined]  # paho reads urllib.request


_import_paho_client()

import paho.mqtt.client as mqtt  # noqa: E402  # the module imported just above, for its types

__all__ = ["mqtt"]
