"""The real stack for a benchmark: broker, ingest client and web server on free ports, a temporary database."""

from __future__ import annotations

import io
import resource
import sqlite3
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from bench.ports import free_port
from sensorhub.config import Settings
from sensorhub.db.dialect import placeholders
from sensorhub.db.engine import make_engine
from sensorhub.db.schema import init_db
from sensorhub.supervisor import COMPONENTS, Supervisor

#: The bench measures the client's throughput with synthetic boards far beyond a real one (100 devices sending 100
#: readings a second each, 100,000 readings at once, 2,000 new devices joining together): with the default flood
#: limits it would measure them instead. They are set as high as they go, so that every reading and join still
#: pays for its check (ingest/limits.py) but none is refused.
NO_FLOOD_LIMITS: dict[str, Any] = {"readings_per_second": 1_000_000.0, "readings_burst": 1_000_000,
                                   "new_devices_per_minute": 1_000_000}


def scratch_settings(directory: Path, **changes: Any) -> Settings:
    """Settings of a bench run of its own in `directory`: a new SQLite file, state directory and broker log, free
    ports, quiet logs; `changes` on top."""
    return Settings().replace(
        database_url=f"sqlite:///{directory / 'db.sqlite3'}", mqtt_port=free_port(), mqtt_ws_port=free_port(),
        fifo=str(directory / "var" / "ledpipe"), broker_log=str(directory / "mosquitto.log"),
        state_dir=str(directory / "var"), broker_max_connections=-1, log_level="WARNING",
        **{**NO_FLOOD_LIMITS, **changes})


def raise_open_files() -> None:
    """Thousands of devices need thousands of sockets, in mosquitto and in the simulator."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Stack:
    """What `sensorhub run` starts (or some of it), on a database of its own, with its logs in a file and a
    read connection for counting. Whatever happens, leaving the block stops everything and removes it all."""

    def __init__(self, workdir: Path | None = None, components: tuple[str, ...] = COMPONENTS,
                 database_url: str | None = None, workers: int = 1) -> None:
        self.components = components
        self.workers = workers
        self._tmp = tempfile.TemporaryDirectory(prefix="sensorhub-bench-") if workdir is None else None
        self.dir = Path(self._tmp.name) if self._tmp else workdir or Path(".")
        #: None: a SQLite file of its own; else an empty PostgreSQL database (`--postgresql`).
        self.postgresql = database_url
        self.settings = Settings().replace(
            database_url=database_url or f"sqlite:///{self.dir / 'db.sqlite3'}",
            mqtt_port=free_port(), mqtt_ws_port=free_port(), web_port=free_port(), web_host="127.0.0.1",
            fifo=str(self.dir / "led.fifo"), broker_log=str(self.dir / "mosquitto.log"),
            state_dir=str(self.dir / "var"), broker_max_connections=-1, log_level="INFO", **NO_FLOOD_LIMITS,
        )
        self.log_path = self.dir / "stack.log"
        self._log: io.TextIOWrapper | None = None
        self.supervisor: Supervisor | None = None
        #: A read connection (sqlite3, or psycopg in autocommit: each query sees what is committed).
        self.db: Any = None

    def __enter__(self) -> Stack:
        try:
            raise_open_files()
            self._log = self.log_path.open("w")
            self.supervisor = Supervisor(self.settings, out=self._log, components=self.components,
                                         workers=self.workers)
            database = self.components != ("broker",)  # a broker alone has none
            if database:
                # The database made here, not by the supervisor's `sensorhub db init` in a process of its own (which
                # keeps `sensorhub run` small without SQLAlchemy): this process has it loaded, so 0.04 s instead of
                # a process's 0.5 s of CPU, and start-up is no figure.
                engine = make_engine(self.settings.database_url, create_dir=True)
                try:
                    init_db(engine)
                finally:
                    engine.dispose()
            self.supervisor.preflight(init_db=False)
            self.supervisor.start()
            if database and self.postgresql:
                import psycopg

                self.db = psycopg.connect(self.postgresql.replace("postgresql+psycopg://", "postgresql://"),
                                          autocommit=True)
            elif database:
                self.db = sqlite3.connect(f"file:{self.dir / 'db.sqlite3'}?mode=ro", uri=True,
                                          check_same_thread=False)
        except BaseException:
            self.__exit__(None, None, None)  # __exit__ is not called when __enter__ fails
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        try:
            if self.db is not None:
                self.db.close()
            if self.supervisor is not None:
                self.supervisor.stop()
        finally:
            if self._log is not None:
                self._log.close()
            if self._tmp is not None:
                self._tmp.cleanup()

    def client_process(self) -> psutil.Process:
        """The ingest client's process."""
        assert self.supervisor is not None
        return psutil.Process(self.supervisor.component("client").pid)

    def counts(self, table: str = "light_reading") -> dict[str, int]:
        """Readings per device (by session name) in `table`."""
        assert self.db is not None
        rows = self.db.execute(
            f"SELECT d.session_name, (SELECT count(*) FROM {table} r WHERE r.device_id = d.id) FROM device d"
        ).fetchall()
        return {name: int(count) for name, count in rows}

    def device_id(self, session_name: str) -> int:
        """A device's id."""
        assert self.db is not None
        style = "pyformat" if self.postgresql else "qmark"
        query = placeholders("SELECT id FROM device WHERE session_name = ?", style)
        return int(self.db.execute(query, (session_name,)).fetchone()[0])

    def exact_total(self, table: str = "light_reading") -> int:
        """Rows in a reading table, counted (PostgreSQL's ids may skip: a rolled-back COPY used some)."""
        assert self.db is not None
        return int(self.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
