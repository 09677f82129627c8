"""`sensorhub run --demo 3` as a user runs it: everything comes up, data flows, SIGTERM leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import psutil
import pytest

from sensorhub.config import Settings
from tests.support import wait_for

pytestmark = pytest.mark.integration


class Run:
    """`sensorhub run` in a child process, its output collected line by line."""

    def __init__(self, settings: Settings, cwd: Path, *args: str) -> None:
        env = {**os.environ, **settings.environ()}
        self.process = subprocess.Popen([sys.executable, "-m", "sensorhub", "run", *args], cwd=cwd, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_line(self, text: str, timeout: float = 60) -> None:
        wait_for(lambda: text in self.output() or self.process.poll() is not None, timeout,
                 what=f"{text!r} in the output")
        assert text in self.output(), f"`sensorhub run` ended early:\n{self.output()[-3000:]}"


def api(settings: Settings, path: str) -> object:
    with urllib.request.urlopen(f"http://127.0.0.1:{settings.web_port}{path}", timeout=5) as answer:
        return json.loads(answer.read())


def test_run_demo_comes_up_flows_and_stops_cleanly(settings: Settings, tmp_path: Path) -> None:
    run = Run(settings, tmp_path, "--demo", "3")
    try:
        run.wait_line("everything is running", 90)
        assert f"http://localhost:{settings.web_port}/capteurs" in run.output()
        for name in ("broker |", "client |", "web |", "devices |"):
            assert name in run.output(), f"no log line prefixed {name!r}"
        children = psutil.Process(run.process.pid).children(recursive=True)
        assert len(children) >= 5  # broker wrapper + mosquitto, client, web master + workers, devices

        def three_online_with_light() -> bool:
            devices = api(settings, "/api/devices")
            assert isinstance(devices, list)
            return sum(1 for d in devices if d["online"] and d["light"] is not None) == 3

        wait_for(three_online_with_light, 30, what="3 demo devices online with light readings")
        stats = api(settings, "/api/stats")
        assert isinstance(stats, dict) and stats["devices"] == 3 and stats["online"] == 3
        # a component that dies is named and restarted
        client = next(c for c in children if "client" in " ".join(c.cmdline()))
        client.send_signal(signal.SIGKILL)
        run.wait_line("client exited with status -9", 15)
        run.wait_line("restarting it", 5)
        wait_for(lambda: run.output().count("ingest client ready") >= 2, 30, what="the client to come back")
        children = psutil.Process(run.process.pid).children(recursive=True)
    finally:
        run.process.send_signal(signal.SIGTERM)
        status = run.process.wait(60)
    assert status == 0, run.output()[-3000:]
    assert "stopping client" in run.output() and "ingest client stopped" in run.output()
    alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left running: {[c.cmdline() for c in alive]}"
    assert (tmp_path / "db.sqlite3").exists()


def test_run_refuses_a_busy_web_port_in_one_line(settings: Settings, tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("0.0.0.0", settings.web_port))
        squatter.listen()
        run = Run(settings, tmp_path)
        assert run.process.wait(60) == 2
    run._reader.join(5)
    last = run.lines[-1]
    assert last.startswith(f"sensorhub: error: port {settings.web_port} (web server) is already in use")
    assert "SENSORHUB_WEB_PORT" in last


def test_run_refuses_an_unusable_pipe_path(settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "not-a-pipe").write_text("")
    run = Run(settings.replace(fifo=str(tmp_path / "not-a-pipe")), tmp_path)
    assert run.process.wait(60) == 2
    run._reader.join(5)
    assert "is not a named pipe" in run.lines[-1] and "SENSORHUB_FIFO" in run.lines[-1]
