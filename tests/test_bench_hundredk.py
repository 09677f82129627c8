"""The 100k scenario's smoke run (bench/hundredk.py): a few boards through every phase, in seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import hundredk
from bench.edges import edge_config
from bench.hundredk import HundredK
from sensorhub.protocol import MAX_PACKET

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration
@pytest.mark.parametrize("edges", [0, 2], ids=["one broker", "two edge brokers bridged to the central one"])
def test_quick_100k_bench_loses_nothing_and_brings_every_board_back(edges: int) -> None:
    result = subprocess.run([sys.executable, "-m", "bench", "--scenario", "100k", "--quick", "--edges", str(edges)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
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
    assert report["sizes"]["edges"] == edges
    assert set(figures["hk_cpu"]["cpu_percent"]) == set(figures["hk_memory"]["rss_mib"]) == {
        "broker", "client", "simulator", *(["edge brokers"] if edges else [])}
    for key in ("hk_presence_silent", "hk_presence_closed", "hk_restart", "hk_storm"):
        assert figures[key]["seconds"] is not None, (key, figures[key])
    restart = figures["hk_restart"]
    # With one broker every board joined again after the restart (one more LED status each); with edge brokers
    # the boards stayed connected to them.
    assert restart["online"] == restart["boards"] and restart["stored_led"] >= restart["acked_led"] >= boards
    assert restart["acked_led"] > boards or edges
    storm = figures["hk_storm"]
    assert storm["online"] == storm["boards"] and storm["assigns_received"] >= storm["boards"]


def test_the_boards_beyond_one_broker_process_s_open_files_go_to_edge_brokers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hundredk, "most_boards", lambda: 19_900)
    assert HundredK(boards=19_900).edge_count() == 0  # one broker process holds them
    # 100,000 boards: 15 simulator processes of 7,000, two to an edge broker (14,000 sockets <= 19,900).
    assert HundredK(boards=100_000).edge_count() == 8
    assert HundredK(boards=25_000).edge_count() == 2
    assert HundredK(boards=25_000, per_process=20_000).edge_count() == 2  # one process each, capped
    assert HundredK(boards=60, edges=3).edge_count() == 3  # asked for


def test_an_edge_broker_bridges_the_device_channels_at_the_specification_s_qos() -> None:
    config = edge_config(4, 20_001, 20_000, Path("/tmp/edges")).splitlines()
    assert "listener 20001 127.0.0.1" in config and "address 127.0.0.1:20000" in config
    assert "remote_clientid sensorhub-edge-4" in config
    # At the specification's QoS but at most 1 (BRIDGE_QOS: at QoS 2 Wills stalled and assignments were lost).
    assert [line for line in config if line.startswith("topic ")] == [
        "topic state/join out 1", "topic state/leave out 1", "topic led/status out 1", "topic button/status out 0",
        "topic photoresistor/status out 0", "topic state/nameAssign in 1", "topic led/command in 1"]
    # The central broker refuses retained messages and keepalives above 12 s, and packets above MAX_PACKET.
    assert "notifications false" in config and "keepalive_interval 10" in config
    assert f"max_packet_size {MAX_PACKET}" in config
