"""The device listener's access rules for Mosquitto's dynamic security plugin, compiled from `mqtt/acl.devices`.

Why not the plain `acl_file`: Mosquitto 2.0.11's ACL file never refuses a SUBSCRIBE, it only filters what is
delivered. An anonymous client subscribing to the ingest workers' shared filter `$share/sensorhub/<channel>`
therefore joins their share group, receives nothing, and still gets its turn: the broker drops every message it
hands to it (measured: with 10 such clients, 18 of 100 readings reached the two workers). The dynamic security
plugin shipped with Mosquitto (Debian: `/usr/lib/<arch>/mosquitto_dynamic_security.so`) checks a SUBSCRIBE
against the client's `subscribeLiteral` / `subscribePattern` rules, on the whole filter, `$share/<group>/`
included, and refuses it otherwise (SUBACK 0x87 "not authorized" to MQTT 5 clients, 0x80 to MQTT 3.1.1 ones).

`mqtt/acl.devices` stays the one place the rules are written; this module turns each `topic read|write|readwrite
TOPIC` line into dynsec rules (reading a topic is `subscribeLiteral` + `publishClientReceive`, writing it
`publishClientSend`), anonymous clients (lines before any `user`) into dynsec's anonymous group, and adds:

- for the ingest client's user, `$share/sensorhub/<topic>` for each topic it reads (the workers' shared
  subscriptions), and `subscribePattern #`: it may subscribe to anything, as before, and receives only what its
  `topic read` lines allow (the test suite's scripted server subscribes to `#`);
- the password of each user, hashed as the plugin does (PBKDF2-HMAC-SHA512, 12-byte salt), from the same secrets
  as the broker's password file.

Only a literal rule is given to anonymous clients and to the other users: a pattern such as `#` also matches
`$share/…` filters (measured), which would open the share group again. Everything not granted is refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sensorhub.credentials import CLIENT_USER, DEVICE_USER, HA_USER, WEB_USER
from sensorhub.errors import BrokerError
from sensorhub.protocol import SHARE_GROUP

#: The plugin's file name; Debian installs it in the multiarch library directory, which dlopen searches.
PLUGIN = "mosquitto_dynamic_security.so"
#: Where the generated rules go, in the broker's own directory (beside the password file).
CONFIG_NAME = "dynamic-security.json"
#: The dynsec group anonymous clients belong to.
ANONYMOUS = "anonymous"
#: The plugin's own default work factor (mosquitto_ctrl and mosquitto_passwd use the same).
ITERATIONS = 101
_SALT_BYTES = 12
_PLUGIN_GLOBS = ("/usr/lib/*-linux-gnu*", "/usr/lib", "/usr/lib64", "/usr/local/lib", "/opt/homebrew/lib",
                 "/usr/local/opt/mosquitto/lib")


@dataclass
class Section:
    """The rules of one ACL section: anonymous clients (`user` None) or one user."""

    user: str | None
    read: list[str] = field(default_factory=list)
    write: list[str] = field(default_factory=list)


def parse_acl(text: str) -> list[Section]:
    """The sections of an ACL file in Mosquitto's syntax (`user NAME`, `topic [read|write|readwrite] TOPIC`)."""
    sections = [Section(None)]
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split(None, 2)
        if words[0] == "user" and len(words) == 2:
            sections.append(Section(words[1]))
        elif words[0] == "topic" and len(words) == 3 and words[1] in ("read", "write", "readwrite"):
            if words[1] in ("read", "readwrite"):
                sections[-1].read.append(words[2])
            if words[1] in ("write", "readwrite"):
                sections[-1].write.append(words[2])
        elif words[0] == "topic" and len(words) == 2:
            sections[-1].read.append(words[1])
            sections[-1].write.append(words[1])
        else:
            raise BrokerError(f"line {number} of the ACL file is not understood by sensorhub: {line!r}")
    return sections


def _acl(kind: str, topic: str) -> dict[str, Any]:
    return {"acltype": kind, "topic": topic, "priority": 0, "allow": True}


