"""The LED command pipe: its text format, a writer that never blocks, a reader that never waits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensorhub.commands import MAX_COMMAND, Command, LedRequest, RenameRequest, format_command, parse_command
from sensorhub.errors import ClientNotRunning, PayloadError, PipeError
from sensorhub.ingest.ledpipe import PipeReader, ensure_fifo, send_command
from sensorhub.protocol import MAX_NAME, name_problem
from tests.support import wait_for


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
    started = time.monotonic()
    with pytest.raises(ClientNotRunning, match="nobody reads"):
        send_command(fifo, LedRequest(1, "1", True))
    assert time.monotonic() - started < 1.0  # sanity bound: it must not wait for a reader


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
    started = time.monotonic()
    reader.start()  # must not wait for a writer
    assert time.monotonic() - started < 1.0
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
