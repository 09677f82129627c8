"""The POSIX named pipe from the web server to the ingest client: one JSON command per line.

Format (one line, UTF-8 JSON, at most MAX_COMMAND bytes including the newline):

    {"cmd": "led", "device": 3, "session": "1743946777.603371", "on": true}
    {"cmd": "rename", "device": 3, "name": "salle B"}

Every command is far smaller than PIPE_BUF (4096 bytes on Linux) and written with a single write(), so
lines from concurrent writers (several gunicorn workers) never interleave. Neither side waits for the
other: the client opens its end without waiting for a writer and keeps a writer of its own open so that
the pipe never reports end-of-file between two commands; the web side opens non-blocking and learns at
once when no client is reading.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sensorhub.credentials import check_private_dir
from sensorhub.errors import ClientNotRunning, ConfigError, PayloadError, PipeError
from sensorhub.protocol import check_name, check_session

logger = logging.getLogger(__name__)

MAX_COMMAND = 512
assert MAX_COMMAND < select.PIPE_BUF


@dataclass(frozen=True, slots=True)
class LedRequest:
    """Switch a device's LED, if it is still online in `session`."""

    device_id: int
    session: str
    on: bool


@dataclass(frozen=True, slots=True)
class RenameRequest:
    """Give a device a new name (it takes effect in the device's next session)."""

    device_id: int
    name: str


Command = LedRequest | RenameRequest


def format_command(command: Command) -> bytes:
    """One line of the pipe format."""
    if isinstance(command, LedRequest):
        body: dict[str, object] = {"cmd": "led", "device": command.device_id, "session": command.session,
                                   "on": command.on}
    else:
        body = {"cmd": "rename", "device": command.device_id, "name": command.name}
    line = json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n"
    if len(line) > MAX_COMMAND:
        raise PipeError(f"command of {len(line)} bytes is longer than {MAX_COMMAND}")
    return line


def parse_command(line: bytes) -> Command:
    """Parse and validate one line (without or with its newline); raise PayloadError if it is bad."""
    try:
        body = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PayloadError("pipe command is not JSON", "pipe-json") from None
    if not isinstance(body, dict):
        raise PayloadError("pipe command is not a JSON object", "pipe-json")
    device = body.get("device")
    if not isinstance(device, int) or isinstance(device, bool) or device < 1:
        raise PayloadError("pipe command needs a positive integer 'device'", "pipe-field")
    kind = body.get("cmd")
    if kind == "led" and set(body) == {"cmd", "device", "session", "on"}:
        session, on = body["session"], body["on"]
        if not isinstance(session, str) or not isinstance(on, bool):
            raise PayloadError("led command needs a string 'session' and a boolean 'on'", "pipe-field")
        return LedRequest(device, check_session(session), on)
    if kind == "rename" and set(body) == {"cmd", "device", "name"}:
        name = body["name"]
        if not isinstance(name, str):
            raise PayloadError("rename command needs a string 'name'", "pipe-field")
        return RenameRequest(device, check_name(name))
    raise PayloadError(f"unknown pipe command {str(kind)[:20]!r} or wrong fields", "pipe-field")


def send_command(path: str | os.PathLike[str], command: Command) -> None:
    """Write one command into the pipe without ever blocking.

    Raises ClientNotRunning when no ingest client reads the pipe, PipeError when it cannot take more or is not
    the ingest client's (a pipe someone else made could be read by them).
    """
    line = format_command(command)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ClientNotRunning(f"the ingest client is not running (no pipe at {path})") from None
    except OSError as err:
        if err.errno == errno.ENXIO:
            raise ClientNotRunning(f"the ingest client is not running (nobody reads {path})") from None
        raise PipeError(f"cannot open the pipe {path}: {err.strerror}") from err
    try:
        problem = _pipe_problem(os.fstat(fd))
        if problem:
            raise PipeError(f"{path} {problem}")
        written = os.write(fd, line)
    except BlockingIOError:
        raise PipeError(f"the ingest client is not keeping up: the pipe {path} is full") from None
    except BrokenPipeError:
        raise ClientNotRunning(f"the ingest client stopped reading {path}") from None
    finally:
        os.close(fd)
    if written != len(line):  # cannot happen below PIPE_BUF; never leave half a line unnoticed
        raise PipeError(f"short write to {path}")


def _pipe_problem(info: os.stat_result) -> str | None:
    """Why a file cannot be our pipe: not a FIFO, another user's, or open to other users' writes."""
    if not stat.S_ISFIFO(info.st_mode):
        return "is not a named pipe"
    if info.st_uid != os.geteuid():
        return f"belongs to another user (uid {info.st_uid}), who could have planted it"
    if info.st_mode & 0o077:
        return f"can be used by other users (mode {stat.S_IMODE(info.st_mode):04o}, expected 0600)"
    return None


