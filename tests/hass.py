"""A real Home Assistant for the tests: installed from PyPI in a venv of its own (cached between runs), started on a
free port with a minimal configuration whose MQTT integration logs in to our broker as `homeassistant`.

Home Assistant supports one Python minor at a time: HA_VERSION is the newest release whose Requires-Python accepts
3.11 (Debian 12's Python). Nothing is fetched while it runs (`--skip-pip`): the requirements of the integrations it
loads (its default ones, `mqtt`, `api`) are installed with it, at the versions their manifests pin. Its owner and a
long-lived access token, and the MQTT config entry, are written to its `.storage` before its first start: no
onboarding, no browser.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

HA_VERSION = "2024.3.3"
#: What the integrations Home Assistant loads need (their manifests' pins for HA_VERSION; `requirements()` below
#: prints them from an installed copy), numpy for `stream` (MQTT sets up its camera platform), and josepy 1.x:
#: pip otherwise takes josepy 2, whose missing ComparableX509 breaks `acme`, imported by every HTTP request.
HA_REQUIREMENTS = ("Pillow==10.2.0", "SQLAlchemy==2.0.27", "aiohttp-fast-url-dispatcher==0.3.0",
                   "aiohttp-zlib-ng==0.3.1", "aiohttp_cors==0.7.0", "fnv-hash-fast==0.5.0",
                   "home-assistant-frontend==20240307.0", "ifaddr==0.2.0", "janus==1.0.0", "paho-mqtt==1.6.1",
                   "psutil-home-assistant==0.0.1", "securetar==2024.2.1", "numpy==1.26.0", "PyTurboJPEG==1.7.1",
                   "josepy==1.14.0")
#: The cache, outside the repository: reused while it is complete (its marker file written last).
CACHE = Path(os.environ.get("SENSORHUB_HA_CACHE", Path.home() / ".cache" / "sensorhub")) / f"homeassistant-{HA_VERSION}"
_MARKER = ".sensorhub-complete"
_CONFIG = """homeassistant:
  name: sensorhub test
  latitude: 48.85
  longitude: 2.35
  elevation: 35
  unit_system: metric
  time_zone: UTC
  country: FR
  currency: EUR
http:
  server_host: 127.0.0.1
  server_port: {port}
api:
logger:
  default: warning
  logs:
    homeassistant.components.mqtt: debug
"""


def installed() -> bool:
    """Whether the cached venv is complete."""
    return (CACHE / _MARKER).is_file()


def install(log: IO[str] | None = None) -> float:
    """Install Home Assistant in CACHE unless it is there (one process at a time); the seconds it took (0: cached)."""
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with open(CACHE.parent / f".{CACHE.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed():
            return 0.0
        started = time.monotonic()
        shutil.rmtree(CACHE, ignore_errors=True)  # an unfinished attempt (no marker)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(CACHE)], check=True, stdout=log, stderr=log)
        pip = [str(CACHE / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        subprocess.run([*pip, f"homeassistant=={HA_VERSION}", *HA_REQUIREMENTS], check=True, stdout=log,
                       stderr=log)
        (CACHE / _MARKER).write_text(HA_VERSION + "\n")
        return time.monotonic() - started


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def access_token(refresh_id: str, jwt_key: str, days: int = 3650) -> str:
    """A long-lived access token as Home Assistant signs it (JWT, HS256, issued by the refresh token)."""
    now = int(time.time())
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = _b64(json.dumps({"iss": refresh_id, "iat": now, "exp": now + days * 86400}).encode())
    signature = hmac.new(jwt_key.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{_b64(signature)}"


def _storage(key: str, data: dict[str, Any], version: int = 1, minor: int = 1) -> str:
    return json.dumps({"version": version, "minor_version": minor, "key": key, "data": data}, indent=1)


def write_config(directory: Path, port: int, mqtt_port: int, mqtt_password: str) -> tuple[str, str]:
    """A configuration directory: configuration.yaml, an owner with a long-lived token, the MQTT config entry;
    the token and the entry's id."""
    storage = directory / ".storage"
    storage.mkdir(parents=True, exist_ok=True)
    (directory / "configuration.yaml").write_text(_CONFIG.format(port=port))
    user, refresh, jwt_key = secrets.token_hex(16), secrets.token_hex(16), secrets.token_hex(64)
    created = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    (storage / "auth").write_text(_storage("auth", {
        "users": [{"id": user, "group_ids": ["system-admin"], "is_owner": True, "is_active": True,
                   "name": "sensorhub", "system_generated": False, "local_only": False}],
        "groups": [{"id": "system-admin", "name": "Administrators"}, {"id": "system-users", "name": "Users"},
                   {"id": "system-read-only", "name": "Read Only"}],
        "credentials": [],
        "refresh_tokens": [{"id": refresh, "user_id": user, "client_id": None, "client_name": "sensorhub tests",
                            "client_icon": None, "token_type": "long_lived_access_token", "created_at": created,
                            "access_token_expiration": 3650 * 86400.0, "token": secrets.token_hex(64),
                            "jwt_key": jwt_key, "last_used_at": None, "last_used_ip": None, "expire_at": None,
                            "credential_id": None, "version": HA_VERSION}],
    }))
    (storage / "onboarding").write_text(_storage("onboarding", {"done": ["user", "core_config", "analytics",
                                                                          "integration"]}, version=4))
    entry_id = secrets.token_hex(16)
    (storage / "core.config_entries").write_text(_storage("core.config_entries", {"entries": [{
        "entry_id": entry_id, "version": 1, "minor_version": 1, "domain": "mqtt",
        "title": f"127.0.0.1:{mqtt_port}",
        "data": {"broker": "127.0.0.1", "port": mqtt_port, "username": "homeassistant", "password": mqtt_password,
                 "discovery": True},
        "options": {}, "pref_disable_new_entities": False, "pref_disable_polling": False, "source": "user",
        "unique_id": None, "disabled_by": None}]}))
    return access_token(refresh, jwt_key), entry_id


