"""Start Mosquitto with the project's configuration, or a generated copy when settings differ from it."""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from sensorhub import dynsec, livetoken, reserve
from sensorhub.config import Settings
from sensorhub.credentials import (
    BROKER_DIR,
    PASSWD,
    client_password,
    homeassistant_password,
    mosquitto_account,
    web_mqtt_password,
    web_secret_key,
    write_broker_passwd,
)
from sensorhub.errors import BrokerError
from sensorhub.i18n import N_, Msg
from sensorhub.ports import ensure_free, loopback_port
from sensorhub.process import NOTIFY_ENV, NotifySocket
from sensorhub.protocol import HA_MAX_PACKET, MAX_PACKET
from sensorhub.tls import check_tls_files
from sensorhub.wsguard import Listener, WsGuard

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BASE_CONFIG = PROJECT_ROOT / "mqtt" / "mosquitto.conf"
#: The device listeners' rules: compiled for the dynamic security plugin, or the ACL file itself without it.
DEVICE_ACL = PROJECT_ROOT / "mqtt" / "acl.devices"
_DEFAULTS = Settings()
# Debian puts mosquitto in /usr/sbin, which is not on an ordinary user's PATH.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin"])
INSTALL_HINT = N_("install it with `sudo apt-get install mosquitto` (Debian, Ubuntu, Raspberry Pi OS)")


#: Files mosquitto holds besides its clients' sockets: listeners, log, persistence, epoll, plugins, with room to spare.
SPARE_FILES = 50


def open_files_needed(settings: Settings) -> int | None:
    """Open files mosquitto needs for SENSORHUB_BROKER_MAX_CONNECTIONS on each listener (None: no limit set)."""
    limit = settings.broker_max_connections
    if limit == -1:
        return None
    listeners = 4 if settings.tls else 2  # max_connections applies to each listener
    return limit * listeners + SPARE_FILES


def check_open_files(settings: Settings) -> int:
    """Raise this process's open-file limit (mosquitto inherits it) as far as allowed; BrokerError in one line
    saying what to raise when it is below what SENSORHUB_BROKER_MAX_CONNECTIONS needs. Returns the limit."""
    try:
        import resource
    except ImportError:  # not a Unix
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = open_files_needed(settings)
    wanted = hard if needed is None else min(needed, hard) if hard != resource.RLIM_INFINITY else needed
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (OSError, ValueError):
            pass
    if soft == resource.RLIM_INFINITY:
        return -1
    if needed is None:
        if soft < 100_000:
            logger.info("the broker accepts any number of connections (SENSORHUB_BROKER_MAX_CONNECTIONS=-1) but may "
                        "open %d files: at most about %d clients at once (raise `ulimit -n`, or LimitNOFILE= in "
                        "sensorhub-broker.service)", soft, soft - SPARE_FILES)
        return soft
    if soft < needed:
        raise BrokerError(
            N_("SENSORHUB_BROKER_MAX_CONNECTIONS={limit} needs {needed} open files but the broker may open {soft} "
               "(hard limit {hard}): raise it with `ulimit -n {needed}` (as root above the hard limit), "
               "LimitNOFILE={needed} in sensorhub-broker.service, or lower SENSORHUB_BROKER_MAX_CONNECTIONS"),
            limit=settings.broker_max_connections, needed=needed, soft=soft,
            hard="unlimited" if hard == resource.RLIM_INFINITY else hard)
    return soft


def find_mosquitto() -> str:
    """Path of the mosquitto program, or BrokerError saying how to install it."""
    path = shutil.which("mosquitto", path=_SEARCH_PATH)
    if path is None:
        raise BrokerError(N_("mosquitto is not installed: {hint}"), hint=Msg(INSTALL_HINT))
    return path


@functools.cache
def speaks_notify(program: str) -> bool:
    """Whether this mosquitto sends READY=1 to NOTIFY_SOCKET (built with libsystemd, as Debian's is)."""
    try:
        return b"sd_notify" in Path(program).read_bytes()
    except OSError:
        return False


