"""Secrets generated at first start and kept in the state directory, each readable by its owner only.

    var/                       the state directory (SENSORHUB_STATE_DIR), writable by its owner only
      mqtt-client.secret       the ingest client's broker password (0600)
      mqtt-web.secret          the web server's broker password, for commands through the broker (0600)
      mqtt-homeassistant.secret  Home Assistant's broker password, user `homeassistant` (SENSORHUB_HOMEASSISTANT)
      web.secret               the key signing web sessions and CSRF tokens (0600)
      ledpipe                  the LED command pipe (0600, made by the ingest client)
      mosquitto/               the broker's own directory (owned by the mosquitto user when started as root)
        passwd                 the broker's password file: salted PBKDF2 hashes made by mosquitto_passwd
        dynamic-security.json  the device listeners' users (salted PBKDF2 hashes) and rules, for Mosquitto's dynamic
                               security plugin (sensorhub.dynsec, compiled from mqtt/acl.devices)
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from sensorhub.config import Settings
from sensorhub.errors import BrokerError, ConfigError
from sensorhub.i18n import N_

logger = logging.getLogger(__name__)

#: The broker user of the ingest client, and the one of boards that log in.
CLIENT_USER = "sensorhub"
DEVICE_USER = "device"
#: The broker user of the web server: it may only publish the server-only command topic.
WEB_USER = "sensorhub-web"
#: The broker user of Home Assistant (SENSORHUB_HOMEASSISTANT, on our broker): reads the discovery and our
#: states, publishes only its status and the LED commands (mqtt/acl.devices).
HA_USER = "homeassistant"
HA_SECRET = "mqtt-homeassistant.secret"
CLIENT_SECRET = "mqtt-client.secret"
WEB_MQTT_SECRET = "mqtt-web.secret"
WEB_SECRET = "web.secret"
BROKER_DIR = "mosquitto"
PASSWD = "passwd"
MOSQUITTO_USER = "mosquitto"
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/usr/sbin", "/usr/local/bin"])


def state_dir(settings: Settings) -> Path:
    """The state directory, created if missing; refuse one that other users could write into."""
    path = Path(settings.state_dir)
    try:
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
        info = path.stat()
    except OSError as err:
        raise ConfigError(N_("cannot create the state directory {path}: {reason} (set SENSORHUB_STATE_DIR)"),
                          path=path, reason=err.strerror) from err
    check_private_dir(path, info, "SENSORHUB_STATE_DIR")
    return path


def check_private_dir(path: Path, info: os.stat_result, setting: str) -> None:
    """Refuse a directory that another user owns or may write into (they could plant files there)."""
    if info.st_uid not in (os.geteuid(), 0):
        raise ConfigError(N_("{path} belongs to another user (uid {uid}): choose a directory of yours with "
                             "{setting}"), path=path, uid=info.st_uid, setting=setting)
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(N_("{path} is writable by other users: `chmod go-w {path}` or choose another directory "
                             "with {setting}"), path=path, setting=setting)


def read_or_create_secret(path: Path) -> str:
    """The secret in `path`; made (random, mode 0600) if the file does not exist yet."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return _read_secret(path)
    except OSError as err:
        raise ConfigError(N_("cannot create the secret file {path}: {reason}"), path=path, reason=err.strerror) from err
    value = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    logger.info("generated %s (readable by its owner only)", path)
    return value


def _read_secret(path: Path) -> str:
    try:
        info = path.stat()
        if info.st_mode & 0o077:
            os.chmod(path, 0o600)
            logger.warning("%s was readable by other users: made it private (mode 0600)", path)
        value = path.read_text().strip()
    except OSError as err:
        raise ConfigError(N_("cannot read the secret file {path}: {reason}"), path=path, reason=err.strerror) from err
    if not value:
        raise ConfigError(N_("the secret file {path} is empty: delete it, a new one is made at the next start"),
                          path=path)
    return value


def client_password(settings: Settings) -> str:
    """The ingest client's broker password (made at first start)."""
    return read_or_create_secret(client_secret_path(settings))


