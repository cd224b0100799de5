"""How `cluster-master`'s commands write: results to stdout, problems to stderr, prefixed."""

from __future__ import annotations

import sys
from collections.abc import Callable


def out(text: str) -> None:
    """One line of a command's result, flushed (scripts and `--watch` read it as it comes)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def complainer(prefix: str) -> Callable[[str], None]:
    """A writer of `<prefix>: <text>` lines to stderr, e.g. `cluster-master alerts: ...`."""

    def complain(text: str) -> None:
        sys.stderr.write(f"{prefix}: {text}\n")

    return complain
