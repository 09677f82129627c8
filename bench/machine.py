"""What machine a figure came from."""

from __future__ import annotations

import os
import platform
import re
import sqlite3
import subprocess
from pathlib import Path

from sensorhub.broker import find_mosquitto


def describe() -> dict[str, str | int]:
    """CPU model, cores, memory, OS and the versions that matter."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.+)", cpuinfo)
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    memory = re.search(r"MemTotal:\s*(\d+) kB", meminfo)
    try:
        mosquitto = subprocess.run([find_mosquitto(), "-h"], capture_output=True, text=True, check=False).stdout
        mosquitto_version = mosquitto.splitlines()[0].replace("mosquitto version ", "")
    except Exception:
        mosquitto_version = "?"
    return {
        "cpu": model.group(1).strip() if model else platform.processor() or "?",
        "cores": os.cpu_count() or 0,
        "memory_gib": round(int(memory.group(1)) / 1024 / 1024, 1) if memory else 0,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "mosquitto": mosquitto_version,
    }


def postgresql_version() -> str:
    """The version of the PostgreSQL server binaries `--postgresql` runs, or "?"."""
    from tests.pgcluster import binaries

    bindir = binaries()
    if bindir is None:
        return "?"
    done = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=False)
    found = re.search(r"\(PostgreSQL\) (\S+)", done.stdout)
    return found.group(1) if found else "?"
