"""An agent whose spool it may read but not write refuses to start, saying which file and why.

Before, SQLite opened such a file read-only without a word: the node showed online with no
metrics and logged "attempt to write a readonly database" every interval for ever.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.support.broker import free_port


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can enter (pytest's tmp_path is private to its owner)."""
    path = Path(tempfile.mkdtemp(prefix="picluster-spool-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_an_agent_whose_spool_it_cannot_write_refuses_to_start(shared_dir: Path) -> None:
    # The real case: a run as root (--no-systemd) left the spool, then the service runs as
    # another user who may read it but not write it. As root, the agent runs as nobody; as
    # any other user, a file without write permission does the same to SQLite.
    state = shared_dir / "state"
    state.mkdir()
    spool = state / "spool-pi-01.sqlite3"
    with sqlite3.connect(spool) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    db.close()
    command = [
        str(REPO_ROOT / ".venv" / "bin" / "python"),
        *("-m", "node_publisher", "run", "--node-id", "pi-01", "--state-dir", str(state)),
        *("--broker", f"mqtt://127.0.0.1:{free_port()}"),
    ]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed"
        os.chown(state, 65534, -1)  # nobody owns the directory, root the spool (mode 0644)
        command = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]
    else:
        spool.chmod(0o444)

    result = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=30, cwd=REPO_ROOT
    )

    assert result.returncode == 2, result.stderr  # RestartPreventExitStatus: systemd shows it
    assert f"the spool {spool} is read-only" in result.stderr
    assert f": {state} (re-running install-node.sh does it too)" in result.stderr  # chown -R
    assert "connecting" not in result.stderr  # refused before it could show up as online
