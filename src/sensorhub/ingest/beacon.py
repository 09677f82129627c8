"""Every second, the ingest client's heartbeat and metrics files, for `/healthz`, `/metrics` and `sensorhub status`."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from sensorhub.config import Settings
from sensorhub.health import write_heartbeat, write_private
from sensorhub.telemetry import BEAT, client_metrics_path, heartbeat_path, runtime_dir

logger = logging.getLogger(__name__)


class Beacon:
    """A thread replacing both files every `interval` seconds; `stop` removes them (the client is gone)."""

    def __init__(self, settings: Settings, facts: Callable[[], dict[str, Any]], registry: CollectorRegistry,
                 interval: float = BEAT) -> None:
        self.settings = settings
        self.facts = facts
        self.registry = registry
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> None:
        """Write both files now, then every `interval` seconds."""
        runtime_dir(self.settings)
        self.beat()
        self._thread = threading.Thread(target=self._run, name="beacon", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        """Write both files once; a failure (a full disk) is logged once, and the client goes on."""
        try:
            write_heartbeat(heartbeat_path(self.settings), self.facts())
            # Owner only, as the heartbeat: the metrics name the database and count what each device sent.
            write_private(client_metrics_path(self.settings), generate_latest(self.registry))
        except OSError as err:
            if not self._failing:
                logger.error("cannot write the heartbeat and metrics files in %s: %s; /healthz will say the client "
                             "is not running", heartbeat_path(self.settings).parent, err.strerror or err)
            self._failing = True
        else:
            if self._failing:
                logger.info("heartbeat and metrics files written again")
            self._failing = False

    def stop(self) -> None:
        """Stop writing and remove both files."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for path in (heartbeat_path(self.settings), client_metrics_path(self.settings)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()
