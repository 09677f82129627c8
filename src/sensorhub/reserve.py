"""sensorhub's Mosquitto plugin reserving the ingest client's client ids to its broker user (mosquitto_reserve.c).

Mosquitto 2.0.11 disconnects a connected client as soon as another one connects with the same client id, whoever
that is: its dynamic security plugin can bind a user to a client id (`clientid`), not keep other clients off it,
and `clientid_prefixes` would refuse every board whose id lacks the prefix (docs/security.md). The plugin,
compiled here with the system's C compiler against Mosquitto's own headers (mosquitto-dev) into the broker's
directory, refuses a CONNECT whose client id starts with `sensorhub-ingest-` unless it logs in as user `sensorhub`.
On the device listeners it also delivers to a board that published its MAC join only its own name assignment
(`OWN_ASSIGNMENT`): without it, a join storm costs N²/2 deliveries (docs/scaling.md).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

from sensorhub.credentials import CLIENT_USER
from sensorhub.protocol import Topic

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("mosquitto_reserve.c")
#: Every ingest worker's client id starts with it (credentials.client_id, `-w<n>` for the others).
INGEST_PREFIX = "sensorhub-ingest-"
#: (prefix, user) pairs given to the plugin.
RESERVED = ((INGEST_PREFIX, CLIENT_USER),)
#: The plugin's option turning on the name-assignment filter: a client that published a MAC on the join topic is
#: delivered only its own line of the assignment topic (mosquitto_reserve.c, docs/scaling.md).
OWN_ASSIGNMENT = f"plugin_opt_own_assignment {Topic.JOIN} {Topic.NAME_ASSIGN}"
#: Seconds a client that subscribed to the assignment topic hears none of it unless it joins with a MAC meanwhile
#: (a board joins right after its SUBACK; a listener that never joins hears every line after that).
JOIN_GRACE = 5
#: The filter's lines, as mqtt/mosquitto.conf gives them to the device listeners, and what they start with.
FILTER_LINES = (OWN_ASSIGNMENT, f"plugin_opt_join_grace {JOIN_GRACE}")
FILTER_OPTIONS = ("plugin_opt_own_assignment", "plugin_opt_join_grace")
#: The configuration lines of the plugin's options (left out with the plugin when it could not be built).
OPTIONS = ("plugin_opt_reserve", *FILTER_OPTIONS, "plugin_opt_otherwise")
#: What building the plugin needs on Debian: a C compiler and the installed Mosquitto's plugin headers.
BUILD_PACKAGES = "gcc mosquitto-dev libmosquitto-dev"
#: Mosquitto's plugin headers the plugin is built against (a new Mosquitto may change them: the build follows).
HEADERS = (Path("/usr/include/mosquitto_broker.h"), Path("/usr/include/mosquitto_plugin.h"),
           Path("/usr/include/mosquitto.h"))
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/usr/local/bin"])


def find_compiler() -> str | None:
    """The system's C compiler (cc, gcc or clang), or None."""
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name, path=_SEARCH_PATH)
        if path is not None:
            return path
    return None


#: The compiled plugin's name in the broker's directory (mqtt/mosquitto.conf loads var/mosquitto/sensorhub_reserve.so).
NAME = "sensorhub_reserve.so"


def cache_directory() -> Path:
    """Where built plugins wait for the next broker directory: $XDG_CACHE_HOME/sensorhub, else ~/.cache/sensorhub."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sensorhub"


def _build_key() -> str:
    """What a build depends on: the plugin's source and the installed Mosquitto's plugin headers."""
    key = hashlib.sha256(SOURCE.read_bytes())
    for header in HEADERS:
        key.update(header.read_bytes() if header.is_file() else b"-")
    return key.hexdigest()


def _cache_entry(digest: str) -> Path:
    """Where the build of `digest` is kept (RuntimeError without a home directory)."""
    return cache_directory() / f"{NAME.removesuffix('.so')}-{digest[:32]}.so"


def _from_cache(digest: str, target: Path) -> bool:
    """Copy the kept build of `digest` to `target`; False if there is none that can be read (none yet, or a
    service's home hidden from it)."""
    try:
        _install(_cache_entry(digest), target)
    except (OSError, RuntimeError) as err:
        logger.debug("no kept broker plugin: %s", err)
        return False
    return True


def _keep(built: Path, digest: str) -> None:
    """Keep a copy of `built` for the next broker directory, if the cache can be written (else say so in debug)."""
    try:
        entry = _cache_entry(digest)
        entry.parent.mkdir(parents=True, exist_ok=True)
        _install(built, entry)
    except (OSError, RuntimeError) as err:  # no home, a read-only one: the build still serves its directory
        logger.debug("could not keep the broker plugin for the next broker directory: %s", err)


def _temporary(target: Path) -> Path:
    """Where `target` is written before it replaces the old one (a broker reading it never sees half of it)."""
    return target.with_name(f".{target.name}.{os.getpid()}.tmp")


def _publish(temporary: Path, target: Path) -> None:
    """Put a finished `temporary` in `target`'s place, readable by the broker's user."""
    os.chmod(temporary, 0o644)
    os.replace(temporary, target)


def _install(built: Path, target: Path) -> None:
    """Copy `built` to `target` atomically."""
    temporary = _temporary(target)
    try:
        shutil.copyfile(built, temporary)
        _publish(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def _compile(compiler: str, target: Path) -> bool:
    """Compile the plugin to `target`; False, with a warning saying what the broker then cannot do, if it fails."""
    temporary = _temporary(target)
    result = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(temporary), str(SOURCE)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        errors = [line for line in lines if "error" in line] or lines or ["failed"]
        logger.warning("could not build the broker plugin %s (%s; it needs sudo apt-get install %s): any client "
                       "could connect with the ingest client's id (docs/security.md), and a join storm is "
                       "quadratic (docs/scaling.md)", SOURCE.name, errors[0], BUILD_PACKAGES)
        temporary.unlink(missing_ok=True)
        return False
    _publish(temporary, target)
    return True


def build(directory: Path) -> Path | None:
    """The compiled plugin in `directory` (rebuilt when its source or Mosquitto's headers changed),
    or None without a C compiler or when it does not compile (a warning says what the broker then cannot refuse).

    A build is kept in `cache_directory()`: each new broker directory (a test's, a benchmark's) copies it instead
    of running the compiler again (0.1 s of CPU)."""
    digest = _build_key()
    target = directory / NAME
    stamp = directory / f"{NAME}.sha256"
    if target.is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        return target
    if not _from_cache(digest, target):
        compiler = find_compiler()
        if compiler is None:
            logger.warning("no C compiler (sudo apt-get install %s): the broker cannot reserve the ingest client's "
                           "client id to its user, any client could connect with it (docs/security.md), and every "
                           "name assignment goes to every waiting board: a join storm is quadratic "
                           "(docs/scaling.md)", BUILD_PACKAGES)
            return None
        if not _compile(compiler, target):
            return None
        _keep(target, digest)
    stamp.write_text(digest + "\n")
    return target


def config_lines(plugin: Path, *, own_assignment: bool = False) -> list[str]:
    """The listener lines loading the plugin with the reserved prefixes (and the name-assignment filter, for a
    listener of boards)."""
    return [f"plugin {plugin}",
            *(f"plugin_opt_reserve{number} {prefix} {user}" for number, (prefix, user) in enumerate(RESERVED, 1)),
            *(FILTER_LINES if own_assignment else ())]
