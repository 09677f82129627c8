"""Start Mosquitto with the project's configuration, or a generated copy when settings differ from it."""

from __future__ import annotations

import functools
import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

from sensorhub.config import Settings
from sensorhub.errors import BrokerError
from sensorhub.ports import ensure_free
from sensorhub.process import NOTIFY_ENV, NotifySocket

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BASE_CONFIG = PROJECT_ROOT / "mqtt" / "mosquitto.conf"
_DEFAULTS = Settings()
# Debian puts mosquitto in /usr/sbin, which is not on an ordinary user's PATH.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin"])
INSTALL_HINT = "install it with `sudo apt-get install mosquitto` (Debian, Ubuntu, Raspberry Pi OS)"


def find_mosquitto() -> str:
    """Path of the mosquitto program, or BrokerError saying how to install it."""
    path = shutil.which("mosquitto", path=_SEARCH_PATH)
    if path is None:
        raise BrokerError(f"mosquitto is not installed: {INSTALL_HINT}")
    return path


@functools.cache
def speaks_notify(program: str) -> bool:
    """Whether this mosquitto sends READY=1 to NOTIFY_SOCKET (built with libsystemd, as Debian's is)."""
    try:
        return b"sd_notify" in Path(program).read_bytes()
    except OSError:
        return False


def render_config(settings: Settings, log_file: Path, base: str | None = None) -> str:
    """The base configuration with the ports, log file and connection limit taken from `settings`."""
    text = BASE_CONFIG.read_text() if base is None else base
    ports = {str(_DEFAULTS.mqtt_port): settings.mqtt_port, str(_DEFAULTS.mqtt_ws_port): settings.mqtt_ws_port}
    lines = []
    for line in text.splitlines():
        if match := re.fullmatch(r"listener\s+(\d+)(.*)", line):
            line = f"listener {ports.get(match[1], match[1])}{match[2]}"
        elif re.fullmatch(r"max_connections\s+-?\d+", line):
            line = f"max_connections {settings.broker_max_connections}"
        elif re.fullmatch(r"log_dest\s+file\s+.*", line):
            line = f"log_dest file {log_file}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _prepare_log_file(log_file: Path) -> str | None:
    """Make the log file writable by mosquitto; return a `user` line if it must stay root."""
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.touch(exist_ok=True)
    except OSError as err:
        raise BrokerError(f"cannot create the broker log file {log_file}: {err.strerror}") from err
    if os.geteuid() != 0:
        return None
    # As root, mosquitto drops to the `mosquitto` user *before* opening its log file.
    try:
        user = pwd.getpwnam("mosquitto")
    except KeyError:
        return "user root"  # no such user to drop to: stay root rather than fail
    os.chown(log_file, user.pw_uid, user.pw_gid)
    parent = log_file.resolve().parent
    for directory in (parent, *parent.parents):
        if not os.stat(directory).st_mode & 0o001:
            logger.warning("%s is not searchable by the mosquitto user; the broker keeps root", directory)
            return "user root"
    return None


class Broker:
    """A Mosquitto process configured for sensorhub."""

    def __init__(self, settings: Settings, stderr: IO[bytes] | int | None = None) -> None:
        self.settings = settings
        self.stderr = stderr
        self.process: subprocess.Popen[bytes] | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self.config_path = BASE_CONFIG

    def _config(self) -> tuple[Path, Path]:
        log_file = Path(self.settings.broker_log).resolve()
        user_line = _prepare_log_file(log_file)
        default_log = (PROJECT_ROOT / _DEFAULTS.broker_log).resolve()
        as_specified = (
            self.settings.mqtt_port == _DEFAULTS.mqtt_port
            and self.settings.mqtt_ws_port == _DEFAULTS.mqtt_ws_port
            and self.settings.broker_max_connections == _DEFAULTS.broker_max_connections
            and log_file == default_log
            and user_line is None
        )
        if as_specified:
            return BASE_CONFIG, PROJECT_ROOT
        self._tmpdir = tempfile.TemporaryDirectory(prefix="sensorhub-broker-")
        path = Path(self._tmpdir.name) / "mosquitto.conf"
        text = render_config(self.settings, log_file)
        if user_line:
            text = f"{user_line}\n{text}"
        path.write_text(text)
        os.chmod(self._tmpdir.name, 0o755)
        return path, Path.cwd()

    def start(self, timeout: float = 10.0) -> None:
        """Start mosquitto and return once it listens on both ports."""
        program = find_mosquitto()
        ensure_free(self.settings.mqtt_port, "SENSORHUB_MQTT_PORT", "MQTT")
        ensure_free(self.settings.mqtt_ws_port, "SENSORHUB_MQTT_WS_PORT", "MQTT over WebSockets")
        self.config_path, cwd = self._config()
        log = Path(self.settings.broker_log)
        offset = log.stat().st_size
        logger.info("starting %s -c %s", program, self.config_path)
        # Readiness is mosquitto's own READY=1, sent once its listeners are open; mosquitto builds without
        # libsystemd say it only in their log. Never a probe connection: mosquitto 2.0 miscounts a connection
        # closed before CONNECT, which would let max_connections + 1 clients in.
        notify = NotifySocket() if speaks_notify(program) else None
        env = {**os.environ, NOTIFY_ENV: notify.address} if notify is not None else None
        try:
            self.process = subprocess.Popen(
                [program, "-c", str(self.config_path)], cwd=cwd, stderr=self.stderr, stdin=subprocess.DEVNULL,
                env=env,
            )
            deadline = time.monotonic() + timeout
            while not self._ready(notify, log, offset):
                if self.process.poll() is not None:
                    raise BrokerError(self._failure())
                if time.monotonic() > deadline:
                    self.stop()
                    raise BrokerError(f"mosquitto did not start within {timeout:.0f} s (see {log})")
        finally:
            if notify is not None:
                notify.close()
        logger.info("broker ready: MQTT on port %d, WebSockets on port %d (log: %s)",
                    self.settings.mqtt_port, self.settings.mqtt_ws_port, self.settings.broker_log)

    def _ready(self, notify: NotifySocket | None, log: Path, offset: int) -> bool:
        if notify is None:
            time.sleep(0.02)
            return _running_line(log, offset)
        assert self.process is not None
        return any(pid == self.process.pid and fields.get("READY") == "1" for pid, fields in notify.receive(0.05))

    def _failure(self) -> str:
        log = Path(self.settings.broker_log)
        tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
        text = " / ".join(tail)
        if "Address already in use" in text:
            return f"mosquitto could not listen: a port is already in use ({text})"
        return f"mosquitto exited with status {self.process.returncode if self.process else '?'}: {text}"

    def wait(self) -> int:
        """Wait for mosquitto to exit; return its exit status."""
        assert self.process is not None
        return self.process.wait()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop mosquitto (SIGTERM, then SIGKILL) and remove the generated configuration."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _running_line(log: Path, offset: int) -> bool:
    with log.open("rb") as handle:
        handle.seek(offset)
        return re.search(rb"mosquitto version \S+ running", handle.read()) is not None
