"""`sensorhub run --demo 3` as a user runs it: everything comes up, data flows, SIGTERM leaves nothing behind."""

from __future__ import annotations

import json
import signal
import socket
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from sensorhub.config import Settings
from sensorhub.process import Child
from tests.stack import sensorhub
from tests.support import wait_for

pytestmark = pytest.mark.integration


def run(settings: Settings, cwd: Path, *args: str) -> Child:
    """`sensorhub run ARGS`, started in `cwd` (it says READY=1 once everything runs)."""
    child = sensorhub("run", ["run", *args], settings)
    child.cwd = cwd
    child.start()
    return child


def wait_line(child: Child, text: str, timeout: float) -> None:
    """Wait for a line of the supervisor's own report."""
    wait_for(lambda: text in child.output() or not child.running, timeout, what=f"{text!r} in the output")
    assert text in child.output(), f"`sensorhub run` ended early:\n{child.output()[-3000:]}"


def api(settings: Settings, path: str) -> object:
    with urllib.request.urlopen(f"http://127.0.0.1:{settings.web_port}{path}", timeout=5) as answer:
        return json.loads(answer.read())


def api_status(settings: Settings, path: str) -> int | None:
    """The HTTP status of a page, or None if nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{settings.web_port}{path}", timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


def light_readings(settings: Settings) -> int:
    stats = api(settings, "/api/stats")
    assert isinstance(stats, dict)
    return int(stats["readings"]["light"])


def test_run_demo_comes_up_flows_and_stops_cleanly(settings: Settings, tmp_path: Path) -> None:
    child = run(settings.replace(summary_every=1), tmp_path, "--demo", "3")
    try:
        child.wait_ready(90)
        wait_line(child, "everything is running", 5)  # printed before READY=1, read by another thread
        assert f"http://localhost:{settings.web_port}/capteurs" in child.output()
        for name in ("broker |", "client |", "web |", "devices |"):
            wait_line(child, name, 10)  # each component's lines, read by its own thread
        children = psutil.Process(child.pid).children(recursive=True)
        assert len(children) >= 5  # mosquitto, client, web watcher + master + worker(s), devices

        def three_online_with_light() -> bool:
            devices = api(settings, "/api/devices")
            assert isinstance(devices, list)
            return sum(1 for d in devices if d["online"] and d["light"] is not None) == 3

        wait_for(three_online_with_light, 30, what="3 demo devices online with light readings")
        stats = api(settings, "/api/stats")
        assert isinstance(stats, dict) and stats["devices"] == 3 and stats["online"] == 3
        # The console sums the connections up; the broker's log file keeps one line per connection.
        wait_line(child, " 3 online, ", 10)
        assert "New client connected" not in child.output()
        assert "New client connected" in Path(settings.broker_log).read_text()
        # a component that dies is named and restarted
        client = next(c for c in children if "client" in " ".join(c.cmdline()))
        client.send_signal(signal.SIGKILL)
        wait_line(child, "client was killed by SIGKILL", 15)
        wait_line(child, "restarting it", 5)
        stored = light_readings(settings)
        wait_for(lambda: light_readings(settings) > stored, 30, what="readings stored by the restarted client")
        # the web server killed with its workers still holding the port: the restart waits for it, never fails
        web = next(c for c in psutil.Process(child.pid).children() if " web" in " ".join(c.cmdline()))
        stuck = web.children(recursive=True)[-1]  # a gunicorn worker, frozen while it holds the listening socket
        stuck.send_signal(signal.SIGSTOP)
        web.send_signal(signal.SIGKILL)
        wait_line(child, "web was killed by SIGKILL", 15)
        wait_for(lambda: api_status(settings, "/accueil") == 200, 40, what="the web server back")
        assert "could not restart web" not in child.output()
        children = psutil.Process(child.pid).children(recursive=True)
    finally:
        child.stop(60)
    assert child.process is not None and child.process.returncode == 0, child.output()[-3000:]
    assert "stopping client" in child.output() and "ingest client stopped" in child.output()
    alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left running: {[c.cmdline() for c in alive]}"
    assert (tmp_path / "db.sqlite3").exists()


def test_a_component_that_dies_before_it_is_ready_is_named_with_its_last_line(settings: Settings,
                                                                             tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    child = run(settings.replace(broker_log=str(tmp_path / "a-file" / "mosquitto.log")), tmp_path)
    assert child.process is not None and child.process.wait(60) == 2
    child.stop()
    assert child.lines[-1].startswith("sensorhub: error: broker exited with status 2 before it was ready: "
                                      "sensorhub: error: cannot create the broker log file"), child.output()


def test_run_refuses_a_busy_web_port_in_one_line(settings: Settings, tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("0.0.0.0", settings.web_port))
        squatter.listen()
        child = run(settings, tmp_path)
        assert child.process is not None and child.process.wait(60) == 2
    child.stop()
    last = child.lines[-1]
    assert last.startswith(f"sensorhub: error: port {settings.web_port} (web server) is already in use")
    assert "SENSORHUB_WEB_PORT" in last


def test_run_refuses_an_unusable_pipe_path(settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "not-a-pipe").write_text("")
    child = run(settings.replace(fifo=str(tmp_path / "not-a-pipe")), tmp_path)
    assert child.process is not None and child.process.wait(60) == 2
    child.stop()
    assert "is not a named pipe" in child.lines[-1] and "SENSORHUB_FIFO" in child.lines[-1]


def test_run_workers_starts_one_client_component_per_worker(settings: Settings) -> None:
    """`sensorhub run --workers 3`: client1..3, each told its worker number; one worker: `client`, worker 0."""
    from sensorhub.supervisor import Supervisor

    several = Supervisor(settings, workers=3)
    assert [child.name for child in several.components] == ["broker", "client1", "client2", "client3", "web"]
    assert [several.component(f"client{n}").env["SENSORHUB_WORKER"] for n in (1, 2, 3)] == ["1", "2", "3"]
    assert Supervisor(settings).component("client").env["SENSORHUB_WORKER"] == "0"


def test_the_demo_boards_are_not_the_simulators_boards(settings: Settings) -> None:
    # `make simulate` beside `make run`: with the same MACs each would kick the other's boards off the broker.
    from sensorhub.simulator import default_seed
    from sensorhub.simulator.device import DEMO
    from sensorhub.simulator.fleet import unique_macs
    from sensorhub.supervisor import Supervisor

    command = Supervisor(settings, demo=3).component("devices").argv
    demo_seed = int(command[command.index("--seed") + 1])
    assert demo_seed == default_seed(DEMO) != default_seed()
    assert not set(unique_macs(demo_seed, 50)) & set(unique_macs(default_seed(), 50))


def test_the_start_up_lines_name_the_tls_ports(settings: Settings) -> None:
    from sensorhub.supervisor import tls_ports

    assert tls_ports(settings) == ""
    with_tls = settings.replace(tls_cert="/etc/c.pem", tls_key="/etc/k.pem")
    said = tls_ports(with_tls)
    assert f"TLS to port {with_tls.mqtt_tls_port}" in said and f"port {with_tls.mqtt_wss_port}" in said
