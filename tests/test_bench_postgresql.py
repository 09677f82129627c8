"""The benchmark's smoke run, continued (tests/test_bench.py): the streams of readings on PostgreSQL
(`python -m bench --quick --postgresql`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.stack import ROOT


@pytest.mark.integration
def test_the_ingest_scenarios_on_postgresql_lose_nothing() -> None:
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
