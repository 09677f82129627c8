"""The LED command pipe: its text format, a writer that never blocks, a reader that never waits."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensorhub.commands import MAX_COMMAND, Command, LedRequest, RenameRequest, format_command, parse_command
from sensorhub.errors import ClientNotRunning, PayloadError, PipeError
from sensorhub.ingest.ledpipe import PipeReader
from sensorhub.pipe import ensure_fifo, send_command
from sensorhub.protocol import MAX_NAME, name_problem
from tests.support import finishes, wait_for


def test_format_is_one_documented_json_line() -> None:
    assert format_command(LedRequest(3, "1743946777.603371", True)) == (
        b'{"cmd":"led","device":3,"session":"1743946777.603371","on":true}\n')
    assert format_command(RenameRequest(3, "salle B")) == b'{"cmd":"rename","device":3,"name":"salle B"}\n'


@given(st.integers(1, 2**53), st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                                                   exclude_characters=";"), min_size=1, max_size=17),
       st.booleans(), st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=MAX_NAME))
def test_round_trip_and_size(device: int, session: str, on: bool, name: str) -> None:
    led = LedRequest(device, session, on)
    assert parse_command(format_command(led)) == led
    assert len(format_command(led)) < MAX_COMMAND
    if name_problem(name) is None:
        rename = RenameRequest(device, name)
        assert parse_command(format_command(rename)) == rename


@pytest.mark.parametrize("line", [
    b"not json", b"[1]", b'{"cmd":"led"}', b'{"cmd":"led","device":0,"session":"1","on":true}',
    b'{"cmd":"led","device":true,"session":"1","on":true}', b'{"cmd":"led","device":1,"session":"1","on":1}',
    b'{"cmd":"led","device":1,"session":"a;b","on":true}', b'{"cmd":"rename","device":1,"name":"a;b"}',
    b'{"cmd":"rename","device":1,"name":""}', b'{"cmd":"explode","device":1}',
    b'{"cmd":"led","device":1,"session":"1","on":true,"extra":1}', b"\xff\xfe",
])
def test_bad_lines_are_refused(line: bytes) -> None:
    with pytest.raises(PayloadError):
        parse_command(line)


# Any bytes, and valid commands with at most one field added, removed or given any JSON value.
json_values = st.one_of(st.none(), st.booleans(), st.integers(-2, 2**54), st.text(max_size=40), st.floats())
valid_bodies = st.one_of(
    st.builds(lambda d, s, on: {"cmd": "led", "device": d, "session": s, "on": on}, st.integers(1, 2**53),
              st.sampled_from(["1743946777.603371", "1", "a;b", ""]), st.booleans()),
    st.builds(lambda d, n: {"cmd": "rename", "device": d, "name": n}, st.integers(1, 2**53),
              st.sampled_from(["salle B", "x" * 30, " x"])),
)


@st.composite
def command_like(draw: st.DrawFn) -> bytes:
    body: dict[str, object] = draw(valid_bodies)
    key = draw(st.sampled_from([*body, "extra", None]))
    if key is not None and draw(st.booleans()):
        body.pop(key, None)
    elif key is not None:
        body[key] = draw(json_values)
    return json.dumps(body).encode()


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)  # a loaded machine is no failure
@given(st.one_of(st.binary(max_size=200), command_like()))
def test_any_line_is_a_command_exactly_or_refused_with_a_known_reason(line: bytes) -> None:
    try:
        command = parse_command(line)
    except PayloadError as err:
        assert err.reason in {"pipe-json", "pipe-field", "bad-name", "bad-session"}, err.reason
        return
    # Accepted means the line said exactly this command, nothing more or less.
    assert json.loads(format_command(command)) == json.loads(line)


def test_sender_reports_a_missing_pipe_at_once(tmp_path: Path) -> None:
    with pytest.raises(ClientNotRunning, match="not running"):
        send_command(tmp_path / "nothing", LedRequest(1, "1", True))


def test_sender_reports_a_pipe_without_reader_at_once(tmp_path: Path) -> None:
    fifo = ensure_fifo(tmp_path / "fifo")
    with pytest.raises(ClientNotRunning, match="nobody reads"):  # at once: it never waits for a reader
        finishes(lambda: send_command(fifo, LedRequest(1, "1", True)), what="send_command")


def test_sender_refuses_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(PipeError, match="not a named pipe"):
        send_command(path, LedRequest(1, "1", True))
    with pytest.raises(PipeError, match="not a named pipe"):
        ensure_fifo(path)


def test_reader_starts_without_a_writer_and_gets_every_command(tmp_path: Path) -> None:
    received: list[Command] = []
    errors: list[PayloadError] = []
    reader = PipeReader(tmp_path / "fifo", received.append, errors.append)
    finishes(reader.start, what="the reader's start")  # it must not wait for a writer
    try:
        send_command(tmp_path / "fifo", LedRequest(7, "1743946777.603371", False))
        wait_for(lambda: received, 5)
        assert received == [LedRequest(7, "1743946777.603371", False)]
        # garbage between good commands is reported and skipped
        fd = os.open(tmp_path / "fifo", os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, b"garbage\n" + b"x" * 2000 + b"\n")
        os.close(fd)
        send_command(tmp_path / "fifo", RenameRequest(7, "salle B"))
        wait_for(lambda: len(received) == 2, 5)
        assert received[1] == RenameRequest(7, "salle B")
        assert len(errors) == 2
    finally:
        reader.stop()
    with pytest.raises(ClientNotRunning):
        send_command(tmp_path / "fifo", LedRequest(1, "1", True))


def test_concurrent_writers_never_interleave(tmp_path: Path) -> None:
    received: list[Command] = []
    errors: list[PayloadError] = []
    reader = PipeReader(tmp_path / "fifo", received.append, errors.append)
    reader.start()
    per_thread, threads = 300, 8

    def write(worker: int) -> None:
        for number in range(per_thread):
            while True:
                try:
                    name = f"worker{worker}-{number:04d}" + "x" * 10
                    send_command(tmp_path / "fifo", RenameRequest(worker + 1, name))
                    break
                except PipeError as err:  # a full pipe is reported, never blocks: try again
                    assert "full" in str(err)
                    time.sleep(0.001)

    try:
        workers = [threading.Thread(target=write, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        wait_for(lambda: len(received) == per_thread * threads, 10)
    finally:
        reader.stop()
    assert errors == []
    for worker in range(threads):
        names = [c.name for c in received if isinstance(c, RenameRequest) and c.device_id == worker + 1]
        assert names == [f"worker{worker}-{n:04d}" + "x" * 10 for n in range(per_thread)]


def test_reader_reopens_after_end_of_file(tmp_path: Path) -> None:
    received: list[Command] = []
    reader = PipeReader(tmp_path / "fifo", received.append)
    reader.start()
    try:
        # Lose our own writer: end-of-file comes at once. Forget the descriptor before closing it: the
        # reader thread may reopen in between and must not close it a second time.
        keep, reader._keep_fd = reader._keep_fd, -1
        os.close(keep)
        send_command(tmp_path / "fifo", LedRequest(1, "1", True))
        wait_for(lambda: received, 5)
        wait_for(lambda: reader._keep_fd >= 0, 5, what="the pipe reopened")
        send_command(tmp_path / "fifo", LedRequest(2, "1", True))
        wait_for(lambda: len(received) == 2, 5)
    finally:
        reader.stop()


def test_unusable_pipe_path_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(PipeError, match="cannot create the directory of the pipe"):
        ensure_fifo(tmp_path / "a-file" / "fifo")


# -- the pipe's safety (docs/security.md, "a local user of the server") ------------------------------------------


def test_the_pipe_is_made_private_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        fifo = ensure_fifo(tmp_path / "run" / "fifo")
    finally:
        os.umask(previous)
    assert fifo.stat().st_mode & 0o777 == 0o600


def test_a_pipe_other_users_can_write_is_refused_by_both_sides(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    os.chmod(fifo, 0o666)
    with pytest.raises(PipeError, match="can be used by other users"):
        ensure_fifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(PipeError, match="can be used by other users"):
            send_command(fifo, LedRequest(1, "1", True))
        assert os.read(reader, 4096) == b"", "the command went into a pipe others could read"
    finally:
        os.close(reader)


@pytest.mark.skipif(os.geteuid() != 0, reason="planting a pipe owned by another user needs root")
def test_a_pipe_planted_by_another_user_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    os.chown(fifo, 65534, 65534)  # nobody
    with pytest.raises(PipeError, match="belongs to another user"):
        ensure_fifo(fifo)


def test_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp
    with pytest.raises(PipeError, match="writable by other users"):
        ensure_fifo(shared / "fifo")


def test_the_reader_removes_the_pipe_when_it_stops(tmp_path: Path) -> None:
    reader = PipeReader(tmp_path / "fifo", lambda _c: None)
    reader.start()
    assert (tmp_path / "fifo").exists()
    reader.stop()
    assert not (tmp_path / "fifo").exists()
    with pytest.raises(ClientNotRunning):
        send_command(tmp_path / "fifo", LedRequest(1, "1", True))


def _raw_write(fifo: Path, data: bytes) -> None:
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                time.sleep(0.01)
    finally:
        os.close(fd)


def test_no_line_can_stop_the_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[Command] = []
    errors: list[PayloadError] = []
    reader = PipeReader(tmp_path / "fifo", received.append, errors.append)
    reader.start()
    try:
        # A complete line over the limit, one far over it (split across reads), and deep nesting.
        _raw_write(tmp_path / "fifo", b'{"cmd":"rename","device":1,"name":"' + b"x" * MAX_COMMAND + b'"}\n')
        _raw_write(tmp_path / "fifo", b"[" * 200_000 + b"\n")
        _raw_write(tmp_path / "fifo", b"[" * 250 + b"]" * 250 + b"\n")
        send_command(tmp_path / "fifo", LedRequest(1, "1", True))
        wait_for(lambda: received, 5, what="the valid command after the bad ones")
        assert [e.reason for e in errors] == ["pipe-size", "pipe-size", "pipe-json"]

        def choke(_line: bytes) -> Command:
            raise RecursionError("maximum recursion depth exceeded")

        monkeypatch.setattr("sensorhub.ingest.ledpipe.parse_command", choke)
        send_command(tmp_path / "fifo", LedRequest(2, "1", True))
        wait_for(lambda: len(errors) == 4, 5, what="the choking line counted")
        assert "RecursionError" in str(errors[-1]) and reader.alive
        monkeypatch.undo()
        send_command(tmp_path / "fifo", LedRequest(3, "1", True))
        wait_for(lambda: len(received) == 2, 5, what="the reader still reading")
    finally:
        reader.stop()


def test_a_dead_reader_is_noticed(tmp_path: Path) -> None:
    def crash(_command: Command) -> None:
        raise MemoryError("injected")

    reader = PipeReader(tmp_path / "fifo", crash)
    reader.start()
    try:
        assert reader.alive
        send_command(tmp_path / "fifo", LedRequest(1, "1", True))
        wait_for(lambda: not reader.alive, 5, what="the reader to be reported dead")
        assert reader.failure is not None and "MemoryError" in reader.failure
    finally:
        reader.stop()


def test_one_reader_holds_the_pipe_and_another_takes_over_when_it_stops(tmp_path: Path) -> None:
    """Several workers on one machine: the one holding the lock reads; when it stops, the next one reads."""
    first: list[Command] = []
    second: list[Command] = []
    readers = [PipeReader(tmp_path / "fifo", first.append), PipeReader(tmp_path / "fifo", second.append)]
    for reader in readers:
        reader.start()
    try:
        assert readers[0].holding.is_set() and not readers[1].holding.is_set()
        send_command(tmp_path / "fifo", LedRequest(1, "1", True))
        wait_for(lambda: first, 5, what="the holder reading the command")
        readers[0].stop()
        wait_for(lambda: readers[1].holding.is_set(), 5, what="the other reader taking the pipe over")
        send_command(tmp_path / "fifo", LedRequest(2, "1", True))
        wait_for(lambda: second, 5, what="the new holder reading the command")
        assert first == [LedRequest(1, "1", True)] and second == [LedRequest(2, "1", True)]
    finally:
        for reader in readers:
            reader.stop()
    assert not (tmp_path / "fifo").exists()


def test_a_reader_killed_with_sigkill_is_taken_over(tmp_path: Path) -> None:
    """The holder dies without cleaning up (the pipe stays): the kernel drops its lock, another reader takes the
    same pipe over, and commands flow again."""
    script = ("import sys, time; from sensorhub.ingest.ledpipe import PipeReader; "
              "PipeReader(sys.argv[1], print).start(); print('holding', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "fifo")], stdout=subprocess.PIPE)
    received: list[Command] = []
    reader = PipeReader(tmp_path / "fifo", received.append)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"holding\n"
        reader.start()
        assert not reader.holding.is_set()
        holder.kill()
        holder.wait()
        assert (tmp_path / "fifo").exists()  # left behind by the dead holder
        wait_for(lambda: reader.holding.is_set(), 5, what="the pipe taken over")
        send_command(tmp_path / "fifo", RenameRequest(3, "salle B"))
        wait_for(lambda: received, 5, what="the command read by the new holder")
        assert received == [RenameRequest(3, "salle B")]
    finally:
        holder.kill()
        holder.wait()
        reader.stop()


# -- several workers starting and stopping together (issue 22) --------------------------------------------------

#: Rounds of two workers starting at the same moment; on the code before the fix, 10 to 20 % of them failed.
START_ROUNDS = 100


def _start_in_rounds(base: str, rounds: int, barrier: Barrier, arrived: Any, results: Any) -> None:
    """One worker (a process of its own): each round, meet the other at the barrier, then start the way the
    ingest client does (PipeReader.start: ensure_fifo, the lock, the pipe) on a fresh directory."""
    outcomes: list[str] = []
    for number in range(rounds):
        reader = PipeReader(Path(base) / f"round{number}" / "ledpipe", lambda _command: None)
        barrier.wait(20)
        # The barrier wakes one process after the other; spinning on a shared counter starts both within
        # microseconds (a few at most: the other process is awake already).
        with arrived.get_lock():
            arrived.value += 1
        count = arrived.get_obj()  # read without the lock: both processes keep running
        deadline = time.monotonic() + 5
        while count.value < 2 * (number + 1) and time.monotonic() < deadline:
            pass
        try:
            reader.start()
            outcomes.append("holding" if reader.holding.is_set() else "standing by")
        except Exception as err:
            outcomes.append(f"{type(err).__name__}: {err}")
        barrier.wait(20)  # both started before either stops
        reader.stop()
    results.put(outcomes)


def test_two_workers_starting_together_never_fail(tmp_path: Path) -> None:
    """Two real processes start the pipe at the same moment, 100 times: one holds it, the other stands by."""
    context = multiprocessing.get_context("spawn")  # no fork of pytest's threads
    for number in range(START_ROUNDS):  # a fresh, empty directory each round, as var/ at a first start
        (tmp_path / f"round{number}").mkdir(mode=0o700)
    barrier, arrived, results = context.Barrier(2), context.Value("i", 0), context.Queue()
    workers = [context.Process(target=_start_in_rounds, args=(str(tmp_path), START_ROUNDS, barrier, arrived,
                                                              results))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        outcomes: list[list[str]] = [results.get(timeout=60) for _ in workers]
    finally:
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
    failed = [(number, pair) for number, pair in enumerate(zip(*outcomes, strict=True))
              if sorted(pair) != ["holding", "standing by"]]
    assert not failed, f"{len(failed)} of {START_ROUNDS} rounds failed, the first: {failed[:3]}"
    assert not [path for path in tmp_path.glob("round*/ledpipe")], "a stopped worker left its pipe behind"


def test_stop_hands_over_every_command_already_in_the_pipe(tmp_path: Path) -> None:
    """Commands answered 202 while the reader is busy are still in the pipe when it is told to stop: it hands
    every one of them over before it closes."""
    count = 500
    received: list[Command] = []
    busy, release = threading.Event(), threading.Event()

    def handed(command: Command) -> None:
        busy.set()
        release.wait(5)
        received.append(command)

    reader = PipeReader(tmp_path / "fifo", handed)
    reader.start()
    send_command(tmp_path / "fifo", LedRequest(1, "1", True))
    assert busy.wait(5), "the reader never handed the first command over"
    for device in range(2, count + 1):  # each accepted: the web server would answer 202
        send_command(tmp_path / "fifo", LedRequest(device, "1", True))
    stopper = threading.Thread(target=reader.stop)
    stopper.start()
    wait_for(reader._stop.is_set, 5, what="the reader told to stop")
    release.set()
    stopper.join(10)
    assert not stopper.is_alive()
    handed_over = [command.device_id for command in received]
    assert handed_over == list(range(1, count + 1)), f"{len(handed_over)} of {count} handed over"
    assert not (tmp_path / "fifo").exists()


def test_stop_at_once_after_writing_hands_over_every_command(tmp_path: Path) -> None:
    """Write N commands and stop the reader right away, no pause between, while it takes a little time per
    command (as a busy writer's queue makes it): all N are handed over."""
    count, rounds = 300, 3
    for number in range(rounds):
        received: list[Command] = []

        def handed(command: Command, received: list[Command] = received) -> None:
            time.sleep(0.0005)
            received.append(command)

        reader = PipeReader(tmp_path / f"fifo{number}", handed)
        reader.start()
        for device in range(1, count + 1):
            send_command(tmp_path / f"fifo{number}", LedRequest(device, "1", True))
        reader.stop()
        assert [command.device_id for command in received] == list(range(1, count + 1)), (
            f"round {number}: {len(received)} of {count} handed over")


_WORKER = """
import signal, sys, threading, time
from sensorhub.ingest.ledpipe import PipeReader

def handed(command):
    time.sleep(0.001)  # a busy worker: commands wait in the pipe
    sys.stdout.write(f"{command.device_id}\\n")
    sys.stdout.flush()

done = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: done.set())
reader = PipeReader(sys.argv[1], handed)
reader.start()
print("holding" if reader.holding.is_set() else "standing by", flush=True)
while not done.wait(0.1):
    pass
reader.stop()
print("stopped", flush=True)
"""


def _worker_output(worker: subprocess.Popen[bytes]) -> list[int]:
    """The device ids a stopped worker handed over, in order."""
    out, _ = worker.communicate(timeout=20)
    lines = out.decode().splitlines()
    assert lines[-1:] == ["stopped"], f"the worker did not stop cleanly: {lines[-3:]}"
    return [int(line) for line in lines[:-1]]


def test_a_worker_that_stops_while_another_takes_over_loses_no_command_and_repeats_none(tmp_path: Path) -> None:
    """Two worker processes; commands keep coming while the holder stops (SIGTERM, as systemd does) and the
    other takes over: every command the web server had accepted is handed over by exactly one of them."""
    fifo = tmp_path / "run" / "ledpipe"
    first = subprocess.Popen([sys.executable, "-c", _WORKER, str(fifo)], stdout=subprocess.PIPE)
    second: subprocess.Popen[bytes] | None = None
    try:
        assert first.stdout is not None and first.stdout.readline() == b"holding\n"
        second = subprocess.Popen([sys.executable, "-c", _WORKER, str(fifo)], stdout=subprocess.PIPE)
        assert second.stdout is not None and second.stdout.readline() == b"standing by\n"
        accepted: list[int] = []
        refused = after = 0  # commands refused between the two holders; accepted after that
        deadline = time.monotonic() + 20
        while after < 200 and time.monotonic() < deadline:
            if len(accepted) == 200 and refused == 0:
                first.send_signal(signal.SIGTERM)  # once: accepted grows or refused does
            try:
                send_command(fifo, LedRequest(len(accepted) + 1, "1", True))
            except ClientNotRunning:  # between the two holders: the page says so (503), nothing accepted
                refused += 1
                time.sleep(0.002)
                continue
            except PipeError as err:  # the busy holder's pipe is full: the page says so too
                assert "full" in str(err)
                time.sleep(0.001)
                continue
            accepted.append(len(accepted) + 1)
            after += refused > 0
        assert after == 200, "the second worker never took the pipe over"
        first.wait(10)
        second.send_signal(signal.SIGTERM)
        by_first, by_second = _worker_output(first), _worker_output(second)
    finally:
        for worker in (first, second):
            if worker is not None:
                worker.kill()
                worker.wait()
    assert refused > 0 and by_first and by_second, "the test missed the take-over it is about"
    twice = set(by_first) & set(by_second)
    assert not twice, f"{len(twice)} commands handed over by both workers"
    lost = sorted(set(accepted) - set(by_first) - set(by_second))
    assert not lost, f"{len(lost)} of {len(accepted)} accepted commands lost, the first {lost[:5]}"
    assert sorted(by_first + by_second) == accepted
