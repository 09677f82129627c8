"""The benchmark's smoke run, continued (tests/test_bench_scale.py): the scale-out comparison on PostgreSQL, in a
module of its own so that it runs beside the SQLite half in the parallel run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.stack import ROOT
from tests.test_bench_scale import check_figures

#: What `python -m bench --scenario scale-out --quick` runs on PostgreSQL (bench/__main__.py's `_scale_out`), with
#: the figures' data as one JSON line.
POSTGRESQL_ONLY = """
import json, sys
from bench.__main__ import postgresql_databases
from bench.scaleout import SCALE_QUICK, scale_out
with postgresql_databases() as new_database:
    figures = scale_out(SCALE_QUICK, [("PostgreSQL", new_database)], lambda text: print(text, file=sys.stderr))
print(json.dumps({figure.key: figure.data for figure in figures}))
"""


@pytest.mark.integration
def test_quick_scale_out_bench_on_postgresql_compares_with_the_bare_subscribers() -> None:
    from tests.pgcluster import binaries

    if binaries() is None:
        pytest.skip("PostgreSQL's server binaries are not installed: sudo apt-get install postgresql")
    result = subprocess.run([sys.executable, "-c", POSTGRESQL_ONLY], cwd=ROOT, capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(figures) == {"scale_out_postgresql_2w_qos0", "scale_out_postgresql_2w_qos1"}
    check_figures(figures)
