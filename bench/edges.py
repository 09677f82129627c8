"""Edge brokers for more boards than one Mosquitto process may hold here (issue 28, bench only).

Every process on this machine may open at most 20,000 files, soft and hard, and a Mosquitto process holds one
a connection (docs/scaling.md). Beyond that the 100k bench spreads its boards over edge Mosquitto processes, each
bridged to the broker sensorhub uses (the central one) with Mosquitto's own bridge: the device channels out,
`state/nameAssign` and `led/command` in, at the specification's QoS but at most 1 (BRIDGE_QOS). A deployment
whose open-file limit can be raised does not need them (`LimitNOFILE`); the figures say when they were used.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from bench.ports import free_port
from sensorhub import reserve
from sensorhub.broker import find_mosquitto
from sensorhub.protocol import MAX_PACKET, QOS, Topic

#: How the bridge carries each channel: the boards' channels out to the central broker, the server's in.
OUT: tuple[Topic, ...] = (Topic.JOIN, Topic.LEAVE, Topic.LED_STATUS, Topic.BUTTON_STATUS,
                          Topic.PHOTORESISTOR_STATUS)
IN: tuple[Topic, ...] = (Topic.NAME_ASSIGN, Topic.LED_COMMAND)
#: The highest QoS of the bridge, both ways (Mosquitto 2.0.11's bridge at QoS 2, measured: 1,000 Wills of boards
#: that died at once crossed it 60 at a time and then not at all within 60 s, at QoS 1 all in 0.5 s; after a
#: restart of the central broker the edges dropped 1 to 16 of 72 name assignments, at QoS 1 none). A duplicate
#: leave is out of band, a duplicate assignment ignored by the board (it keeps its own MAC's line once); the
#: firmware's joins are QoS 0 anyway. Boards then receive `state/nameAssign` at QoS 1.
BRIDGE_QOS = 1


def filter_lines(plugin: Path) -> list[str]:
    """An edge's lines loading sensorhub's plugin with its name-assignment filter: the boards connect to the edge, so
    the filter must be there (a board hears its own assignment only). The edge has no other access control: the
    plugin allows what it does not deny (Mosquitto 2.0.11 refuses whatever every plugin deferred). Its bridge
    forwards many boards' MAC joins to the central broker, where it therefore hears every assignment
    (mosquitto_reserve.c)."""
    # As root, Mosquitto drops to its own user before it loads plugins, and the bench's directory is its owner's
    # only: the edge keeps root then, as `sensorhub broker` does in that case (broker.py).
    return [*(["user root"] if os.geteuid() == 0 else []),
            f"plugin {plugin}", *reserve.FILTER_LINES, "plugin_opt_otherwise allow"]


def edge_config(number: int, port: int, central_port: int, workdir: Path, plugin: Path | None = None) -> str:
    """Mosquitto's configuration of edge broker `number`: boards on `port`, bridged to `central_port`; with
    sensorhub's compiled `plugin`, the name-assignment filter on."""
    lines = [
        *(filter_lines(plugin) if plugin is not None else []),
        f"listener {port} 127.0.0.1",
        "max_connections -1",
        "allow_anonymous true",
        f"max_packet_size {MAX_PACKET}",
        "max_keepalive 12",
        "max_queued_messages 200000",
        "set_tcp_nodelay true",
        "persistence false",
        f"log_dest file {workdir / f'edge{number}.log'}",
        "log_timestamp true",
        "connection_messages false",
        f"connection edge-{number}",
        f"address 127.0.0.1:{central_port}",
        f"remote_clientid sensorhub-edge-{number}",
        "bridge_protocol_version mqttv311",
        "try_private true",
        # The boards' messages wait at the edge while the central broker is away (a persistent local session);
        # at the central broker a clean one: after its restart, a persistent session there lost name
        # assignments (measured: 1 board of 60 waited for its name's timeout, none with a clean session).
        "cleansession true",
        "local_cleansession false",
        "queue_qos0_messages true",  # the readings too, up to max_queued_messages
        # No retained notification: the central broker refuses retained messages (retain_available false).
        "notifications false",
        "keepalive_interval 10",  # the central broker's max_keepalive is 12
        "restart_timeout 1 5",
        *(f"topic {topic} out {min(QOS[topic], BRIDGE_QOS)}" for topic in OUT),
        *(f"topic {topic} in {min(QOS[topic], BRIDGE_QOS)}" for topic in IN),
    ]
    return "\n".join(lines) + "\n"


class EdgeBrokers:
    """`count` edge Mosquitto processes bridged to the central broker on `central_port` (with sensorhub's `plugin`
    filtering the name assignments); a context manager."""

    def __init__(self, count: int, central_port: int, central_log: Path, workdir: Path,
                 plugin: Path | None = None) -> None:
        self.count = count
        self.plugin = plugin
        self.central_port = central_port
        self.central_log = central_log
        self.workdir = workdir
        self.ports: list[int] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> EdgeBrokers:
        mosquitto = find_mosquitto()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o777)  # mosquitto drops root for the mosquitto user: it writes its log here
        try:
            for number in range(self.count):
                port = free_port()
                conf = self.workdir / f"edge{number}.conf"
                conf.write_text(edge_config(number, port, self.central_port, self.workdir, self.plugin))
                self.processes.append(subprocess.Popen([mosquitto, "-c", str(conf)], stderr=subprocess.DEVNULL))
                self.ports.append(port)
            for number, port in enumerate(self.ports):
                self._wait(number, port)
        except BaseException:
            self.close()
            raise
        return self

    def _wait(self, number: int, port: int, timeout: float = 30.0) -> None:
        """Until edge `number` listens and its bridge is connected to the central broker (its log says so)."""
        deadline = time.monotonic() + timeout
        needle = f" as sensorhub-edge-{number} "
        while time.monotonic() < deadline:
            if self.processes[number].poll() is not None:
                raise RuntimeError(f"edge broker {number} exited with status {self.processes[number].returncode}: "
                                   f"see {self.workdir / f'edge{number}.log'}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    pass
                log = self.central_log.read_text(errors="replace") if self.central_log.exists() else ""
                if needle in log:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"edge broker {number}'s bridge did not connect to the central broker within {timeout:g} s")

    def pids(self) -> list[int]:
        """The edge brokers' process ids."""
        return [process.pid for process in self.processes if process.poll() is None]

    def close(self) -> None:
        """Stop every edge broker."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()
