"""A smoke run of the benchmark (`python -m bench --quick`) so that it cannot rot. Nothing here is timed.

The scenarios are split over tests/test_bench*.py so that the parallel run (pytest-xdist, a module per worker)
spreads them: here the streams of readings; test_bench_fleet.py the many devices and the web server under them;
test_bench_postgresql.py the streams on PostgreSQL; test_bench_alerts.py the alert rules' cost;
test_bench_pages.py the pages and the history; test_bench_faults.py broker restarts, commands, worker kills and
the footprint; test_bench_scale.py the scale-out comparison.
"""

from __future__ import annotations

import pytest

from bench.loadgen import split
from bench.scenarios import PROBE_WINDOW_US, match_probes
from tests.support import quick_bench

#: The streams of readings, smoke-run here; the other scenarios in the other tests/test_bench*.py.
STREAMS = ("sustained_qos0", "sustained_qos1", "burst_qos1", "latency", "memory")


def test_the_smoke_runs_cover_every_scenario() -> None:
    from bench.__main__ import SCENARIOS
    from tests.test_bench_alerts import ALERTS
    from tests.test_bench_faults import FAULTS
    from tests.test_bench_fleet import FLEET
    from tests.test_bench_pages import PAGES

    assert sorted(STREAMS + FLEET + ALERTS + PAGES + FAULTS) == sorted(SCENARIOS)



def test_each_latency_probe_is_matched_to_its_own_row() -> None:
    """A lost probe is missing, never shifting the later ones (which pairing by position did)."""
    t0 = 1_795_000_000.0
    probes = [(t0 + 0.02 * k, k % 101) for k in range(300)]
    lost = {5, 106}  # the same value twice, two seconds apart
    rows = {k: (t0 + 0.02 * k + 0.004, int((t0 + 0.02 * k + 0.001) * 1e6), k % 101)
            for k in range(300) if k not in lost}
    rows[999] = (t0 + 50, int((t0 + 49) * 1e6), 7)  # a row no probe explains
    delays, unmatched = match_probes(probes, rows)
    assert len(delays) == 298 and unmatched == 1
    assert all(abs(delay - 4.0) < 0.01 for delay in delays), "a probe was paired with another probe's row"
    late = {0: (t0 + 5, int((t0 + PROBE_WINDOW_US / 1e6 + 0.5) * 1e6), 0)}  # outside the probe's window
    assert match_probes(probes[:1], late) == ([], 1)


def test_the_load_is_shared_between_the_publisher_processes() -> None:
    """What the smoke runs, with one publisher process each (QUICK), no longer show: every device published by
    exactly one of `make bench`'s publishers, the rate shared in proportion, each device's own values with it."""
    devices = [(f"capteur{k:02d}", f"1.{k:06d}") for k in range(10)]
    values = {name: (k, k + 1) for k, (name, _session) in enumerate(devices)}
    shares = split(1883, devices, 7, 1_000, 1, 4, values)
    assert sorted(device for share in shares for device in share.devices) == devices
    assert [len(share.devices) for share in shares] == [3, 3, 2, 2]
    assert [share.rate for share in shares] == pytest.approx([300, 300, 200, 200])
    assert {(share.port, share.per_device, share.qos) for share in shares} == {(1883, 7, 1)}
    assert all(share.values == tuple(values[name] for name, _session in share.devices) for share in shares)
    assert len(split(1883, devices[:2], 7, 0, 0, 4)) == 2  # no publisher without devices


@pytest.mark.integration
def test_the_streams_of_readings_lose_nothing() -> None:
    report = quick_bench(*STREAMS)
    assert report["quick"] is True and report["machine"]["cores"] >= 1
    figures = report["figures"]
    assert set(figures) == {"sustained_qos0", "sustained_qos1", "burst_qos1", "latency_p99_ms", "client_memory"}
    # correctness, not speed: nothing may be lost even in a smoke run
    for key in ("sustained_qos0", "sustained_qos1"):
        assert figures[key]["lost"] == 0, figures[key]
    assert figures["sustained_qos0"]["duplicated"] == 0
    assert figures["burst_qos1"]["stored"] == figures["burst_qos1"]["sent"]
    assert figures["client_memory"]["stored"] == figures["client_memory"]["sent"]
