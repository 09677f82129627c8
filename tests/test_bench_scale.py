"""The benchmark's smoke run, continued (tests/test_bench.py): the scale-out comparison with bare subscribers, on
SQLite here (`python -m bench --scenario scale-out --quick` with PostgreSQL's binaries out of its sight), on
PostgreSQL in tests/test_bench_scale_postgresql.py: the two halves spread over the parallel run's workers."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.stack import ROOT

#: `python -m bench ARGS` as if PostgreSQL were not installed: the scale-out scenario then runs on SQLite only.
SQLITE_ONLY = ("import sys, tests.pgcluster; tests.pgcluster.binaries = lambda: None; "
               "from bench.__main__ import main; sys.exit(main(sys.argv[1:]))")


def check_figures(figures: dict[str, Any]) -> None:
    """Nothing lost by sensorhub, and both bare subscribers received every reading sent."""
    for key, figure in figures.items():
        assert figure["lost"] == 0, (key, figure)
        assert figure["paho_received"] == figure["mosquitto_sub_received"] == figure["sent"], (key, figure)
        assert figure["fraction_of_paho"] > 0 and figure["fraction_of_mosquitto_sub"] > 0


@pytest.mark.integration
def test_quick_scale_out_bench_compares_with_the_bare_subscribers() -> None:
    result = subprocess.run([sys.executable, "-c", SQLITE_ONLY, "--scenario", "scale-out", "--quick"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["scenario"] == "scale-out"
    # The quick run's configurations (SCALE_QUICK.workers): two workers sharing the readings, at both QoS.
    assert set(report["figures"]) == {"scale_out_sqlite_2w_qos0", "scale_out_sqlite_2w_qos1"}
    check_figures(report["figures"])