def client_secret_path(settings: Settings) -> Path:
    """Where the ingest client's broker password is kept."""
    return state_dir(settings) / CLIENT_SECRET


def web_mqtt_password(settings: Settings) -> str:
    """The web server's broker password (made at first start; copied to a web server on another machine)."""
    return read_or_create_secret(web_mqtt_secret_path(settings))


def web_mqtt_secret_path(settings: Settings) -> Path:
    """Where the web server's broker password is kept."""
    return state_dir(settings) / WEB_MQTT_SECRET


def homeassistant_password(settings: Settings) -> str | None:
    """Home Assistant's broker password (made at first start), or None when it does not log in to our broker."""
    if not settings.homeassistant or settings.homeassistant_url:
        return None
    return read_or_create_secret(homeassistant_secret_path(settings))


def homeassistant_secret_path(settings: Settings) -> Path:
    """Where Home Assistant's broker password is kept."""
    return state_dir(settings) / HA_SECRET


def client_id(password: str, worker: int = 0) -> str:
    """The ingest client's MQTT client id: stable, so the broker keeps its session, and not guessable from the
    outside, so that no anonymous client can take its connection over by connecting with the same id."""
    digest = hashlib.sha256(f"sensorhub-client-id:{password}".encode()).hexdigest()[:16]
    return f"sensorhub-ingest-{digest}" + (f"-{worker}" if worker else "")


def web_secret_key(settings: Settings) -> str:
    """SENSORHUB_SECRET_KEY, or a key generated once in the state directory (sessions survive restarts)."""
    return settings.secret_key or read_or_create_secret(state_dir(settings) / WEB_SECRET)


def mosquitto_account() -> pwd.struct_passwd | None:
    """The user mosquitto drops to when started as root, or None when it keeps our identity."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(MOSQUITTO_USER)
    except KeyError:
        return None


def broker_dir(settings: Settings) -> Path:
    """The broker's own directory in the state directory (owned by mosquitto when started as root)."""
    path = state_dir(settings) / BROKER_DIR
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        account = mosquitto_account()
        if account is not None:
            os.chown(path, account.pw_uid, account.pw_gid)
        os.chmod(path, 0o700)
    except OSError as err:
        raise BrokerError(N_("cannot prepare the broker directory {path}: {reason}"), path=path,
                          reason=err.strerror) from err
    return path


def find_mosquitto_passwd() -> str:
    """Path of mosquitto_passwd (installed with mosquitto), or BrokerError saying how to get it."""
    path = shutil.which("mosquitto_passwd", path=_SEARCH_PATH)
    if path is None:
        raise BrokerError(N_("mosquitto_passwd is not installed: it comes with mosquitto "
                             "(`sudo apt-get install mosquitto`)"))
    return path


def write_broker_passwd(settings: Settings) -> Path:
    """(Re)write the broker's password file from the current secrets; return its path.

    The plain passwords only ever exist in a private temporary file, hashed in place by `mosquitto_passwd -U`
    (the password is never on a command line, where other local users could read it).
    """
    directory = broker_dir(settings)
    target = directory / PASSWD
    lines = [f"{CLIENT_USER}:{client_password(settings)}", f"{WEB_USER}:{web_mqtt_password(settings)}"]
    if settings.device_password:
        lines.append(f"{DEVICE_USER}:{settings.device_password}")
    if (ha_password := homeassistant_password(settings)) is not None:
        lines.append(f"{HA_USER}:{ha_password}")
    program = find_mosquitto_passwd()
    fd, temporary = tempfile.mkstemp(prefix=".passwd-", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        result = subprocess.run([program, "-U", temporary], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise BrokerError(f"mosquitto_passwd could not hash {target}: {detail[-1] if detail else 'failed'}")
        account = mosquitto_account()
        if account is not None:
            os.chown(temporary, account.pw_uid, account.pw_gid)
        os.chmod(temporary, 0o600)
        os.replace(temporary, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    return target
