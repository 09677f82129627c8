"""The ingest client's summary line and the broker lines `sensorhub run` keeps off the console."""

from __future__ import annotations

import pytest

from sensorhub.ingest.summary import Summary
from sensorhub.ingest.writer import WriterStats
from sensorhub.supervisor import is_connection_line


def test_the_summary_counts_joins_leaves_online_and_readings_per_interval() -> None:
    stats = WriterStats()
    stats.joins, stats.stored["light"] = 5, 100  # before the summary started: not counted
    summary = Summary(stats, every=10)
    summary._last = 0.0
    assert summary.line(5.0) is None  # the interval has not ended
    stats.joins, stats.leaves, stats.online = 2005, 3, 2002
    stats.stored["light"], stats.stored["button"] = 100 + 19_990, 10
    assert summary.line(10.0) == "last 10 s: 2000 joined, 3 left, 2002 online, 2000 readings/s"
    assert summary.line(20.0) == "last 10 s: 0 joined, 0 left, 2002 online, 0 readings/s"


def test_an_idle_stack_says_nothing_after_saying_it_went_quiet() -> None:
    stats = WriterStats()
    summary = Summary(stats, every=10)
    summary._last = 0.0
    assert summary.line(10.0) is None  # nothing ever happened
    stats.joins, stats.leaves = 1, 1
    assert summary.line(20.0) == "last 10 s: 1 joined, 1 left, 0 online, 0 readings/s"
    assert summary.line(30.0) == "last 10 s: 0 joined, 0 left, 0 online, 0 readings/s"  # it went quiet
    assert summary.line(40.0) is None


@pytest.mark.parametrize(("line", "hidden"), [
    ("2026-11-29T06:36:44: New connection from 127.0.0.1:56765 on port 1883.", True),
    ("2026-11-29T06:36:44: New client connected from 127.0.0.1:56765 as sim-52FCBD3ABE6D (p5, c1, k2).", True),
    ("2026-11-29T06:36:44: Client sim-52FCBD3ABE6D disconnected.", True),
    ("2026-11-29T06:36:50: Client sensorhub-web-272f1380 closed its connection.", True),
    ("2026-11-29T06:36:50: Client sim-1 has exceeded timeout, disconnecting.", True),
    ("2026-11-29T06:36:50: Socket error on client sim-1, disconnecting.", True),
    ("2026-11-29T06:37:08: mosquitto version 2.0.11 terminating", False),
    ("2026-11-29T06:36:44: Opening ipv4 listen socket on port 1883.", False),
    ("2026-11-29T06:36:44: Error: Address already in use", False),
    ("broker running (config var/mosquitto/mosquitto.conf); Ctrl-C stops it", False),
])
def test_only_the_brokers_per_connection_lines_are_kept_off_the_console(line: str, hidden: bool) -> None:
    assert is_connection_line(line) is hidden
