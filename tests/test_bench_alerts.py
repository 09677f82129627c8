"""The benchmark's smoke run, continued (tests/test_bench.py): the alert rules' cost (bench/alerts.py)."""

from __future__ import annotations

import pytest

from tests.support import quick_bench

ALERTS = ("alerts",)


@pytest.mark.integration
def test_the_alerts_scenario_loses_nothing_and_fires_each_alert_once() -> None:
    figures = quick_bench(*ALERTS)["figures"]
    assert set(figures) == {"alerts_ingest", "alerts_writer", "alerts_silence"}
    ingest = figures["alerts_ingest"]
    assert ingest["lost"] == 0 and ingest["duplicated"] == 0, ingest
    assert len(ingest["without_per_s"]) == len(ingest["with_per_s"]) >= 1
    assert ingest["fired"] > 0 and ingest["doubled"] == 0, ingest  # some rules fired, never twice at once
    silence = figures["alerts_silence"]
    # every silent device's alert fired once, none before its silence was due, each with its notification
    assert silence["fired"] == silence["devices"] == silence["outbox"] > 0 and silence["early"] == 0, silence