def _rules(section: Section) -> list[dict[str, Any]]:
    rules = [_acl("publishClientSend", topic) for topic in section.write]
    for topic in section.read:
        rules += [_acl(_subscribe(topic), topic), _acl("publishClientReceive", topic)]
    if section.user == CLIENT_USER:
        # The workers' share group, theirs alone; and, as before, any subscription (delivery still follows
        # the `topic read` lines above: publishClientReceive is denied by default).
        rules += [_acl("subscribeLiteral", f"$share/{SHARE_GROUP}/{topic}") for topic in section.read]
        rules.append(_acl("subscribePattern", "#"))
    return rules


def _subscribe(topic: str) -> str:
    """The subscribe rule of a `topic read` line: literal, or a pattern for a filter with wildcards below a fixed
    first level (`sensorhub/replies/#`). A pattern starting with a wildcard would match `$share/…` filters too."""
    if "+" not in topic and "#" not in topic:
        return "subscribeLiteral"
    if topic.split("/", 1)[0] in ("+", "#"):
        raise BrokerError(f"the ACL line `topic read {topic}` would let its user into the workers' share group: "
                          f"start it with a fixed level")
    return "subscribePattern"


def hash_password(password: str, salt: bytes | None = None) -> dict[str, Any]:
    """The fields dynsec stores for a client's password: PBKDF2-HMAC-SHA512 of it, base64, with salt and count."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, ITERATIONS, 64)
    return {"password": base64.b64encode(digest).decode(), "salt": base64.b64encode(salt).decode(),
            "iterations": ITERATIONS}


def build_config(acl_text: str, passwords: dict[str, str]) -> dict[str, Any]:
    """The plugin's configuration: one role per ACL section, the anonymous group, the users that have a password
    in `passwords` (a section's user without one cannot log in, as with the password file)."""
    roles: list[dict[str, Any]] = []
    clients: list[dict[str, Any]] = []
    for section in parse_acl(acl_text):
        rolename = ANONYMOUS if section.user is None else f"user-{section.user}"
        roles.append({"rolename": rolename, "acls": _rules(section)})
        if section.user is not None and section.user in passwords:
            clients.append({"username": section.user, **hash_password(passwords[section.user]),
                            "roles": [{"rolename": rolename, "priority": 0}]})
    return {
        "clients": clients,
        "groups": [{"groupname": ANONYMOUS, "roles": [{"rolename": ANONYMOUS, "priority": 0}]}],
        "anonymousGroup": ANONYMOUS,
        "roles": roles,
        # Unsubscribing harms nobody: allowed, as Mosquitto's own default.
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False, "subscribe": False,
                             "unsubscribe": True},
    }


def users(client: str, web: str, device: str | None, homeassistant: str | None = None) -> dict[str, str]:
    """The broker users and their passwords (the device user only with SENSORHUB_DEVICE_PASSWORD, Home
    Assistant's only with SENSORHUB_HOMEASSISTANT on our broker)."""
    found = {CLIENT_USER: client, WEB_USER: web}
    if device:
        found[DEVICE_USER] = device
    if homeassistant:
        found[HA_USER] = homeassistant
    return found


def write_config(target: Path, acl_file: Path, passwords: dict[str, str], owner: tuple[int, int] | None) -> Path:
    """Write the plugin's configuration to `target` (mode 0600, handed to `owner` when given), atomically."""
    document = json.dumps(build_config(acl_file.read_text(), passwords), indent=1) + "\n"
    temporary = target.with_name(f".{target.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(document)
    if owner is not None:
        os.chown(temporary, *owner)
    os.replace(temporary, target)
    return target


def find_plugin() -> Path | None:
    """The dynamic security plugin's file, or None when this Mosquitto has none (built without it)."""
    for pattern in _PLUGIN_GLOBS:
        for directory in sorted(Path("/").glob(pattern.lstrip("/"))):
            if (directory / PLUGIN).is_file():
                return directory / PLUGIN
    return None


def found_by_name(plugin: Path) -> bool:
    """Whether mosquitto loads `plugin` from its bare name (as mqtt/mosquitto.conf names it): the dynamic loader
    searches these directories by default (/usr/lib/<arch> on Debian through ld.so.conf)."""
    parent = plugin.parent
    return parent in (Path("/usr/lib"), Path("/usr/lib64"), Path("/usr/local/lib")) or parent.parent == Path("/usr/lib")
