"""`python -m bench.clientids`: who can take the ingest client's client id over, for each rule Mosquitto 2.0 could
apply (docs/security.md, "The ingest client's client id").

For each variant, a bare Mosquitto on free ports with the project's device rules (dynamic security plugin, compiled
from mqtt/acl.devices) and the browsers' WebSockets listener: the "real" client logs in as `sensorhub` with id
ID (MQTT 5, persistent session), then impostors connect with ID: anonymously over TCP, anonymously over
WebSockets, and as user `sensorhub-web`. Printed: each impostor's CONNACK, whether the real client was kicked, and
whether a board with an ordinary client id (as the specification's firmware has) still connects.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.ports import free_port
from sensorhub import dynsec, reserve
from sensorhub.broker import DEVICE_ACL, PROJECT_ROOT, find_mosquitto
from sensorhub.credentials import CLIENT_USER, WEB_USER
from sensorhub.mqttclient import stop_loop

ID = "sensorhub-ingest-0123456789abcdef"
PASSWORDS = {CLIENT_USER: "bench-client-password", WEB_USER: "bench-web-password"}


class Client:
    """A paho client that records its CONNACK and its disconnections."""

    def __init__(self, port: int, client_id: str, transport: str = "tcp", user: str | None = None) -> None:
        self.connack: str | None = None
        self.disconnects = 0
        self.answered = threading.Event()
        self.mqtt = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, transport=transport,
                                protocol=mqtt.MQTTv5)
        if user is not None:
            self.mqtt.username_pw_set(user, PASSWORDS[user])
        self.mqtt.on_connect = self._on_connect
        self.mqtt.on_disconnect = self._on_disconnect
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 3600
        self.mqtt.connect("127.0.0.1", port, keepalive=5, clean_start=False, properties=properties)
        self.mqtt.loop_start()
        self.answered.wait(3)

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connack = str(reason)
        self.answered.set()

    def _on_disconnect(self, *_args: Any) -> None:
        self.disconnects += 1
        self.answered.set()

    def close(self) -> None:
        stop_loop(self.mqtt)
        self.mqtt.disconnect()


def config(directory: Path, tcp: int, ws: int, variant: str) -> str:
    plugin = dynsec.find_plugin()
    document = dynsec.build_config(DEVICE_ACL.read_text(), PASSWORDS)
    if variant == "dynsec clientid":
        for client in document["clients"]:
            if client["username"] == CLIENT_USER:
                client["clientid"] = ID
    (directory / "dynsec.json").write_text(json.dumps(document))
    reserve_lines = ""
    if variant == "sensorhub_reserve plugin":
        built = reserve.build(directory)
        reserve_lines = f"plugin {built}\nplugin_opt_reserve1 {reserve.INGEST_PREFIX} {CLIENT_USER}\n"
    prefixes = "clientid_prefixes sensorhub-\n" if variant == "clientid_prefixes sensorhub-" else ""
    return (("user root\n" if os.geteuid() == 0 else "") + f"log_dest file {directory / 'log'}\n"
            f"connection_messages true\nper_listener_settings true\n{prefixes}"
            f"listener {tcp}\nallow_anonymous true\n{reserve_lines}plugin {plugin}\n"
            f"plugin_opt_config_file {directory / 'dynsec.json'}\n"
            f"listener {ws}\nprotocol websockets\nallow_anonymous true\n{reserve_lines}"
            f"acl_file {PROJECT_ROOT / 'mqtt' / 'acl.browsers'}\n")


def run(variant: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="clientids-") as name:
        directory = Path(name)
        tcp, ws = free_port(), free_port()
        (directory / "mosquitto.conf").write_text(config(directory, tcp, ws, variant))
        process = subprocess.Popen([find_mosquitto(), "-c", str(directory / "mosquitto.conf")],
                                   stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 5
            while "running" not in ((directory / "log").read_text() if (directory / "log").exists() else ""):
                if process.poll() is not None or time.monotonic() > deadline:
                    return {"error": (directory / "log").read_text() if (directory / "log").exists() else "no log"}
                time.sleep(0.05)
            result: dict[str, object] = {}
            real = Client(tcp, ID, user=CLIENT_USER)
            result["real client"] = real.connack
            for label, port, transport, user in (("anonymous TCP", tcp, "tcp", None),
                                                 ("anonymous WebSockets", ws, "websockets", None),
                                                 (f"user {WEB_USER}", tcp, "tcp", WEB_USER)):
                kicked = real.disconnects
                impostor = Client(port, ID, transport, user)
                time.sleep(0.3)
                result[label] = f"{impostor.connack}, real client kicked: {real.disconnects > kicked}"
                stop_loop(impostor.mqtt)  # no automatic reconnect: one attempt each
                impostor.mqtt.disconnect()
                if real.disconnects > kicked:
                    real.close()
                    real = Client(tcp, ID, user=CLIENT_USER)
            board = Client(tcp, "ESP32-board-42")
            result["board with its own id"] = board.connack
            board.close()
            real.close()
            return result
        finally:
            process.terminate()
            process.wait(5)


def main() -> None:
    for variant in ("as shipped", "dynsec clientid", "clientid_prefixes sensorhub-", "sensorhub_reserve plugin"):
        print(variant, run(variant), flush=True)


if __name__ == "__main__":
    main()
