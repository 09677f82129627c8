"""The ingest client's end of the LED pipe (the file and its writers: sensorhub.pipe).

Neither side waits for the other: the client opens its end without waiting for a writer and keeps a writer of
its own open so that the pipe never reports end-of-file between two commands.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sensorhub.commands import MAX_COMMAND, Command, parse_command
from sensorhub.errors import PayloadError, PipeError
from sensorhub.pipe import ensure_fifo

logger = logging.getLogger(__name__)

#: How often a worker that does not hold the pipe tries to take it over.
TAKE_OVER_EVERY = 0.5
#: How long a stopping holder waits for web requests that opened the pipe just before it was removed to write
#: and close (they take microseconds; only a program keeping the pipe open makes it wait this long).
DRAIN_WAIT = 1.0
#: How long `stop` waits for the reader thread to hand the last commands over.
STOP_WAIT = 10.0


class PipeReader:
    """Reads commands from the pipe in a thread and hands each valid one to `on_command`.

    Several workers on one machine each have a reader; the one holding the pipe's lock file (`<pipe>.lock`,
    an flock) reads the pipe, the others try to take the lock every TAKE_OVER_EVERY seconds. When the holder
    stops, or dies (the kernel then releases its lock), another worker reads the pipe within a second.

    A holder that stops hands over every command already written into the pipe (each one the web server
    answered 202) before it lets the lock go: it removes the pipe's name first, so that no new command can
    reach it, and reads until every writer has closed it. The next holder makes a new pipe, so each command is
    read by exactly one worker. (A holder killed with SIGKILL loses what it had not read yet.)

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
        #: Set while this reader holds the pipe (the other workers' readers stand by).
        self.holding = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read_fd = -1
        self._keep_fd = -1
        self._lock_fd = -1
        self._wake_fds = (-1, -1)  # written by `stop`: the reading thread need not wait for its poll to time out
        self._pipe_id: tuple[int, int] | None = None  # the pipe we opened (device, inode)

    @property
    def alive(self) -> bool:
        """Whether the reader thread runs (true before `start` and after `stop` too: nothing failed)."""
        return self._thread is None or self._thread.is_alive() or self._stop.is_set()

    @property
    def lock_path(self) -> Path:
        """The lock file whose holder reads the pipe."""
        return self.path.with_name(self.path.name + ".lock")

    def start(self) -> None:
        """Take the pipe (create and open it, never waiting for a writer) unless another worker holds it, in
        which case stand by; then read or stand by in a thread."""
        ensure_fifo(self.path)
        try:
            self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as err:
            raise PipeError(f"cannot open the pipe's lock file {self.lock_path}: {err.strerror}") from err
        if self._take():
            logger.debug("holding the LED pipe %s", self.path)
        else:
            logger.info("another worker reads the LED pipe %s; standing by to take it over", self.path)
        self._wake_fds = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._guarded_run, name="ledpipe", daemon=True)
        self._thread.start()

    def _take(self) -> bool:
        """Take the lock and open the pipe if no other reader holds it; whether this reader now holds it."""
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        ensure_fifo(self.path)  # the last holder removed it when it stopped
        self._open()
        self.holding.set()
        return True

    def _open(self) -> None:
        self._read_fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        info = os.fstat(self._read_fd)
        self._pipe_id = (info.st_dev, info.st_ino)
        # Our own writer: the read end then never sees end-of-file between two web requests, and
        # writers never find the pipe without a reader while we run.
        self._keep_fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)

    def _close(self) -> None:
        for fd in (self._read_fd, self._keep_fd):
            if fd >= 0:
                os.close(fd)
        self._read_fd = self._keep_fd = -1

    def _remove_pipe(self) -> None:
        """Remove the pipe's name if it still is the pipe we opened: no writer can open it any more (they hear
        "client not running" until another worker makes a new one)."""
        try:
            info = self.path.lstat()
            if (info.st_dev, info.st_ino) == self._pipe_id:
                self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            logger.warning("could not remove the pipe %s: %s", self.path, err.strerror)

    def stop(self) -> None:
        """Stop reading; if holding the pipe, remove it (the web then gets 'client not running' at once, unless
        another worker takes it over), hand over every command already in it, close it, then let the lock go."""
        self._stop.set()
        if self._wake_fds[1] >= 0:
            with contextlib.suppress(BlockingIOError):  # full: already woken
                os.write(self._wake_fds[1], b"\0")
        thread = self._thread
        if thread is not None:
            thread.join(STOP_WAIT)
            if thread.is_alive():
                # Closing its descriptors under it could make it read another file's: leave them to the exit.
                logger.error("the LED pipe reader did not stop within %.0f s; leaving it", STOP_WAIT)
        if thread is None or not thread.is_alive():
            if self.holding.is_set():
                # The thread did not get to hand the rest over (it failed, or never started): close and remove.
                self._remove_pipe()
                self._close()
                self.holding.clear()
            for fd in self._wake_fds:
                if fd >= 0:
                    os.close(fd)
            self._wake_fds = (-1, -1)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the lock: a standing-by worker takes the pipe over
            self._lock_fd = -1

    def _guarded_run(self) -> None:
        try:
            while not self.holding.is_set():
                if self._stop.wait(TAKE_OVER_EVERY):
                    return
                if self._take():
                    logger.info("took over the LED pipe %s", self.path)
            self._run()
        except BaseException as err:
            self.failure = f"{type(err).__name__}: {err}"
            logger.critical("the LED pipe reader stopped: %s", self.failure, exc_info=True)

    def _run(self) -> None:
        pending = b""
        skipping = False  # inside a line already known to be too long
        poller = select.poll()
        poller.register(self._read_fd, select.POLLIN)
        poller.register(self._wake_fds[0], select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(1000):
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
            pending, skipping = self._feed(pending + chunk, skipping)
        self._hand_over_the_rest(pending, skipping)

    def _hand_over_the_rest(self, pending: bytes, skipping: bool) -> None:
        """Stopping: remove the pipe's name (no new writer can open it), close our own writer, then read until
        end-of-file, which comes once every writer has closed it: each command the web server accepted is then
        handed over, and nothing can arrive after. Then close it: the next holder makes a new pipe."""
        self._remove_pipe()
        if self._keep_fd >= 0:
            os.close(self._keep_fd)
            self._keep_fd = -1
        poller = select.poll()
        poller.register(self._read_fd, select.POLLIN)
        deadline = time.monotonic() + DRAIN_WAIT
        while True:
            try:
                chunk = os.read(self._read_fd, 65536)
            except BlockingIOError:  # empty, and a writer still has it open (between its open and its write)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    logger.warning("a program still holds the pipe %s open after %.0f s; what it writes now is "
                                   "lost", self.path, DRAIN_WAIT)
                    break
                poller.poll(remaining * 1000)
                continue
            if not chunk:
                break  # every writer closed it
            pending, skipping = self._feed(pending + chunk, skipping)
        self._close()
        self.holding.clear()

    def _feed(self, data: bytes, skipping: bool) -> tuple[bytes, bool]:
        """Hand over every complete line of `data`; what is left of it (a line's start), and whether that is
        the rest of a line too long to keep."""
        *lines, pending = data.split(b"\n")
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
        return pending, skipping

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
