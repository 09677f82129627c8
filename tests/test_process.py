"""One way to start a component: READY=1 over NOTIFY_SOCKET, its own process group, failures with its output."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import psutil
import pytest

from sensorhub import process
from sensorhub.process import Child, ComponentError, NotifySocket, notify
from tests.support import wait_for


def python(name: str, code: str, **kwargs: object) -> Child:
    return Child(name, [sys.executable, "-c", code], **kwargs)  # type: ignore[arg-type]


READY_THEN_WAIT = """
import sys, time
from sensorhub.process import notify
print("starting", flush=True)
time.sleep(0.3)
notify("STATUS=serving")
notify("READY=1")
print("serving", flush=True)
time.sleep(60)
"""


def test_a_component_is_ready_when_it_says_so_not_before() -> None:
    child = python("demo", READY_THEN_WAIT)
    child.start()
    try:
        started = time.monotonic()
        assert child.wait_ready(10) is True
        assert time.monotonic() - started >= 0.25, "ready before it said so"
        assert child.ready and child.status == "serving"
        assert os.getpgid(child.pid) == child.pid, "not in its own process group"
    finally:
        assert child.stop(5) == -signal.SIGTERM
    assert child.lines[0] == "starting" and child.stopped


def test_a_component_that_dies_before_it_is_ready_is_reported_with_its_last_lines() -> None:
    child = python("demo", "print('opening the database'); print('cannot open db.sqlite3'); raise SystemExit(2)")
    child.start()
    with pytest.raises(ComponentError) as caught:
        child.wait_ready(10)
    assert str(caught.value) == "demo exited with status 2 before it was ready: cannot open db.sqlite3"
    assert caught.value.output == ["opening the database", "cannot open db.sqlite3"]
    child.stop()


def test_a_component_killed_by_a_signal_is_said_so_without_an_unrelated_last_line() -> None:
    # After `kill -9` of the client, `make run` used to print its last periodic summary as if it were the reason.
    child = python("client", "print('stored 120 readings in the last minute', flush=True); import time; time.sleep(60)")
    child.start()
    try:
        wait_for(lambda: child.lines, 10, what="its first line")
        os.kill(child.pid, signal.SIGKILL)
        wait_for(lambda: child.process is not None and child.process.poll() is not None, 10, what="its end")
        assert child.death() == "client was killed by SIGKILL"
    finally:
        child.stop()


def test_a_component_that_never_gets_ready_times_out_or_is_cancelled() -> None:
    child = python("slow", "import time; print('waiting for the broker', flush=True); time.sleep(60)")
    child.start()
    try:
        with pytest.raises(ComponentError, match=r"^slow was not ready within 0.5 s: waiting for the broker$"):
            child.wait_ready(0.5)
        cancel = threading.Event()
        threading.Timer(0.2, cancel.set).start()
        assert child.wait_ready(10, cancel=cancel) is False
    finally:
        child.stop(5)


def test_notifications_from_outside_the_components_group_are_ignored() -> None:
    child = python("quiet", "import time; time.sleep(60)")
    child.start()
    try:
        assert child._notify is not None
        os.environ[process.NOTIFY_ENV] = child._notify.address
        try:
            assert notify("READY=1")  # from this process: not the component
        finally:
            del os.environ[process.NOTIFY_ENV]
        with pytest.raises(ComponentError, match="not ready"):
            child.wait_ready(0.5)
    finally:
        child.stop(5)


def test_notify_without_a_socket_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(process.NOTIFY_ENV, raising=False)
    assert notify("READY=1") is False
    monkeypatch.setenv(process.NOTIFY_ENV, "@sensorhub-nobody-listens")
    assert notify("READY=1") is False  # logged, never raised: a component runs on without a parent


def test_notify_reaches_an_abstract_socket_with_the_senders_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    listening = NotifySocket()
    try:
        assert listening.address.startswith("@")
        monkeypatch.setenv(process.NOTIFY_ENV, listening.address)
        assert notify("READY=1\nSTATUS=ok")
        assert listening.receive(2) == [(os.getpid(), {"READY": "1", "STATUS": "ok"})]
    finally:
        listening.close()


LEAVES_A_CHILD = """
import subprocess, sys, time
from sensorhub.process import notify
left = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], stdout=subprocess.DEVNULL)
print(left.pid, flush=True)
notify("READY=1")
time.sleep(60)
"""


def test_stop_takes_what_the_component_started_with_it() -> None:
    child = python("parent", LEAVES_A_CHILD)
    child.start()
    child.wait_ready(10)
    wait_for(lambda: child.lines, 5)
    left = psutil.Process(int(child.lines[0]))
    child.stop(5)
    wait_for(lambda: not left.is_running() or left.status() == psutil.STATUS_ZOMBIE, 5, what="its child killed")
