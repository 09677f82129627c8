"""`sensorhub run`: start broker, ingest client and web server in order, each once the previous is ready.

Each component runs as a child process (sensorhub.process.Child) whose log lines are printed with its name
in front, and tells when it is ready with READY=1 (the systemd notification protocol). If a component
dies, the supervisor says which and why (its exit status and last log line) and restarts it, at most
MAX_RESTARTS times in RESTART_WINDOW seconds; after that it stops everything and exits with status 1.
Ctrl-C or SIGTERM stops the components in reverse order (devices, web, client, broker), each cleanly:
the client flushes pending readings before it exits. Once everything runs, `sensorhub run` itself
sends READY=1 to whoever started it with NOTIFY_SOCKET (a test, systemd).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO

from sensorhub.broker import INSTALL_HINT, check_open_files, find_mosquitto
from sensorhub.config import Settings
from sensorhub.errors import BrokerError, ConfigError, DatabaseError, SensorhubError
from sensorhub.i18n import N_, Msg, tr
from sensorhub.pipe import ensure_fifo
from sensorhub.ports import ensure_free, wait_free
from sensorhub.process import READY_TIMEOUT, STOP_TIMEOUT, Child, ComponentError, notify
from sensorhub.simulator.device import DEMO, default_seed
from sensorhub.tls import check_tls_files

logger = logging.getLogger(__name__)

MAX_RESTARTS = 3
#: How long a restart waits for what the dead component listened on to be free again.
PORT_WAIT = 10.0
RESTART_WINDOW = 60.0
COMPONENTS = ("broker", "client", "web", "devices")

#: The broker's one line per connection, disconnection or timeout: the broker's log file keeps them, the
#: console does not (at 2,000 devices they would bury everything; the ingest client's summary line counts them).
CONNECTION_LINE = re.compile(
    r"^(?:\d{4}-\d\d-\d\dT[\d:]+: |\d+: )?"
    r"(?:New connection from |New client connected from |Client \S+ (?:disconnected|closed its connection"
    r"|has exceeded timeout|already connected)|Socket error on client )"
)


def is_connection_line(line: str) -> bool:
    """Whether `line` is one of the broker's per-connection messages."""
    return CONNECTION_LINE.match(line) is not None


