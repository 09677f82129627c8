"""`sensorhub web`: a small watcher that holds the listening socket and restarts gunicorn's master if it dies.

gunicorn restarts its workers, but nothing restarts gunicorn's master. This process binds the port once,
then forks the master with the socket handed over (`fd://N`): a master that dies is replaced at once, and
its replacement never finds the port held by the dying one's workers (they are killed with its process
group first). It imports neither Flask nor SQLAlchemy, so it costs a few MiB.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from types import FrameType
from typing import NoReturn

from sensorhub.config import Settings
from sensorhub.errors import SensorhubError
from sensorhub.i18n import tr
from sensorhub.ports import ensure_free
from sensorhub.telemetry import prepare_web_metrics
from sensorhub.tls import check_tls_files

logger = logging.getLogger(__name__)

MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
_PR_SET_PDEATHSIG = 1


def listen(settings: Settings) -> socket.socket:
    """The web server's listening socket (one line naming the setting if the port is taken)."""
    ensure_free(settings.web_port, "SENSORHUB_WEB_PORT", "web server", host=settings.web_host)
    host = settings.web_host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, settings.web_port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_web(settings: Settings, workers: int | None = None) -> int:
    """Serve until SIGTERM or SIGINT, restarting gunicorn's master whenever it dies; return an exit status."""
    if settings.tls:
        check_tls_files(settings)
    sock = listen(settings)
    prepare_web_metrics(settings)  # before gunicorn's master imports prometheus_client
    stopping = threading.Event()  # set from the signal handler
    child = 0

    def _stop(signum: int, _frame: FrameType | None) -> None:
        stopping.set()
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)  # gunicorn's graceful stop

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    deaths: deque[float] = deque()
    while not stopping.is_set():
        child = os.fork()
        if child == 0:  # pragma: no cover - the master, measured by the tests through its behaviour
            _run_master(settings, workers, sock)
        status = _wait(child)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child, signal.SIGKILL)  # whatever the master left behind (its workers)
        if stopping.is_set():
            return 0
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 2:
            return 2  # it said why in one line (a setting, the database...): restarting cannot help
        now = time.monotonic()
        while deaths and now - deaths[0] > RESTART_WINDOW:
            deaths.popleft()
        deaths.append(now)
        if len(deaths) > MAX_RESTARTS:
            logger.error("the web server died %d times in %.0f s (%s); giving up", len(deaths), RESTART_WINDOW,
                         _describe(status))
            return 1
        logger.error("the web server (gunicorn master, pid %d) %s; restarting it", child, _describe(status))
    return 0


def _run_master(settings: Settings, workers: int | None, sock: socket.socket) -> NoReturn:
    """In the forked child: become gunicorn's master on the inherited socket; never return."""
    code = 1
    try:
        os.setpgid(0, 0)  # its workers follow it into this group, which the watcher clears after it
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        cooperate()
        from sensorhub.web.serve import serve

        serve(settings, workers=workers, fd=sock.fileno())
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except SensorhubError as err:
        print(tr("sensorhub: error: {message}", message=err.translated()), file=sys.stderr, flush=True)
        code = 2
    except BaseException:
        logger.exception("the web server failed")
    finally:
        logging.shutdown()
        os._exit(code)


def cooperate() -> None:
    """Make blocking calls yield to gevent's loop, before the app (SQLAlchemy, psycopg, paho, ssl) is imported.

    gunicorn's gevent workers would patch after the fork, too late for what the preloaded app created; psycopg
    chooses its cooperative wait function only if `select` is patched when it is imported.
    """
    import ssl
    import warnings

    from gevent import hub, monkey

    with warnings.catch_warnings():
        # ssl was imported by this watcher (the TLS check) but no socket was wrapped yet.
        warnings.simplefilter("ignore", monkey.MonkeyPatchWarning)
        monkey.patch_all()
    # A client that leaves in the middle of its TLS handshake ends its greenlet with an SSLError, which gevent would
    # print with a traceback: a scanner or a slow-client attack would fill the log with them.
    hub.Hub.NOT_ERROR = (*hub.Hub.NOT_ERROR, ssl.SSLError, ConnectionError, TimeoutError)


def _wait(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"
