"""`sensorhub service install|uninstall`, written under a temporary root and checked by systemd's own verifier."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sensorhub import systemd
from tests.stack import ROOT


def service(*args: str) -> subprocess.CompletedProcess[str]:
    """`sensorhub service ARGS`, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "sensorhub", "service", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env={**os.environ, "SENSORHUB_LOG_LEVEL": "WARNING"})


def test_install_writes_units_systemd_accepts_and_uninstall_removes_them(tmp_path: Path) -> None:
    root = tmp_path / "root"
    ran = service("install", "--root", str(root))
    assert ran.returncode == 0, ran.stderr
    units = [root / "etc/systemd/system" / name for name in systemd.UNITS]
    for path in units:
        text = path.read_text()
        for line in ("Type=notify", "User=sensorhub", "Restart=on-failure", "StandardError=journal",
                     "EnvironmentFile=/etc/sensorhub/sensorhub.env", "NoNewPrivileges=yes"):
            assert line in text.splitlines(), f"{path.name}: {line}"
        command = path.name.removeprefix("sensorhub-").removesuffix(".service")
        assert f"ExecStart={systemd.default_executable()} {command}" in text
    assert "After=network-online.target sensorhub-broker.service" in units[1].read_text()
    assert "NotifyAccess=all" in units[2].read_text()  # gunicorn's master, not the main process, says READY=1
    assert f"LimitNOFILE={systemd.BROKER_OPEN_FILES}" in units[0].read_text().splitlines()  # a file per board
    assert (root / "etc/sysusers.d/sensorhub.conf").read_text().startswith("u sensorhub ")
    assert "/var/log/sensorhub/mosquitto.log {" in (root / "etc/logrotate.d/sensorhub").read_text()
    env = root / "etc/sensorhub/sensorhub.env"
    assert oct(env.stat().st_mode & 0o777) == "0o640"  # it may hold the device password
    settings = dict(line.split("=", 1) for line in env.read_text().splitlines() if line and line[0] != "#")
    assert settings["SENSORHUB_DATABASE_URL"] == "sqlite:////var/lib/sensorhub/db.sqlite3"

    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is missing (Debian package systemd; .ci/run installs it)")
    verified = subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True,
                              timeout=60)
    complaints = [line for line in (verified.stdout + verified.stderr).splitlines() if "sensorhub-" in line]
    assert verified.returncode == 0 and complaints == [], verified.stdout + verified.stderr

    # A second install keeps the settings someone edited.
    env.write_text(env.read_text() + "SENSORHUB_RETENTION_DAYS=30\n")
    assert service("install", "--root", str(root)).returncode == 0
    assert "SENSORHUB_RETENTION_DAYS=30" in env.read_text()

    ran = service("uninstall", "--root", str(root))
    assert ran.returncode == 0, ran.stderr
    assert not any(path.exists() for path in units) and not (root / "etc/sysusers.d/sensorhub.conf").exists()
    assert not (root / "etc/logrotate.d/sensorhub").exists()
    assert env.exists()  # settings and data stay


def test_dry_run_prints_and_writes_nothing(tmp_path: Path) -> None:
    ran = service("install", "--dry-run", "--root", str(tmp_path / "root"))
    assert ran.returncode == 0, ran.stderr
    assert "[Service]" in ran.stdout and "sensorhub-web.service" in ran.stdout
    assert not (tmp_path / "root").exists()


def test_a_dry_run_on_this_machine_says_nothing_of_a_bus(tmp_path: Path) -> None:
    # On the real root: without systemd running (a container, CI), `systemctl is-active` used to end the output
    # with "Failed to connect to bus".
    ran = service("install", "--dry-run")
    assert ran.returncode == 0, ran.stderr
    assert "bus" not in (ran.stdout + ran.stderr).lower()
    assert "$ systemctl daemon-reload" in ran.stdout
    if not systemd.systemd_running():
        assert "systemd is not running on this machine" in ran.stdout
