"""The benchmark's smoke run, continued (tests/test_bench.py): many devices joining, the web server under them."""

from __future__ import annotations

import pytest

from tests.support import quick_bench

FLEET = ("devices", "web")


@pytest.mark.integration
def test_many_devices_join_and_the_web_server_reads_no_whole_table() -> None:
    report = quick_bench(*FLEET)
    assert report["quick"] is True and report["machine"]["cores"] >= 1
    figures = report["figures"]
    assert set(figures) == {"devices_2000", "web_p99_ms"}
    # correctness, not speed: nothing may be lost even in a smoke run
    assert figures["devices_2000"]["lost"] == 0, figures["devices_2000"]
    assert figures["web_p99_ms"]["full_scans"] == []