class Supervisor:
    """Starts, watches and stops the components."""

    def __init__(self, settings: Settings, demo: int = 0, out: IO[str] | None = None,
                 components: tuple[str, ...] = COMPONENTS, workers: int = 1) -> None:
        self.settings = settings
        self.demo = demo
        self.out = out or sys.stdout
        self._print_lock = threading.Lock()
        self._stop = threading.Event()
        python = [sys.executable, "-m", "sensorhub"]
        env = {**os.environ, **settings.environ()}
        commands = {
            "broker": [*python, "broker"],
            "client": [*python, "client"],
            "web": [*python, "web"],
            "devices": [*python, "simulate", "--devices", str(demo), "--interval", "2", "--seed",
                        str(default_seed(DEMO))],
        }
        self.components: list[Child] = []
        for name in components:
            if name == "devices" and not demo:
                continue
            if name == "client" and workers > 1:
                # Several ingest workers: client1..N, each with its own broker session, sharing the readings.
                for number in range(1, workers + 1):
                    worker = f"client{number}"
                    self.components.append(Child(worker, commands[name], env={**env, "SENSORHUB_WORKER": str(number)},
                                                 on_line=self._printer(worker), stop_signal=signal.SIGTERM))
                continue
            self.components.append(Child(name, commands[name], env=env, on_line=self._printer(name),
                                         stop_signal=signal.SIGINT if name == "devices" else signal.SIGTERM))
        self._restarts: dict[str, deque[float]] = {child.name: deque() for child in self.components}

    def component(self, name: str) -> Child:
        """The component called `name`."""
        return next(child for child in self.components if child.name == name)

    # -- output ----------------------------------------------------------------------------------

    def say(self, text: str, name: str = "run") -> None:
        """Print one line with the component's name in front."""
        with self._print_lock:
            print(f"{name:>7} | {text}", file=self.out, flush=True)

    def _printer(self, name: str) -> Callable[[str], None]:
        if name == "broker":
            return lambda line: None if is_connection_line(line) else self.say(line, name)
        return lambda line: self.say(line, name)

    # -- checks before anything starts -----------------------------------------------------------

    def preflight(self, init_db: bool = True) -> None:
        """Fail early, with one line saying what to do, on what would make a component fail later; `init_db`:
        make the database (False: the caller made it)."""
        try:
            find_mosquitto()
        except BrokerError:
            if not _offer_to_install_mosquitto(self.say):
                raise
        if any(child.name == "broker" for child in self.components):
            check_open_files(self.settings)  # mosquitto inherits this process's limit: said before anything starts
        for port, setting, what in (
            (self.settings.mqtt_port, "SENSORHUB_MQTT_PORT", "MQTT"),
            (self.settings.mqtt_ws_port, "SENSORHUB_MQTT_WS_PORT", "MQTT over WebSockets"),
            (self.settings.web_port, "SENSORHUB_WEB_PORT", "web server"),
        ):
            ensure_free(port, setting, what)
        ports = [self.settings.mqtt_port, self.settings.mqtt_ws_port, self.settings.web_port]
        if self.settings.tls:
            check_tls_files(self.settings)
            ports += [self.settings.mqtt_tls_port, self.settings.mqtt_wss_port]
            for port, setting, what in ((self.settings.mqtt_tls_port, "SENSORHUB_MQTT_TLS_PORT", "MQTT over TLS"),
                                        (self.settings.mqtt_wss_port, "SENSORHUB_MQTT_WSS_PORT",
                                         "MQTT over secure WebSockets")):
                ensure_free(port, setting, what)
        if len(set(ports)) != len(ports):
            raise ConfigError(N_("the MQTT, WebSockets and web ports must differ (got {ports})"), ports=ports)
        if init_db and any(child.name != "broker" for child in self.components):  # a broker alone has none
            self._init_db()
        ensure_fifo(self.settings.fifo_path)

    def _init_db(self) -> None:
        """`sensorhub db init` in a process of its own: the supervisor runs for as long as everything does, and
        stays small without SQLAlchemy and Alembic (about 30 MiB) loaded."""
        env = {**os.environ, **self.settings.environ()}
        done = subprocess.run([sys.executable, "-m", "sensorhub", "db", "init"], env=env, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or [tr("exited with status {status}", status=done.returncode)]
            # The child speaks the same language (its settings are ours): its error line without the prefix.
            prefix = tr("sensorhub: error: {message}", message="")
            raise DatabaseError(lines[-1].removeprefix(prefix).removeprefix("sensorhub: error: "))

    # -- lifecycle ---------------------------------------------------------------------------------

    def _start(self, component: Child) -> None:
        component.start()
        component.wait_ready(READY_TIMEOUT, cancel=self._stop)

    def start(self) -> None:
        """Start every component in order, each once the previous one is ready."""
        for component in self.components:
            self.say(tr("starting {name}", name=component.name))
            self._start(component)
            if self._stop.is_set():
                return
        self.say(tr("everything is running: open {url} (Ctrl-C stops everything)", url=self.url()))
        if self.settings.summary_every:
            self.say(tr("the broker's connection messages go to {log} only; the client sums them up every "
                        "{seconds:g} s", log=self.settings.broker_log, seconds=self.settings.summary_every))
        if self.settings.web_host in ("0.0.0.0", "::"):
            self.say(tr("from other computers on the network: {url}; ESP32s connect to {address} port {port}{tls}",
                        url=self.url(_lan_address()), address=_lan_address(), port=self.settings.mqtt_port,
                        tls=tls_ports(self.settings)))
        elif self.settings.tls:
            self.say(tr("ESP32s connect to port {port}{tls}", port=self.settings.mqtt_port,
                        tls=tls_ports(self.settings)))
        notify("READY=1")

    def url(self, host: str | None = None) -> str:
        """Where to point a browser on this machine (or at `host`)."""
        if host is None:
            host = "localhost" if self.settings.web_host in ("0.0.0.0", "::") else self.settings.web_host
        scheme = "https" if self.settings.tls else "http"
        return f"{scheme}://{host}:{self.settings.web_port}/capteurs"

    def watch(self) -> int:
        """Restart components that die; return an exit status once stopped."""
        while not self._stop.wait(0.2):
            for component in self.components:
                if component.running:
                    continue
                template, params = component.death_template()
                reason = tr(template, **params)
                restarts = self._restarts[component.name]
                now = time.monotonic()
                while restarts and now - restarts[0] > RESTART_WINDOW:
                    restarts.popleft()
                if len(restarts) >= MAX_RESTARTS:
                    self.say(tr("{reason}; it died {count} times in {seconds:.0f} s, stopping everything",
                                reason=reason, count=MAX_RESTARTS + 1, seconds=RESTART_WINDOW))
                    self.stop()
                    return 1
                restarts.append(now)
                self.say(tr("{reason}; restarting it", reason=reason))
                self._clean_up(component)
                try:
                    self._start(component)
                except ComponentError as err:
                    self.say(tr("could not restart {name}: {reason}", name=component.name, reason=err.translated()))
        return 0

    def _ports(self, name: str) -> list[int]:
        if name == "web":
            return [self.settings.web_port]
        if name == "broker":
            ports = [self.settings.mqtt_port, self.settings.mqtt_ws_port]
            if self.settings.tls:
                ports += [self.settings.mqtt_tls_port, self.settings.mqtt_wss_port]
            return ports
        return []

    def _clean_up(self, component: Child) -> None:
        """Before a restart: end what the dead component left running, and wait for its ports."""
        component.stop(0)  # it has exited: this kills what is left of its process group
        for port in self._ports(component.name):
            if not wait_free(port, PORT_WAIT):
                self.say(tr("port {port} is still taken {seconds:.0f} s after {name} died; restarting it anyway",
                            port=port, seconds=PORT_WAIT, name=component.name), component.name)

    def request_stop(self) -> None:
        """Ask `watch` to return (from a signal handler)."""
        self._stop.set()

    def stop(self) -> None:
        """Stop the components in reverse order, each with its own clean-stop signal, and what they left."""
        self._stop.set()
        for component in reversed(self.components):
            if component.process is None:
                continue
            if component.running:
                self.say(tr("stopping {name}", name=component.name))
            component.stop(STOP_TIMEOUT)
        self.say(tr("stopped"))


def _offer_to_install_mosquitto(say: Callable[[str], None]) -> bool:
    """On Debian, as root, at a terminal: offer to install mosquitto. True if it is installed now."""
    if os.geteuid() != 0 or not Path("/etc/debian_version").exists() or not sys.stdin.isatty():
        return False
    answer = input(tr("mosquitto is not installed. Install it now with apt-get? [y/N] ")).strip().lower()
    if answer not in ("y", "yes", "o", "oui"):
        return False
    apt = shutil.which("apt-get") or "apt-get"
    for command in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", "mosquitto"]):
        if subprocess.run(command, check=False).returncode != 0:
            raise BrokerError(N_("installing mosquitto failed: {hint}"), hint=Msg(INSTALL_HINT))
    say(tr("mosquitto installed"))
    return True


def _lan_address() -> str:
    """This machine's address on the local network, as devices and other computers see it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def tls_ports(settings: Settings) -> str:
    """The TLS ports for the start-up lines, when there are: boards and scripts that trust the certificate use
    them ("" without TLS)."""
    if not settings.tls:
        return ""
    return tr(", or over TLS to port {port} (browsers' live updates: secure WebSockets on port {wss_port})",
              port=settings.mqtt_tls_port, wss_port=settings.mqtt_wss_port)


def run_all(settings: Settings, demo: int = 0, workers: int = 1) -> int:
    """Run everything until Ctrl-C or SIGTERM; return the exit status."""
    supervisor = Supervisor(settings, demo=demo, workers=workers)
    supervisor.preflight()

    def _signal(signum: int, _frame: FrameType | None) -> None:
        supervisor.say(tr("received {signal}", signal=signal.Signals(signum).name))
        supervisor.request_stop()

    signal.signal(signal.SIGTERM, _signal)
    signal.signal(signal.SIGINT, _signal)
    try:
        supervisor.start()
        status = supervisor.watch()
    except SensorhubError:
        supervisor.stop()
        raise
    supervisor.stop()
    return status
