"""Starting a component and knowing when it is ready: the systemd notification protocol, both ends.

The parent binds a unix datagram socket and passes its address in NOTIFY_SOCKET; the component sends
`READY=1` there once it serves (`notify`). That is what systemd's Type=notify units use, so the same
component runs under `sensorhub run`, the tests, the benchmark or systemd. Debian's mosquitto, linked with
libsystemd, sends READY=1 by itself. The parent (`Child`) starts each component in its own process group,
keeps its last output lines, and reports a component that dies before it is ready with those lines.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import secrets
import select
import signal
import socket
import struct
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from sensorhub.errors import SensorhubError
from sensorhub.i18n import N_, Msg

logger = logging.getLogger(__name__)

NOTIFY_ENV = "NOTIFY_SOCKET"
#: Set by `Child` for the component: the pid it must not outlive (see `die_with_parent`).
PARENT_ENV = "SENSORHUB_PARENT_PID"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
_UCRED = struct.Struct("3i")  # pid, uid, gid
_PR_SET_PDEATHSIG = 1


class ComponentError(SensorhubError):
    """A component died or did not become ready; `output` holds its last lines."""

    def __init__(self, message: str, output: Sequence[str] = (), **params: object) -> None:
        super().__init__(message, **params)
        self.output = list(output)


def notify(state: str) -> bool:
    """Tell the parent `state` (`READY=1`, `STATUS=...`) if it asked through NOTIFY_SOCKET; False if not."""
    address = os.environ.get(NOTIFY_ENV, "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract address: no file, no permissions to get wrong
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as err:
        logger.warning("could not notify %s of %s: %s", os.environ[NOTIFY_ENV], state, err)
        return False
    return True


def die_with_parent() -> None:
    """If started by a `Child`, get SIGTERM when that parent dies (Linux), so that nothing outlives it.

    Done by the component itself at start: setting it between fork and exec needs preexec_fn, which is
    unsafe once the parent runs threads.
    """
    parent = os.environ.pop(PARENT_ENV, "")
    if not parent.isdigit():
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):  # it died before we asked
        os.kill(os.getpid(), signal.SIGTERM)


def _ancestry(pid: int) -> list[int]:
    """`pid` and its ancestors up to init, read from /proc (empty where there is none)."""
    found: list[int] = []
    while pid > 1 and len(found) < 64:
        found.append(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rpartition(")")[2].split()[1])  # after the command name, which may hold spaces
    return found


class NotifySocket:
    """The parent's end: an abstract unix datagram socket that tells who sent each state."""

    def __init__(self) -> None:
        self.address = f"@sensorhub-{os.getpid()}-{secrets.token_hex(8)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind("\0" + self.address[1:])
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    def receive(self, timeout: float) -> list[tuple[int, dict[str, str]]]:
        """The (sender pid, fields) of each state received within `timeout` seconds (all that are waiting)."""
        received = []
        ready, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        while ready:
            try:
                data, ancillary, _flags, _address = self.sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size),
                                                                      socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            pid = 0
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _UCRED.unpack(payload[:_UCRED.size])[0]
            fields = dict(line.partition("=")[::2] for line in data.decode(errors="replace").splitlines() if line)
            received.append((pid, fields))
        return received

    def close(self) -> None:
        """Stop listening."""
        self.sock.close()


