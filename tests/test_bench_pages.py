"""The benchmark's smoke run, continued (tests/test_bench.py): the pages, the history and retention."""

from __future__ import annotations

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
