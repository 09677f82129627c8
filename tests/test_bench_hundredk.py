"""The 100k scenario's smoke run (bench/hundredk.py): a few boards through every phase, in seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_quick_100k_bench_loses_nothing_and_brings_every_board_back() -> None:
    result = subprocess.run([sys.executable, "-m", "bench", "--scenario", "100k", "--quick"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["scenario"] == "100k" and report["machine"]["open_files"] > 0
    figures = report["figures"]
    assert set(figures) == {"hk_register", "hk_steady", "hk_cpu", "hk_memory", "hk_presence_silent",
                            "hk_presence_closed", "hk_restart", "hk_client_restarts", "hk_storm"}
    boards = report["sizes"]["boards"]
    assert figures["hk_register"]["online"] == boards
    assert figures["hk_steady"]["lost"] == 0 and figures["hk_steady"]["sent"] > 0
    assert figures["hk_client_restarts"]["restarts"] == 0
    assert set(figures["hk_cpu"]["cpu_percent"]) == set(figures["hk_memory"]["rss_mib"]) == {
        "broker", "client", "simulator"}
    for key in ("hk_presence_silent", "hk_presence_closed", "hk_restart", "hk_storm"):
        assert figures[key]["seconds"] is not None, (key, figures[key])
    restart = figures["hk_restart"]
    assert restart["online"] == restart["boards"] and restart["stored_led"] >= restart["acked_led"] > boards
    storm = figures["hk_storm"]
    assert storm["online"] == storm["boards"] and storm["assigns_received"] >= storm["boards"]
