"""Faults an operator meets (docs/reliability.md): the processes and files behind sensorhub fail, nothing is lost and
nothing false is shown."""

from __future__ import annotations

import signal
import socket

import psutil
import pytest
from sqlalchemy import Engine

from sensorhub.config import Settings
from tests.stack import http_status, web_server, web_url
from tests.support import wait_for

pytestmark = pytest.mark.integration


def test_a_killed_gunicorn_master_is_restarted_on_the_same_socket(settings: Settings, engine: Engine) -> None:
    with web_server(settings, workers=2) as web:
        assert web.process is not None
        watcher = psutil.Process(web.process.pid)
        master = watcher.children()[0]
        workers = wait_for(lambda: master.children() if len(master.children()) == 2 else [], 10,
                           what="two gunicorn workers")
        master.send_signal(signal.SIGKILL)
        wait_for(lambda: "was killed by SIGKILL; restarting it" in web.output(), 10, what="the restart")
        wait_for(lambda: [c for c in watcher.children() if c.pid != master.pid], 10, what="a new master")
        wait_for(lambda: http_status(web_url(settings, "/accueil")) == 200, 20, what="the pages again")
        assert not any(worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE for worker in workers)
        # The port never changed hands: the watcher kept the listening socket for the new master.
        with socket.socket() as probe, pytest.raises(OSError):
            probe.bind(("0.0.0.0", settings.web_port))
        everything = [watcher, *watcher.children(recursive=True)]
    assert web.process.returncode == 0
    assert not [p for p in everything if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