def render_config(settings: Settings, log_file: Path, base: str | None = None, *,
                  passwd: Path | None = None, tls: tuple[Path, Path] | None = None,
                  plugin: Path | None = None, reserved_ids: Path | None = None, ws_upstream: int | None = None) -> str:
    """The base configuration with ports, paths, connection limit and access rules taken from `settings`.

    Paths become absolute (the generated copy runs from any directory). The device listeners load the dynamic
    security `plugin` found on this machine; without one (None), they fall back to the password file and
    mqtt/acl.devices, which cannot keep other clients out of the workers' share group. Every listener loads
    sensorhub's plugin reserving the ingest client's ids (`reserved_ids`, compiled by `reserve.build`; its lines are
    left out when it could not be built). With `ws_upstream`, a WebSockets listener listens on that port of the
    loopback interface instead, without a TLS twin: the guard (sensorhub.wsguard) takes its public ports. With a
    device password,
    the device listeners refuse anonymous clients; with TLS, every listener gets a twin on its TLS port with
    the same rules.
    """
    text = BASE_CONFIG.read_text() if base is None else base
    preamble, blocks = _listener_blocks(text.splitlines())
    ports = {_DEFAULTS.mqtt_port: settings.mqtt_port, _DEFAULTS.mqtt_ws_port: settings.mqtt_ws_port}
    tls_ports = {_DEFAULTS.mqtt_port: settings.mqtt_tls_port, _DEFAULTS.mqtt_ws_port: settings.mqtt_wss_port}
    out = [rendered for line in preamble
           for rendered in _render_line(line, settings, log_file, passwd, plugin, reserved_ids)]
    for port, block in blocks:
        body = [rendered for line in block[1:]
                for rendered in _render_line(line, settings, log_file, passwd, plugin, reserved_ids)]
        if settings.device_password and any(line.startswith("password_file") or
                                            (line.startswith("plugin ") and line.endswith(dynsec.PLUGIN))
                                            for line in body):
            body = ["allow_anonymous false" if line == "allow_anonymous true" else line for line in body]
        websockets = "protocol websockets" in body
        if websockets and ws_upstream is not None:
            out += ["# Reached through sensorhub's guard only (sensorhub.wsguard), which takes the public port.",
                    f"listener {ws_upstream} 127.0.0.1", *body]
            continue
        out += [f"listener {ports.get(port, port)}", *body]
        if tls is not None:
            while out and not out[-1].strip():
                out.pop()
            out += ["", "# The same, over TLS (SENSORHUB_TLS_CERT).", f"listener {tls_ports.get(port, port)}",
                    *[line for line in body if line.strip() and not line.startswith("#")],
                    f"certfile {tls[0]}", f"keyfile {tls[1]}", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def _listener_blocks(lines: list[str]) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Split a configuration into what comes before the first listener and one block per listener."""
    preamble: list[str] = []
    blocks: list[tuple[int, list[str]]] = []
    for line in lines:
        if match := re.fullmatch(r"listener\s+(\d+)\s*", line):
            blocks.append((int(match[1]), [line]))
        elif blocks:
            blocks[-1][1].append(line)
        else:
            preamble.append(line)
    return preamble, blocks


def _render_line(line: str, settings: Settings, log_file: Path, passwd: Path | None,
                 plugin: Path | None, reserved_ids: Path | None) -> list[str]:
    if re.fullmatch(r"max_connections\s+-?\d+", line):
        return [f"max_connections {settings.broker_max_connections}"]
    if re.fullmatch(r"max_packet_size\s+\d+", line) and settings.homeassistant and not settings.homeassistant_url:
        return ["# Raised for Home Assistant (SENSORHUB_HOMEASSISTANT): its discovery configs and SUBSCRIBE packets.",
                f"max_packet_size {HA_MAX_PACKET}"]
    if re.fullmatch(r"log_dest\s+file\s+.*", line):
        return [f"log_dest file {log_file}"]
    if (match := re.fullmatch(r"acl_file\s+(\S+)", line)) and not Path(match[1]).is_absolute():
        return [f"acl_file {PROJECT_ROOT / match[1]}"]
    if line.startswith("password_file") and passwd is not None:
        return [f"password_file {passwd}"]
    if line.startswith("persistence_location") and passwd is not None:
        return [f"persistence_location {passwd.parent}/"]
    if re.fullmatch(rf"plugin\s+\S*{re.escape(reserve.NAME)}", line):
        return [f"plugin {reserved_ids}"] if reserved_ids is not None else []
    if line.startswith(reserve.OPTIONS):
        return [line] if reserved_ids is not None else []
    if re.fullmatch(rf"plugin\s+{re.escape(dynsec.PLUGIN)}", line):
        if plugin is not None:
            return [f"plugin {plugin}"]
        return ["# No dynamic security plugin here: the ACL file, which accepts every SUBSCRIBE.",
                f"password_file {passwd or Path(_DEFAULTS.state_dir) / BROKER_DIR / PASSWD}", f"acl_file {DEVICE_ACL}"]
    if line.startswith("plugin_opt_config_file"):
        if plugin is None:
            return []
        if passwd is not None:
            return [f"plugin_opt_config_file {passwd.parent / dynsec.CONFIG_NAME}"]
    return [line]


def _prepare_log_file(log_file: Path) -> None:
    """Create the log file, readable by its owner only (it shows every client id, the ingest client's too), also
    when it already exists; as root, hand it to the user mosquitto drops to before opening it."""
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.touch(mode=0o600, exist_ok=True)
        os.chmod(log_file, 0o600)
        account = mosquitto_account()
        if account is not None:
            os.chown(log_file, account.pw_uid, account.pw_gid)
    except OSError as err:
        raise BrokerError(N_("cannot create the broker log file {path}: {reason}"), path=log_file,
                          reason=err.strerror) from err


def _user_line(paths: list[Path]) -> str | None:
    """`user root` when mosquitto, started as root, could not reach its files as the mosquitto user."""
    if os.geteuid() != 0:
        return None
    account = mosquitto_account()
    if account is None:
        return "user root"  # no such user to drop to: stay root rather than fail
    for path in paths:
        parent = path.resolve().parent
        for directory in (parent, *parent.parents):
            info = os.stat(directory)
            if not (info.st_mode & 0o001 or (info.st_uid == account.pw_uid and info.st_mode & 0o100)):
                logger.warning("%s is not searchable by the mosquitto user; the broker keeps root", directory)
                return "user root"
    return None


def _copy_tls_files(settings: Settings, directory: Path) -> tuple[Path, Path]:
    """The certificate and key, checked, copied where mosquitto (maybe another user) can read them."""
    check_tls_files(settings)
    account = mosquitto_account()
    copies = []
    for source, name in ((settings.tls_cert, "tls-cert.pem"), (settings.tls_key, "tls-key.pem")):
        target = directory / name
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(Path(source).read_bytes())
        if account is not None:
            os.chown(target, account.pw_uid, account.pw_gid)
        copies.append(target)
    return copies[0], copies[1]


class Broker:
    """A Mosquitto process configured for sensorhub."""

    def __init__(self, settings: Settings, stderr: IO[bytes] | int | None = None, base: str | None = None) -> None:
        self.settings = settings
        self.stderr = stderr
        #: The configuration rendered instead of mqtt/mosquitto.conf's (a benchmark's variant of it), or None.
        self.base = base
        self.process: subprocess.Popen[bytes] | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self.config_path = BASE_CONFIG
        self.guard: WsGuard | None = None
        self._tls: tuple[Path, Path] | None = None
        #: The loopback port of mosquitto's WebSockets listener, behind the guard (chosen at each start).
        self.ws_upstream = 0

    def _config(self) -> tuple[Path, Path]:
        """The configuration to run (a copy of mqtt/mosquitto.conf, in a directory removed on stop) and the
        directory to run it from."""
        log_file = Path(self.settings.broker_log).resolve()
        _prepare_log_file(log_file)
        passwd = write_broker_passwd(self.settings).resolve()
        plugin = dynsec.find_plugin()
        if plugin is not None:
            account = mosquitto_account()
            dynsec.write_config(passwd.parent / dynsec.CONFIG_NAME, DEVICE_ACL,
                                dynsec.users(client_password(self.settings), web_mqtt_password(self.settings),
                                             self.settings.device_password, homeassistant_password(self.settings)),
                                (account.pw_uid, account.pw_gid) if account is not None else None)
        else:
            logger.warning("Mosquitto's dynamic security plugin (%s) is not installed: the device port falls back "
                           "to %s, which cannot keep other clients out of the ingest workers' share group "
                           "(docs/security.md)", dynsec.PLUGIN, DEVICE_ACL.relative_to(PROJECT_ROOT))
        reserved_ids = reserve.build(passwd.parent)
        tls = _copy_tls_files(self.settings, passwd.parent) if self.settings.tls else None
        self._tls = tls
        self.ws_upstream = loopback_port()
        user_line = _user_line([log_file, passwd, BASE_CONFIG])
        # Always a copy: the WebSockets listener moves to the loopback interface, behind the guard.
        self._tmpdir = tempfile.TemporaryDirectory(prefix="sensorhub-broker-")
        path = Path(self._tmpdir.name) / "mosquitto.conf"
        os.chmod(self._tmpdir.name, 0o755)
        text = render_config(self.settings, log_file, self.base, passwd=passwd, tls=tls, plugin=plugin,
                             reserved_ids=reserved_ids, ws_upstream=self.ws_upstream)
        if user_line:
            text = f"{user_line}\n{text}"
        path.write_text(text)
        return path, Path.cwd()

    def _check_ports(self) -> str:
        program = find_mosquitto()
        ensure_free(self.settings.mqtt_port, "SENSORHUB_MQTT_PORT", "MQTT")
        ensure_free(self.settings.mqtt_ws_port, "SENSORHUB_MQTT_WS_PORT", "MQTT over WebSockets")
        if self.settings.tls:
            ensure_free(self.settings.mqtt_tls_port, "SENSORHUB_MQTT_TLS_PORT", "MQTT over TLS")
            ensure_free(self.settings.mqtt_wss_port, "SENSORHUB_MQTT_WSS_PORT", "MQTT over secure WebSockets")
        return program

    def start(self, timeout: float = 10.0) -> None:
        """Start mosquitto and return once it listens on both ports."""
        check_open_files(self.settings)
        program = self._check_ports()
        try:
            for attempt in range(_UPSTREAM_ATTEMPTS):
                try:
                    self._launch(program, timeout)
                    break
                except _UpstreamTaken:
                    # The loopback port was free when chosen; another program's connection took it since.
                    logger.info("the loopback port %d behind the WebSockets guard was taken meanwhile: another one",
                                self.ws_upstream)
                    self.stop()
                    if attempt == _UPSTREAM_ATTEMPTS - 1:
                        raise BrokerError(N_("mosquitto could not listen: loopback port {port} behind the WebSockets "
                                             "guard is in use"), port=self.ws_upstream) from None
            self._start_guard()
        except BaseException:
            # Whatever stopped the start half-way, an error or Ctrl-C / SIGTERM (a KeyboardInterrupt in `sensorhub
            # broker`) while mosquitto already listened: what was started stops, no mosquitto is left behind.
            self.stop()
            raise
        tls = (f", TLS on port {self.settings.mqtt_tls_port}, secure WebSockets on port "
               f"{self.settings.mqtt_wss_port}" if self.settings.tls else "")
        access = "boards log in as `device`" if self.settings.device_password else "boards connect anonymously"
        logger.info("broker ready: MQTT on port %d, WebSockets on port %d%s; %s (log: %s)",
                    self.settings.mqtt_port, self.settings.mqtt_ws_port, tls, access, self.settings.broker_log)

    def _launch(self, program: str, timeout: float) -> None:
        """Write the configuration, start mosquitto and wait for its READY (or its log's running line)."""
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
                    if _taken_port(log, offset) == self.ws_upstream:
                        raise _UpstreamTaken
                    raise BrokerError(self._failure())
                if time.monotonic() > deadline:
                    self.stop()
                    raise BrokerError(N_("mosquitto did not start within {seconds:.0f} s (see {log})"), seconds=timeout,
                                      log=log)
        finally:
            if notify is not None:
                notify.close()

    def _start_guard(self) -> None:
        """The guard on the public WebSockets port(s), in front of mosquitto's loopback listener."""
        listeners = [Listener(self.settings.mqtt_ws_port)]
        if self._tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self._tls[0], self._tls[1])
            listeners.append(Listener(self.settings.mqtt_wss_port, context))
        authorize: Callable[[bytes], bool] | None = None
        if self.settings.web_private:
            # Only pages served to a logged-in visitor carry a token signed with the web server's key.
            key = web_secret_key(self.settings)
            authorize = lambda line: livetoken.valid(key, livetoken.from_request_line(line))  # noqa: E731
        self.guard = WsGuard(listeners, self.ws_upstream, MAX_PACKET, authorize)
        try:
            self.guard.start()
        except OSError as err:
            self.stop()
            raise BrokerError(N_("cannot open the WebSockets port {port}: {reason}"), port=self.settings.mqtt_ws_port,
                              reason=err.strerror) from err

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

    def crash(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send mosquitto `sig` (SIGKILL: a crash, no Will, nothing saved) and wait for it to end, its guard with it,
        as `sensorhub broker` ends when its mosquitto does (tests and benchmarks)."""
        assert self.process is not None, "the broker was not started"
        self.process.send_signal(sig)
        self.process.wait()
        self.stop()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the guard and mosquitto (SIGTERM, then SIGKILL) and remove the generated configuration."""
        if self.guard is not None:
            self.guard.stop()
            self.guard = None
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


#: How many loopback ports `Broker.start` tries behind the guard before it gives up.
_UPSTREAM_ATTEMPTS = 3


class _UpstreamTaken(Exception):
    """Mosquitto could not listen on the loopback port chosen for it behind the WebSockets guard."""


def _taken_port(log: Path, offset: int) -> int | None:
    """The port mosquitto failed to open since `offset` of its log ("Address already in use"), if that was why."""
    with log.open("rb") as handle:
        handle.seek(offset)
        text = handle.read()
    # Mosquitto 2.0 says so in two ways: its own sockets, and libwebsockets' listener.
    found = (re.search(rb"listen socket on port (\d+)\.\s*\n[^\n]*Error: Address already in use", text)
             or re.search(rb"Error: Unable to create websockets listener on port (\d+)", text))
    return int(found.group(1)) if found else None


def _running_line(log: Path, offset: int) -> bool:
    with log.open("rb") as handle:
        handle.seek(offset)
        return re.search(rb"mosquitto version \S+ running", handle.read()) is not None
