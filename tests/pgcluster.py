"""A throwaway PostgreSQL cluster (Debian's `postgresql` package) in a temporary directory on a free port.

`initdb` and `postgres` refuse to run as root, and CI runs as root: the cluster then belongs to an unprivileged
system user (`sensorhub-test`, created once with `useradd --system` if missing) and its binaries run through
`runuser`. Used by the test fixtures and by `make bench BENCH_ARGS=--postgresql`.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from tests.support import free_port

logger = logging.getLogger(__name__)

USER = "sensorhub-test"
#: The superuser's password: TCP connections must give it (a wrong one is refused, as on a real server).
PASSWORD = "sensorhub-test-password"
BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def binaries() -> Path | None:
    """The newest PostgreSQL server binaries directory (with initdb, pg_ctl and postgres), or None."""
    for directory in BIN_DIRS:
        if all((directory / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return directory
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def _run_as() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
                       check=True, capture_output=True)
    return ["runuser", "-u", USER, "--"]


class Cluster:
    """initdb, start, create the database `sensorhub` (C collation: byte order, as SQLite sorts); stop and delete."""

    def __init__(self, bindir: Path, *, durable: bool = False) -> None:
        self.bindir = bindir
        self.durable = durable
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="sensorhub-pg-"))
        self.data = self.root / "data"
        self.prefix = _run_as()
        self.user = USER if self.prefix else pwd.getpwuid(os.geteuid()).pw_name
        self._databases = 0

    def _pg(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [*self.prefix, str(self.bindir / tool), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-800:]}")
        return done

    def start(self) -> None:
        """initdb and start the server (Unix socket in the cluster's directory, TCP on 127.0.0.1 only)."""
        if self.prefix:
            shutil.chown(self.root, USER)
        self.root.chmod(0o700)
        pwfile = self.root / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if self.prefix:
            shutil.chown(pwfile, USER)
        self._pg("initdb", "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                 "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C",
                 *([] if self.durable else ["--no-sync"]))
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=100"
        if not self.durable:  # throwaway test data: no fsync (the bench measures with PostgreSQL's defaults)
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options, "-w",
                 "-t", "60", "start")

    def create_database(self, name: str | None = None, template: str = "template0") -> str:
        """A new database, empty or a copy of `template` (fast: files copied, no migration run); its URL."""
        self._databases += 1
        name = name or f"sensorhub{self._databases}"
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database made by create_database (and any connection still open to it)."""
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _admin(self, sql: str) -> None:
        """Run one statement as the superuser in the `postgres` database (outside a transaction)."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", password=PASSWORD,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(sql.encode())

    def url(self, database: str, password: str = PASSWORD) -> str:
        """The SQLAlchemy URL of a database of this cluster (as its superuser)."""
        return f"postgresql+psycopg://postgres:{password}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        """Stop the server and delete its files."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "60", "stop")
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            logger.warning("could not stop PostgreSQL: %s", err)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