def ensure_fifo(path: str | os.PathLike[str]) -> Path:
    """Create the named pipe (mode 0600) if it does not exist, in a directory only its owner can write.

    Refuse a path that is something else, or a pipe that another user made or could write into: whoever
    planted it could read the commands or forge them.
    """
    fifo = Path(path)
    try:
        fifo.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        check_private_dir(fifo.parent, fifo.parent.stat(), "SENSORHUB_FIFO")
    except OSError as err:
        raise PipeError(f"cannot create the directory of the pipe {fifo}: {err.strerror} (set SENSORHUB_FIFO)") \
            from err
    except ConfigError as err:
        raise PipeError(f"the pipe's directory is unsafe: {err}") from None
    try:
        info = fifo.lstat()
    except FileNotFoundError:
        try:
            os.mkfifo(fifo, 0o600)
            os.chmod(fifo, 0o600)  # whatever the umask
        except OSError as err:
            raise PipeError(f"cannot create the pipe {fifo}: {err.strerror} (set SENSORHUB_FIFO)") from err
        return fifo
    except OSError as err:
        raise PipeError(f"cannot use the pipe {fifo}: {err.strerror} (set SENSORHUB_FIFO)") from err
    if not stat.S_ISFIFO(info.st_mode):
        raise PipeError(f"{fifo} exists and is not a named pipe: remove it or set SENSORHUB_FIFO")
    problem = _pipe_problem(info)
    if problem:
        raise PipeError(f"refusing the pipe {fifo}: it {problem}; remove it (`rm {fifo}`) and start again")
    return fifo


class PipeReader:
    """Reads commands from the pipe in a thread and hands each valid one to `on_command`.

    No line can stop it: a line longer than MAX_COMMAND, or one the parser chokes on in any way, is dropped
    and counted. If the thread stops anyway, `alive` turns false and `failure` says why (the client then
    exits, so that it is restarted, rather than answer 202 to commands nobody reads).
    """

    def __init__(self, path: str | os.PathLike[str], on_command: Callable[[Command], None],
                 on_error: Callable[[PayloadError], None] | None = None) -> None:
        self.path = Path(path)
        self.on_command = on_command
        self.on_error = on_error
        self.failure: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read_fd = -1
        self._keep_fd = -1

    @property
    def alive(self) -> bool:
        """Whether the reader thread runs (true before `start` and after `stop` too: nothing failed)."""
        return self._thread is None or self._thread.is_alive() or self._stop.is_set()

    def start(self) -> None:
        """Create and open the pipe (never waiting for a writer), then read it in a thread."""
        ensure_fifo(self.path)
        self._open()
        self._thread = threading.Thread(target=self._guarded_run, name="ledpipe", daemon=True)
        self._thread.start()

    def _open(self) -> None:
        self._read_fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        # Our own writer: the read end then never sees end-of-file between two web requests, and
        # writers never find the pipe without a reader while we run.
        self._keep_fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)

    def _close(self) -> None:
        for fd in (self._read_fd, self._keep_fd):
            if fd >= 0:
                os.close(fd)
        self._read_fd = self._keep_fd = -1

    def stop(self) -> None:
        """Stop reading, close the pipe and remove it (the web then gets 'client not running' at once)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._close()
        try:
            if stat.S_ISFIFO(self.path.lstat().st_mode):
                self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            logger.warning("could not remove the pipe %s: %s", self.path, err.strerror)

    def _guarded_run(self) -> None:
        try:
            self._run()
        except BaseException as err:
            self.failure = f"{type(err).__name__}: {err}"
            logger.critical("the LED pipe reader stopped: %s", self.failure, exc_info=True)

    def _run(self) -> None:
        pending = b""
        skipping = False  # inside a line already known to be too long
        poller = select.poll()
        poller.register(self._read_fd, select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(200):
                continue
            try:
                chunk = os.read(self._read_fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:  # end-of-file: only if our own writer was lost; reopen
                logger.warning("pipe %s reported end-of-file; reopening it", self.path)
                poller.unregister(self._read_fd)
                self._close()
                self._open()
                poller.register(self._read_fd, select.POLLIN)
                pending, skipping = b"", False
                continue
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if skipping:
                    skipping = False  # the end of a line already reported as too long
                elif len(line) + 1 > MAX_COMMAND:
                    self._too_long()
                elif line.strip():
                    self._dispatch(line)
            if len(pending) + 1 > MAX_COMMAND:
                if not skipping:
                    self._too_long()
                pending, skipping = b"", True

    def _too_long(self) -> None:
        self._report(PayloadError(f"pipe line longer than {MAX_COMMAND} bytes", "pipe-size"))

    def _dispatch(self, line: bytes) -> None:
        try:
            command = parse_command(line)
        except PayloadError as err:
            self._report(err)
            return
        except Exception as err:  # whatever the JSON parser chokes on (RecursionError...) drops one line
            self._report(PayloadError(f"pipe command could not be parsed ({type(err).__name__})", "pipe-json"))
            return
        self.on_command(command)

    def _report(self, err: PayloadError) -> None:
        if self.on_error is not None:
            self.on_error(err)
        else:
            logger.warning("dropped a pipe command: %s", err)
