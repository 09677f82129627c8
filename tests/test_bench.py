"""A smoke run of the benchmark (`python -m bench --quick`) so that it cannot rot. Nothing here is timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.scenarios import PROBE_WINDOW_US, match_probes

ROOT = Path(__file__).resolve().parents[1]
FIGURES = {"sustained_qos0", "sustained_qos1", "burst_qos1", "latency_p99_ms", "devices_2000", "web_p99_ms",
           "client_memory", "browser_p99_ms", "history_api_p99_ms", "export_rows_per_s", "rollup_cost_us",
           "retention_p99_ms", "broker_restart", "fleet_dom_slow", "fleet_dom_fast", "fleet_join_ms",
           "fleet_long_tasks", "fleet_listed_s", "fleet_heap_mb", "fleet_server_p99_ms", "footprint_idle",
           "footprint_loaded", "commands", "worker_kill"}



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


@pytest.mark.integration
def test_quick_bench_measures_every_figure() -> None:
    result = subprocess.run([sys.executable, "-m", "bench", "--quick"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("sensorhub benchmark (quick smoke run) on ")
    assert "cores" in lines[0] and "mosquitto" in lines[0]
    assert lines[1].split()[:3] == ["figure", "measured", "target"]
    report = json.loads(lines[-1])
    assert report["quick"] is True and report["machine"]["cores"] >= 1
    figures = report["figures"]
    assert set(figures) == FIGURES
    for key, figure in figures.items():
        assert not figure["value"].startswith("FAILED"), f"{key}: {figure['value']}"
    # correctness, not speed: nothing may be lost even in a smoke run
    for key in ("sustained_qos0", "sustained_qos1", "devices_2000"):
        assert figures[key]["lost"] == 0, figures[key]
    assert figures["sustained_qos0"]["duplicated"] == 0
    assert figures["burst_qos1"]["stored"] == figures["burst_qos1"]["sent"]
    assert figures["client_memory"]["stored"] == figures["client_memory"]["sent"]
    assert figures["web_p99_ms"]["full_scans"] == []
    assert figures["history_api_p99_ms"]["full_scans"] == []
    assert figures["history_api_p99_ms"]["30 days, auto"]["max_points"] <= 1000
    assert figures["export_rows_per_s"]["rows"] > 0
    for how in ("now_SIGTERM", "now_SIGKILL"):  # a board joining right after a broker restart: named, nothing lost
        restart = figures["broker_restart"][how]
        assert restart["name_s"] is not None and restart["stored"] == restart["sent"] > 0, restart
    assert figures["retention_p99_ms"]["measured"] == figures["retention_p99_ms"]["probes"]
    # every LED command reached the board, by each path (a lost one fails the scenario)
    assert [figures["commands"][path]["count"] for path in ("direct", "pipe", "broker")] == [30, 30, 30]
    assert figures["worker_kill"]["lost"] == 0 and figures["worker_kill"]["stored"] == figures["worker_kill"]["sent"]


@pytest.mark.integration
def test_quick_bench_on_postgresql_loses_nothing() -> None:
    from tests.pgcluster import binaries

    if binaries() is None:
        pytest.skip("PostgreSQL's server binaries are not installed: sudo apt-get install postgresql")
    result = subprocess.run([sys.executable, "-m", "bench", "--quick", "--postgresql"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["postgresql"] is True and report["machine"]["database"].startswith("PostgreSQL ")
    figures = report["figures"]
    assert set(figures) == {"sustained_qos0", "sustained_qos1", "burst_qos1"}
    assert figures["sustained_qos0"]["lost"] == figures["sustained_qos1"]["lost"] == 0
    assert figures["sustained_qos0"]["duplicated"] == 0
    assert figures["burst_qos1"]["stored"] == figures["burst_qos1"]["sent"]


@pytest.mark.integration
def test_quick_scale_out_bench_compares_with_the_bare_subscribers() -> None:
    result = subprocess.run([sys.executable, "-m", "bench", "--scenario", "scale-out", "--quick"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["scenario"] == "scale-out"
    assert {"scale_out_sqlite_1w_qos0", "scale_out_sqlite_1w_qos1", "scale_out_sqlite_2w_qos0",
            "scale_out_sqlite_2w_qos1"} <= set(report["figures"])
    for key, figure in report["figures"].items():
        assert figure["lost"] == 0, (key, figure)
        assert figure["paho_received"] == figure["mosquitto_sub_received"] == figure["sent"], (key, figure)
        assert figure["fraction_of_paho"] > 0 and figure["fraction_of_mosquitto_sub"] > 0
