"""Where the ingest client leaves what `/healthz`, `/metrics` and `sensorhub status` read (the runtime directory).

The client replaces two files every second: its heartbeat (JSON: connected to the broker? writer alive? how
much queued?) and its metrics in the Prometheus text format. The web server reads both, so it never writes to
the database nor asks the client anything. gunicorn's workers keep their own metrics in prometheus_client's
multiprocess files, in a directory the web server empties when it starts. All of them are rewritten all the
time: SENSORHUB_RUNTIME_DIR puts them in memory (/run) rather than on an SD card. Nothing here imports
prometheus_client: the web server's watcher must choose the multiprocess mode before anything imports it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sensorhub.config import Settings
from sensorhub.credentials import check_private_dir, state_dir
from sensorhub.errors import ConfigError

HEARTBEAT_FILE = "client.heartbeat"
CLIENT_METRICS_FILE = "client.prom"
WEB_METRICS_DIR = "web-metrics"
#: prometheus_client reads it when it is first imported: set it before, in the process that forks the workers.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The client writes both files every BEAT seconds; older than STALE_AFTER, it is not running (or stuck).
BEAT = 1.0
STALE_AFTER = 5.0


def _where(settings: Settings) -> Path:
    return Path(settings.runtime_dir or settings.state_dir)


def runtime_dir(settings: Settings) -> Path:
    """SENSORHUB_RUNTIME_DIR (or the state directory), created private if missing; refused if others may write."""
    if not settings.runtime_dir:
        return state_dir(settings)
    path = Path(settings.runtime_dir)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
    except OSError as err:
        raise ConfigError(f"cannot create the runtime directory {path}: {err.strerror} (set SENSORHUB_RUNTIME_DIR)") \
            from err
    check_private_dir(path, info, "SENSORHUB_RUNTIME_DIR")
    return path


def _worker_suffix(settings: Settings) -> str:
    # Worker 1 of several writes the files the web server reads (it also holds the LED pipe); the others
    # their own, for `cat` and node exporters.
    return f".w{settings.worker}" if settings.worker > 1 else ""


def heartbeat_path(settings: Settings) -> Path:
    """The ingest client's heartbeat file (worker 2 and beyond: one of their own)."""
    return _where(settings) / f"{HEARTBEAT_FILE}{_worker_suffix(settings)}"


def client_metrics_path(settings: Settings) -> Path:
    """The ingest client's metrics, in the Prometheus text format (worker 2 and beyond: their own)."""
    return _where(settings) / f"{CLIENT_METRICS_FILE}{_worker_suffix(settings)}"


def prepare_web_metrics(settings: Settings) -> Path:
    """Empty the web workers' metrics directory and point prometheus_client at it (before it is imported)."""
    directory = (runtime_dir(settings) / WEB_METRICS_DIR).resolve()
    shutil.rmtree(directory, ignore_errors=True)  # the files of a previous run's workers
    directory.mkdir(mode=0o700)
    os.environ[MULTIPROC_ENV] = str(directory)
    return directory