def start(directory: Path, log: IO[bytes]) -> subprocess.Popen[bytes]:
    """Start `hass` on `directory` (nothing fetched from PyPI while it runs)."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("VIRTUAL_ENV", "PYTHON"))}
    return subprocess.Popen([str(CACHE / "bin" / "hass"), "-c", str(directory), "--skip-pip", "--log-no-color"],
                            stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True)


def stop(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Stop Home Assistant (SIGTERM, then SIGKILL)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


class Api:
    """Home Assistant's REST API with a bearer token."""

    def __init__(self, port: int, token: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token = token

    def call(self, method: str, path: str, body: Any = None, timeout: float = 10) -> Any:
        """One request; its JSON answer (HTTPError on a failure status)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")

    def running(self) -> bool:
        """Whether Home Assistant answers and has finished starting."""
        try:
            return bool(self.call("GET", "/api/config").get("state") == "RUNNING")
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def states(self) -> dict[str, dict[str, Any]]:
        """Every entity's state, by entity id."""
        return {state["entity_id"]: state for state in self.call("GET", "/api/states")}


def requirements() -> list[str]:
    """The requirements of the integrations Home Assistant loads here, from the installed copy's manifests."""
    code = (
        "import json,pathlib,homeassistant.bootstrap as b,homeassistant.components as c\n"
        "root=pathlib.Path(c.__file__).parent;todo=list(b.DEFAULT_INTEGRATIONS|{'mqtt','api','http'});seen=set();r=set()\n"
        "while todo:\n d=todo.pop()\n if d in seen or not (root/d/'manifest.json').exists(): continue\n"
        " seen.add(d);m=json.loads((root/d/'manifest.json').read_text());r.update(m.get('requirements',[]))\n"
        " todo+=m.get('dependencies',[])+m.get('after_dependencies',[])\nprint(json.dumps(sorted(r)))\n")
    out = subprocess.run([str(CACHE / "bin" / "python"), "-c", code], check=True, capture_output=True, text=True)
    return list(json.loads(out.stdout))


if __name__ == "__main__":  # `.ci/run` installs it before `make test`: python -m tests.hass
    print(f"Home Assistant {HA_VERSION} in {CACHE}: installing (cached once done)", flush=True)
    took = install(sys.stdout)
    print(f"Home Assistant {HA_VERSION}: {'cached' if not took else f'installed in {took:.0f} s'}")
