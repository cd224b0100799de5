"""A real PostgreSQL server on a free loopback port, made with initdb, stopped by its PID.

The binaries are Debian's `postgresql` package's (`/usr/lib/postgresql/<version>/bin`, the
highest version) or whatever `initdb` is on PATH. initdb and the server refuse to run as
root: a root test run starts them as the `postgres` system user, and since pytest's
temporary directories are private to root (mode 0700 all the way up), that user's cluster
then lives in a private directory of its own under the system temporary directory, which
`cleanup()` removes after copying the server's log into `workdir`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import select
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from tests.support.broker import free_port

START_TIMEOUT_S = 60.0  # a start after a kill replays the WAL first
STOP_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10
SERVICE_USER = "postgres"  # the system user Debian's package creates
DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PostgresError(RuntimeError):
    """The server could not be set up, started or stopped."""


def postgres_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None when they are not installed."""
    versions = sorted(
        (path for path in Path("/usr/lib/postgresql").glob("*/bin") if path.parent.name.isdigit()),
        key=lambda path: int(path.parent.name),
    )
    candidates = [*reversed(versions)]
    on_path = shutil.which("initdb")
    if on_path is not None:
        candidates.append(Path(on_path).resolve().parent)
    for bindir in candidates:
        if all((bindir / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


def children_of(pid: int) -> list[int]:
    """The PIDs whose parent is `pid` (from /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _wait_for_exit(pidfd: int, timeout_s: float) -> bool:
    """Wait until the process behind `pidfd` has exited; False if it is still there."""
    ready, _, _ = select.select([pidfd], [], [], timeout_s)
    return bool(ready)


@dataclass
class PostgresServer:
    """One PostgreSQL cluster (initdb'd on first start) serving 127.0.0.1:`port` only.

    The role `user` (password `password`) owns the database `database`; the superuser
    `superuser` has `admin_password`. Over TCP every login needs its password
    (scram-sha-256); over the Unix socket, which is in the cluster's private directory,
    the server trusts local users.
    """

    workdir: Path
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    user: str = "picluster"
    password: str = "picluster-test"
    database: str = "picluster"
    superuser: str = "postgres"
    admin_password: str = "picluster-admin-test"
    bindir: Path | None = None
    home: Path | None = None  # where the cluster lives: workdir, or the private one as root

    @property
    def url(self) -> str:
        """`postgresql://user@host:port/database` (no password: pass `password` separately)."""
        return f"postgresql://{quote(self.user, safe='')}@{self.host}:{self.port}/{self.database}"

    @property
    def admin_url(self) -> str:
        """The superuser's URL, password included, to its `postgres` database."""
        return self._url(self.superuser, self.admin_password, "postgres")

    def database_url(self, database: str) -> str:
        """The URL of `database` for the picluster role, password included."""
        return self._url(self.user, self.password, database)

    def _url(self, user: str, password: str, database: str) -> str:
        credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return f"postgresql://{credentials}@{self.host}:{self.port}/{quote(database, safe='')}"

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (PGDATA)."""
        return self._home() / "data"

    @property
    def socket_dir(self) -> Path:
        """The directory of the server's Unix socket."""
        return self._home() / "socket"

    @property
    def log_path(self) -> Path:
        """Where the server writes its log (pg_ctl -l)."""
        return self._home() / "postgres.log"

    def _home(self) -> Path:
        if self.home is None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.home = self.workdir
            if os.geteuid() == 0:
                self.home = Path(tempfile.mkdtemp(prefix="picluster-postgres-"))
                account = self._service_account()
                os.chown(self.home, account.pw_uid, account.pw_gid)
                (self.workdir / "cluster-home").write_text(f"{self.home}\n")
        return self.home

    @staticmethod
    def _service_account() -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(SERVICE_USER)
        except KeyError:
            raise PostgresError(
                f"running as root needs the {SERVICE_USER!r} system user to run the server as"
                " (Debian's postgresql package creates it: apt-get install postgresql)"
            ) from None

    def _run(self, tool: str, *args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL program, as the service user when we are root."""
        if self.bindir is None:
            self.bindir = postgres_bindir()
        if self.bindir is None:
            raise PostgresError(
                "the PostgreSQL server is not installed: apt-get install postgresql"
            )
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        uid = gid = None
        extra_groups: list[int] | None = None
        if os.geteuid() == 0:
            account = self._service_account()
            uid, gid, extra_groups = account.pw_uid, account.pw_gid, []
            env["HOME"] = str(self._home())
        return subprocess.run(
            [str(self.bindir / tool), *args],
            cwd=self._home(),
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            user=uid,
            group=gid,
            extra_groups=extra_groups,
        )

    def _initdb(self) -> None:
        """Create the cluster and write its configuration and pg_hba.conf."""
        home = self._home()
        password_file = home / "superuser-password"
        password_file.write_text(self.admin_password + "\n")
        self._give_to_service_user(password_file)
        try:
            initdb = self._run(
                "initdb",
                f"--pgdata={self.data_dir}",
                f"--username={self.superuser}",
                f"--pwfile={password_file}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                # Only the files initdb writes skip fsync; the server itself runs with fsync on.
                "--no-sync",
                timeout_s=START_TIMEOUT_S,
            )
        finally:
            password_file.unlink()
        if initdb.returncode != 0:
            raise PostgresError(f"initdb failed ({initdb.returncode}):\n{initdb.stderr}")
        self.socket_dir.mkdir(mode=0o700)
        self._give_to_service_user(self.socket_dir)
        with (self.data_dir / "postgresql.conf").open("a") as config:
            config.write(
                "\n# picluster tests\n"
                f"listen_addresses = '{self.host}'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "fsync = on\n"
                "synchronous_commit = on\n"
                "full_page_writes = on\n"
                "password_encryption = 'scram-sha-256'\n"
                "logging_collector = off\n"
                "log_connections = on\n"
                "log_line_prefix = '%m [%p] %q%u@%d '\n"
            )
        (self.data_dir / "pg_hba.conf").write_text(
            "# TYPE  DATABASE  USER  ADDRESS       METHOD\n"
            "local   all       all                 trust\n"
            f"host    all       all   {self.host}/32  scram-sha-256\n"
        )

    def _give_to_service_user(self, path: Path) -> None:
        if os.geteuid() == 0:
            account = self._service_account()
            os.chown(path, account.pw_uid, account.pw_gid)

    def _bootstrap(self) -> None:
        """Create the picluster role and its database (first start only)."""
        with psycopg.connect(
            self.admin_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
        ) as admin:
            admin.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(self.user), sql.Literal(self.password)
                )
            )
        self.create_database(self.database)

    def pid(self) -> int | None:
        """The PID in postmaster.pid, or None when there is no such file (the server is down)."""
        try:
            first_line = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except FileNotFoundError:
            return None
        return int(first_line)

    def _open_postmaster(self) -> tuple[int, int] | None:
        """The running postmaster's PID and a pidfd of it; None if none runs (stale PID file)."""
        pid = self.pid()
        if pid is None:
            return None
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        if _wait_for_exit(pidfd, 0):  # exited, not reaped yet
            os.close(pidfd)
            return None
        return pid, pidfd

    def is_running(self) -> bool:
        """Whether the postmaster of this cluster is alive."""
        postmaster = self._open_postmaster()
        if postmaster is None:
            return False
        os.close(postmaster[1])
        return True

    def start(self) -> PostgresServer:
        """Start the server (initdb first if there is no cluster yet) and wait until it serves."""
        if self.is_running():
            raise PostgresError(f"the server in {self.data_dir} is already running")
        first_start = not (self.data_dir / "PG_VERSION").exists()
        if first_start:
            self._initdb()
        started = self._run(
            "pg_ctl",
            "start",
            f"--pgdata={self.data_dir}",
            f"--log={self.log_path}",
            "--wait",
            f"--timeout={int(START_TIMEOUT_S)}",
            timeout_s=START_TIMEOUT_S + 10,
        )
        if started.returncode != 0:
            self.stop()
            raise PostgresError(
                f"pg_ctl start failed ({started.returncode}): {started.stderr.strip()}\n"
                f"server log:\n{self.log_tail()}"
            )
        try:
            if first_start:
                self._bootstrap()
            else:
                psycopg.connect(self.admin_url, connect_timeout=CONNECT_TIMEOUT_S).close()
        except psycopg.Error as error:
            self.stop()
            raise PostgresError(
                f"the server started but does not serve: {error}\nserver log:\n{self.log_tail()}"
            ) from error
        return self

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the server by its PID (pg_ctl stop -m fast), killing it if it will not go."""
        postmaster = self._open_postmaster()
        if postmaster is None:
            return
        pid, pidfd = postmaster
        try:
            stopped = self._run(
                "pg_ctl",
                "stop",
                f"--pgdata={self.data_dir}",
                "--mode=fast",
                "--wait",
                f"--timeout={int(timeout_s)}",
                timeout_s=timeout_s + 10,
            )
            # pg_ctl returns once postmaster.pid is gone, just before the postmaster exits.
            if stopped.returncode != 0 or not _wait_for_exit(pidfd, timeout_s):
                self._kill(pid, pidfd)
        finally:
            os.close(pidfd)

    def kill(self) -> None:
        """Crash the server: SIGKILL the postmaster and its children, wait until all are gone."""
        postmaster = self._open_postmaster()
        if postmaster is None:
            return
        pid, pidfd = postmaster
        try:
            self._kill(pid, pidfd)
        finally:
            os.close(pidfd)

    def _kill(self, pid: int, pidfd: int) -> None:
        # Each backend is a session leader of its own, so a process-group kill would miss them;
        # a stopped postmaster forks no new ones while we collect them.
        signal.pidfd_send_signal(pidfd, signal.SIGSTOP)
        children: list[int] = []
        try:
            for child in children_of(pid):
                with contextlib.suppress(ProcessLookupError):
                    children.append(os.pidfd_open(child))
            for victim in [pidfd, *children]:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(victim, signal.SIGKILL)
            for victim in [pidfd, *children]:
                if not _wait_for_exit(victim, STOP_TIMEOUT_S):
                    raise PostgresError(f"a process of {self.data_dir} survived SIGKILL")
        finally:
            for child_fd in children:
                os.close(child_fd)
        # Reaping the dead postmaster is its parent's (init's) business, and a zombie's PID
        # still answers kill(pid, 0): the next postmaster would take the lock files for a live
        # one's. Every process is gone, so they go, as a reboot would make them stale.
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        (self.socket_dir / f".s.PGSQL.{self.port}.lock").unlink(missing_ok=True)

    def create_database(self, name: str) -> str:
        """Create an empty database owned by the picluster role; return its URL (with password)."""
        if not DATABASE_NAME.fullmatch(name):
            raise ValueError(f"not a plain lower-case database name: {name!r}")
        with psycopg.connect(
            self.admin_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
        ) as admin:
            admin.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(self.user)
                )
            )
        return self.database_url(name)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's log, for failure messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def cleanup(self) -> None:
        """Stop the server for good; remove a private cluster directory (root runs) but its log."""
        self.stop()
        if self.home is not None and self.home != self.workdir and self.home.exists():
            if self.log_path.exists():
                shutil.copyfile(self.log_path, self.workdir / "postgres.log")
            shutil.rmtree(self.home)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()
