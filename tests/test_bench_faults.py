"""The benchmark's smoke run, continued (tests/test_bench.py): broker restarts, commands, a killed worker, the
footprint."""

from __future__ import annotations

import pytest

from tests.support import quick_bench

FAULTS = ("broker_restart", "footprint", "commands", "worker_kill")


@pytest.mark.integration
def test_the_fault_and_footprint_scenarios_lose_nothing() -> None:
    figures = quick_bench(*FAULTS)["figures"]
    assert set(figures) == {"broker_restart", "footprint_idle", "footprint_loaded", "commands", "worker_kill"}
    for how in ("now_SIGTERM", "now_SIGKILL"):  # a board joining right after a broker restart: named, nothing lost
        restart = figures["broker_restart"][how]
        assert restart["name_s"] is not None and restart["stored"] == restart["sent"] > 0, restart
    # every LED command reached the board, by each path (a lost one fails the scenario)
    assert [figures["commands"][path]["count"] for path in ("direct", "pipe", "broker")] == [30, 30, 30]
    assert figures["worker_kill"]["lost"] == 0 and figures["worker_kill"]["stored"] == figures["worker_kill"]["sent"]
