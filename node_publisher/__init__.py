"""The picluster node agent: collects metrics and publishes them over MQTT."""

from importlib import metadata

try:
    __version__ = metadata.version("picluster")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0.0.0"