class Child:
    """A component run as a child process in its own process group, with explicit readiness.

    Its merged stdout/stderr is read line by line: each line goes to `on_line` and the last `keep` are kept
    for failure messages. It is ready once it, or one of its processes, sends READY=1 to its NotifySocket.
    """

    def __init__(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                 cwd: str | Path | None = None, on_line: Callable[[str], object] | None = None,
                 stop_signal: int = signal.SIGTERM, keep: int = 400) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.on_line = on_line
        self.stop_signal = stop_signal
        self._lines: deque[str] = deque(maxlen=keep)
        self.process: subprocess.Popen[str] | None = None
        self.ready = False
        #: Whether `stop` was called since the last start (a test tells a crash from a stop by it).
        self.stopped = False
        self.status: str = ""
        self._notify: NotifySocket | None = None
        self._reader: threading.Thread | None = None

    @property
    def lines(self) -> list[str]:
        """The last output lines kept, as a copy: the reader thread appends while a caller looks (iterating the
        deque itself then raises "deque mutated during iteration"; copying it is one step under the GIL)."""
        return list(self._lines)

    @property
    def pid(self) -> int:
        """The component's process id."""
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the process (without waiting for it to be ready)."""
        self._close_notify()
        self._notify = NotifySocket()
        self.ready = self.stopped = False
        self._lines.clear()
        env = {**self.env, NOTIFY_ENV: self._notify.address, PARENT_ENV: str(os.getpid()), "PYTHONUNBUFFERED": "1"}
        # Its own process group: Ctrl-C in a terminal reaches the parent only (which stops the children in
        # order), and whatever the component starts is stopped with it (os.killpg in `stop`).
        self.process = subprocess.Popen(
            self.argv, env=env, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1, process_group=0,
        )
        self._reader = threading.Thread(target=self._read, name=f"{self.name}-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            line = line.rstrip("\n")
            self._lines.append(line)
            if self.on_line is not None:
                self.on_line(line)

    def wait_ready(self, timeout: float = READY_TIMEOUT, cancel: threading.Event | None = None) -> bool:
        """Wait for READY=1; False if `cancel` was set first; ComponentError if it dies or takes too long."""
        assert self.process is not None and self._notify is not None, f"{self.name} was not started"
        deadline = time.monotonic() + timeout
        while not self.ready:
            for pid, fields in self._notify.receive(min(0.1, max(0.0, deadline - time.monotonic()))):
                if not self._ours(pid):
                    logger.warning("ignored a notification from process %d, not part of %s", pid, self.name)
                    continue
                self.status = fields.get("STATUS", self.status)
                self.ready = self.ready or fields.get("READY") == "1"
            if self.ready:
                break
            if self.process.poll() is not None:
                template, params = self.death_template(Msg(N_(" before it was ready")))
                raise ComponentError(template, self.lines, **params)
            if cancel is not None and cancel.is_set():
                return False
            if time.monotonic() > deadline:
                raise ComponentError(N_("{name} was not ready within {timeout:g} s{last}"), self.lines, name=self.name,
                                     timeout=timeout, last=self._last_line())
        return True

    def _ours(self, pid: int) -> bool:
        """Whether `pid` is the component or one of its processes (gunicorn's master is its grandchild)."""
        try:
            if os.getpgid(pid) == self.pid:
                return True
        except OSError:
            return False  # gone already: if it was ours, its death is noticed by poll()
        return self.pid in _ancestry(pid)

    def _last_line(self) -> str:
        last = next((line for line in reversed(self.lines) if line.strip()), "")
        return f": {last}" if last else Msg(N_(" (no output)"))

    def death(self, when: str = "") -> str:
        """One line: how the process ended and its last line of output (English; `death_template` translates)."""
        template, params = self.death_template(f" {when}" if when else "")
        return template.format(**params)

    def death_template(self, when: str = "") -> tuple[str, dict[str, object]]:
        """How the process ended, as a msgid and its values (for sensorhub.i18n.tr, or a SensorhubError)."""
        assert self.process is not None
        if self._reader is not None:
            self._reader.join(2)  # every line it wrote, up to its end
        status = self.process.poll()
        if status is not None and status < 0:
            # Killed by a signal: it had no last words, and its last line (a periodic summary, say) would read as
            # the reason.
            try:
                name = signal.Signals(-status).name
            except ValueError:
                name = f"signal {-status}"
            return N_("{name} was killed by {signal}{when}"), {"name": self.name, "signal": name, "when": when}
        params: dict[str, object] = {"name": self.name, "when": when, "last": self._last_line()}
        if status is None:
            return N_("{name} is still running{when}{last}"), params
        return N_("{name} exited with status {status}{when}{last}"), {**params, "status": status}

    def output(self) -> str:
        """The last output lines kept."""
        return "\n".join(self.lines)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Send the stop signal, SIGKILL after `timeout`; then kill what is left of its group; exit status."""
        process = self.process
        if process is None:
            return None
        self.stopped = True
        if process.poll() is None:
            process.send_signal(self.stop_signal)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %.0f s; killing it", self.name, timeout)
                process.kill()
                process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever it started and left behind
        if self._reader is not None:
            self._reader.join(2)
        if process.stdout is not None and (self._reader is None or not self._reader.is_alive()):
            process.stdout.close()  # (a reader still blocked on it would make close() wait as long)
        self._close_notify()
        return process.returncode

    def _close_notify(self) -> None:
        if self._notify is not None:
            self._notify.close()
            self._notify = None
