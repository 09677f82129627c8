"""`sensorhub service install|uninstall`: systemd units for the broker, the ingest client and the web server.

Three units run `sensorhub broker|client|web` as the dedicated system user `sensorhub` (made by
systemd-sysusers from a sysusers.d file), with every setting in one environment file, logs in the journal,
`Type=notify` (each program says READY=1 itself) and `Restart=on-failure`. The data lives in
/var/lib/sensorhub (systemd's StateDirectory), the broker's log in /var/log/sensorhub. docs/deploy.md walks
through it on a Raspberry Pi.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sensorhub.errors import SensorhubError
from sensorhub.i18n import N_, tr

logger = logging.getLogger(__name__)

USER = "sensorhub"
UNIT_DIR = Path("etc/systemd/system")
SYSUSERS_FILE = Path("etc/sysusers.d/sensorhub.conf")
LOGROTATE_FILE = Path("etc/logrotate.d/sensorhub")
ENV_FILE = Path("etc/sensorhub/sensorhub.env")
STATE = "/var/lib/sensorhub"
LOGS = "/var/log/sensorhub"
#: The units, in the order they start.
UNITS = ("sensorhub-broker.service", "sensorhub-client.service", "sensorhub-web.service")


class ServiceError(SensorhubError):
    """The units cannot be installed or removed."""


@dataclass(frozen=True)
class File:
    """One file to write: where (under the root), what, and its mode."""

    path: Path
    text: str
    mode: int = 0o644


def default_executable() -> Path:
    """The `sensorhub` program of this installation (the virtual environment's)."""
    return Path(sys.executable).parent / "sensorhub"


def environment_file() -> str:
    """The settings file the three units read; written once, then yours to edit."""
    return f"""\
# sensorhub's settings for its systemd services (docs/deploy.md). Every SENSORHUB_* variable of docs/settings.md's
# settings table may be set here; then `sudo systemctl restart sensorhub-broker sensorhub-client sensorhub-web`.
SENSORHUB_DATABASE_URL=sqlite:///{STATE}/db.sqlite3
SENSORHUB_STATE_DIR={STATE}/state
# Rewritten every second (heartbeat, metrics): in memory, not on the SD card.
SENSORHUB_RUNTIME_DIR=/run/sensorhub
SENSORHUB_BROKER_LOG={LOGS}/mosquitto.log
SENSORHUB_LOG_FORMAT=text
# With real boards, raise the broker's connection limit (docs/security.md):
#SENSORHUB_BROKER_MAX_CONNECTIONS=100
# Boards log in as `device` with this password (no anonymous client on the device port):
#SENSORHUB_DEVICE_PASSWORD=
# TLS (files readable by the sensorhub user):
#SENSORHUB_TLS_CERT=/etc/sensorhub/tls/cert.pem
#SENSORHUB_TLS_KEY=/etc/sensorhub/tls/key.pem
#SENSORHUB_RETENTION_DAYS=365
"""


def sysusers() -> str:
    """The sysusers.d line that makes the system user `sensorhub`, with no login shell."""
    return f'u {USER} - "sensorhub: ESP32 sensor boards" {STATE} /usr/sbin/nologin\n'


def logrotate() -> str:
    """Rotation of the broker's log file (everything else goes to the journal, which rotates itself)."""
    return f"""\
# Written by `sensorhub service install`: the broker's log file (Mosquitto's lines are in the journal too).
{LOGS}/mosquitto.log {{
    su {USER} {USER}
    weekly
    rotate 4
    compress
    missingok
    notifempty
    copytruncate
}}
"""


def _hardening(executable: Path) -> str:
    # Hidden home directories would hide the program, or the Python it runs on, if either lives there.
    needed = (executable, Path(sys.executable).resolve())
    home = "read-only" if any(path.is_relative_to(top) for path in needed for top in ("/home", "/root")) else "yes"
    return f"""\
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome={home}
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
LockPersonality=yes
SystemCallArchitectures=native
UMask=0077"""


#: The broker unit's open-file limit (systemd's usual hard limit; the default soft limit, 1024, holds ~500 boards).
BROKER_OPEN_FILES = 524288


def unit(name: str, executable: Path, env_file: Path) -> str:
    """The text of one of UNITS."""
    command = {"sensorhub-broker.service": "broker", "sensorhub-client.service": "client",
               "sensorhub-web.service": "web"}[name]
    description = {"broker": "sensorhub MQTT broker (Mosquitto)",
                   "client": "sensorhub ingest client (MQTT to database, LED commands)",
                   "web": "sensorhub web server (gunicorn)"}[command]
    after = "network-online.target"
    wants = "network-online.target"
    if command == "client":
        after += " sensorhub-broker.service"
        wants += " sensorhub-broker.service"
    extra = ""
    if command == "broker":
        extra = ("LogsDirectory=sensorhub\n# mosquitto saves its persistence file on SIGTERM, sent by "
                 "`sensorhub broker`.\nKillMode=mixed\n"
                 "# Each board's connection is an open file: room for SENSORHUB_BROKER_MAX_CONNECTIONS up to 262,000 "
                 "on\n# each of the two listeners (`sensorhub broker` says in one line when it is short).\n"
                 f"LimitNOFILE={BROKER_OPEN_FILES}\n")
    elif command == "client":
        extra = (f"ExecStartPre={executable} db init\n"
                 "# Exits 3 when its database writer fails: restarted, the broker delivers again what it had not "
                 "acknowledged.\n# Time to commit what it received before it stops.\nTimeoutStopSec=60\n")
    else:
        extra = ("# gunicorn's master, a child of `sensorhub web`, says READY=1.\nNotifyAccess=all\nKillMode=mixed\n")
    return f"""\
# Written by `sensorhub service install` (docs/deploy.md); settings go in {env_file}.
[Unit]
Description={description}
Documentation=file://{executable.parent.parent.parent}/docs/deploy.md
After={after}
Wants={wants}
StartLimitIntervalSec=120
StartLimitBurst=5

[Service]
Type=notify
User={USER}
Group={USER}
EnvironmentFile={env_file}
ExecStart={executable} {command}
{extra}Restart=on-failure
RestartSec=2
# Exit status 2 is a setting or file to fix (said in one line in the journal): restarting cannot help.
RestartPreventExitStatus=2
StandardOutput=journal
StandardError=journal
SyslogIdentifier=sensorhub-{command}
StateDirectory=sensorhub
StateDirectoryMode=0750
# /run/sensorhub, shared by the three units, kept while any of them stops (until the next boot).
RuntimeDirectory=sensorhub
RuntimeDirectoryMode=0700
RuntimeDirectoryPreserve=yes
WorkingDirectory={STATE}
{_hardening(executable)}

[Install]
WantedBy=multi-user.target
"""


def plan(executable: Path, root: Path) -> tuple[list[File], File]:
    """The unit and sysusers files to write under `root`, and the environment file (written only if missing)."""
    env_file = Path("/") / ENV_FILE
    files = [File(root / UNIT_DIR / name, unit(name, executable, env_file)) for name in UNITS]
    files.append(File(root / SYSUSERS_FILE, sysusers()))
    files.append(File(root / LOGROTATE_FILE, logrotate()))
    return files, File(root / ENV_FILE, environment_file(), 0o640)


Echo = Callable[[str], object]
#: Exists exactly when systemd is the init system (sd_booted(3)).
SYSTEMD_RUN_DIR = Path("/run/systemd/system")


def _run(command: list[str], dry_run: bool, echo: Echo, check: bool = True) -> None:
    echo("$ " + " ".join(command))
    if dry_run:
        return
    try:
        subprocess.run(command, check=check)
    except (OSError, subprocess.CalledProcessError) as err:
        raise ServiceError(f"`{' '.join(command)}` failed: {err}") from err


def _unreachable(executable: Path) -> Path | None:
    """A directory on the way to `executable` that other users (the service's) cannot enter, if any."""
    for directory in reversed([executable.parent, *executable.parent.parents]):
        try:
            if not directory.stat().st_mode & 0o001:
                return directory
        except OSError:
            return directory
    return None


def install(executable: Path, root: Path = Path("/"), *, dry_run: bool = False, start: bool = False,
            echo: Echo = print) -> list[Path]:
    """Write the units (and the settings file if missing); on the real root, make the user and reload systemd."""
    if not executable.is_file():
        raise ServiceError(N_("no sensorhub program at {path}: run `make install` first"), path=executable)
    system = root == Path("/")
    if system and not dry_run and os.geteuid() != 0:
        raise ServiceError(N_("installing systemd units needs root: sudo .venv/bin/sensorhub service install"))
    files, env = plan(executable, root)
    if not env.path.exists():
        files.append(env)
    # The program, and the Python it runs on (a virtual environment links to it).
    for needed in (executable, Path(sys.executable).resolve()):
        blocked = _unreachable(needed)
        if blocked is not None:
            logger.warning("the %s user cannot enter %s, on the way to %s: the services could not start; put "
                           "sensorhub in /opt/sensorhub with the system's Python (docs/deploy.md)", USER, blocked,
                           needed)
    for file in files:
        if dry_run:
            echo(tr("--- {path} (mode {mode:04o})", path=file.path, mode=file.mode) + f"\n{file.text}")
            continue
        file.path.parent.mkdir(parents=True, exist_ok=True)
        file.path.write_text(file.text)
        os.chmod(file.path, file.mode)
        echo(tr("wrote {path}", path=file.path))
    if system:
        _run(["systemd-sysusers", str(Path("/") / SYSUSERS_FILE)], dry_run, echo)
        _run(["chgrp", USER, str(Path("/") / ENV_FILE)], dry_run, echo)
        _run(["systemctl", "daemon-reload"], dry_run, echo)
        if start:
            _run(["systemctl", "enable", "--now", *UNITS], dry_run, echo)
        if not systemd_running():
            echo(tr("note: systemd is not running on this machine (no /run/systemd/system): the units take effect "
                    "on a machine booted with it"))
        elif _active("mosquitto.service"):
            logger.warning("Debian's own mosquitto service runs and holds port 1883: "
                           "`sudo systemctl disable --now mosquitto`")
    return [file.path for file in files]


def systemd_running() -> bool:
    """Whether this machine was booted with systemd (its documented test: sd_booted(3))."""
    return SYSTEMD_RUN_DIR.is_dir() and shutil.which("systemctl") is not None


def _active(name: str) -> bool:
    return subprocess.run(["systemctl", "is-active", "--quiet", name], check=False, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


def uninstall(root: Path = Path("/"), *, dry_run: bool = False, echo: Echo = print) -> list[Path]:
    """Stop and remove the units; keep the settings file, the data and the user (they own the data)."""
    system = root == Path("/")
    if system and not dry_run and os.geteuid() != 0:
        raise ServiceError(N_("removing systemd units needs root: sudo .venv/bin/sensorhub service uninstall"))
    if system:
        _run(["systemctl", "disable", "--now", *UNITS], dry_run, echo, check=False)
    removed = []
    for path in [*(root / UNIT_DIR / name for name in UNITS), root / SYSUSERS_FILE, root / LOGROTATE_FILE]:
        if path.exists():
            if not dry_run:
                path.unlink()
            echo(tr("removed {path}", path=path))
            removed.append(path)
    if system:
        _run(["systemctl", "daemon-reload"], dry_run, echo)
    return removed
