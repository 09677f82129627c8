"""The benchmark's smoke run, continued (tests/test_bench.py): the pages, the history and retention."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import quick_bench

PAGES = ("browser", "history", "export", "rollups", "retention", "fleet-browser")


@pytest.mark.integration
def test_the_page_and_history_scenarios_measure_every_figure() -> None:
    figures = quick_bench(*PAGES)["figures"]
    assert set(figures) == {"browser_p99_ms", "history_api_p99_ms", "export_rows_per_s", "rollup_cost_us",
                            "retention_p99_ms", "fleet_dom_slow", "fleet_dom_fast", "fleet_join_ms",
                            "fleet_long_tasks", "fleet_listed_s", "fleet_heap_mb", "fleet_server_p99_ms"}
    assert figures["history_api_p99_ms"]["full_scans"] == []
    assert figures["history_api_p99_ms"]["30 days, auto"]["max_points"] <= 1000
    assert figures["export_rows_per_s"]["rows"] > 0
    assert figures["retention_p99_ms"]["measured"] == figures["retention_p99_ms"]["probes"]


@pytest.mark.integration
def test_the_pages_100k_scenario_measures_every_figure_in_its_smoke_run() -> None:
    result = subprocess.run([sys.executable, "-m", "bench", "--quick", "--scenario", "pages-100k"],
                            cwd=Path(__file__).parent.parent, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("sensorhub benchmark (quick smoke run) on ") and "pages-100k" in lines[0]
    assert lines[1].split()[:3] == ["figure", "measured", "target"]
    report = json.loads(lines[-1])
    figures = report["figures"]
    assert report["scenario"] == "pages-100k" and len(report["machine"]["loadavg"]) == 3
    assert set(figures) == {f"pages_{key}" for key in (
        "capteurs_open_s", "live_p99_ms", "historique_ms", "historique_next_ms", "api_devices_ms",
        "api_devices_next_ms", "search_name_ms", "search_mac_ms", "search_historique_ms", "accueil_counts_ms",
        "accueil_ms")}
    assert figures["pages_capteurs_open_s"]["cards"] == 100  # a page of the 3,000, not every card
    assert figures["pages_live_p99_ms"]["shown"] > 0  # the card in view followed its device
    assert all("missing" not in figures[f"pages_{key}_ms"] for key in ("api_devices_next", "historique_next"))
    assert figures["pages_search_name_ms"]["bytes"] < 1000  # one device found
