"""`python -m bench.sharegroup [--intruders N] [--messages M]`: who may join the ingest workers' share group, for each
rule set the device listener could have (docs/security.md, "The ingest workers' share group").

For each rule set, a bare Mosquitto on a free port: two clients of user `sensorhub` subscribe to
`$share/sensorhub/photoresistor/status` (the workers), N anonymous clients (MQTT 5, the last one MQTT 3.1.1) to the
same filter, an anonymous board publishes M QoS 1 readings. Printed: the intruders' SUBACK reason codes, how many
readings the two workers received, how many the intruders did.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from bench.ports import free_port
from sensorhub import dynsec
from sensorhub.broker import DEVICE_ACL, find_mosquitto
from sensorhub.credentials import CLIENT_USER, find_mosquitto_passwd
from sensorhub.mqttclient import stop_loop

TOPIC = "photoresistor/status"
SHARED = f"$share/sensorhub/{TOPIC}"
PASSWORD = "bench-sharegroup-password"
RULE_SETS = ("acl_file", "plugin", "plugin+acl_file", "plugin, anonymous pattern #")


class Client:
    """A connected paho client counting what it receives and keeping each SUBACK's reason codes."""

    def __init__(self, port: int, login: bool = False, protocol: int = mqtt.MQTTv5) -> None:
        self.received = 0
        self.subacks: dict[int, list[str]] = {}
        self.mqtt = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)  # type: ignore[arg-type]
        if login:
            self.mqtt.username_pw_set(CLIENT_USER, PASSWORD)
        connected = threading.Event()
        self.mqtt.on_connect = lambda *_args: connected.set()
        self.mqtt.on_message = self._on_message
        self.mqtt.on_subscribe = self._on_subscribe
        self.mqtt.connect("127.0.0.1", port)
        self.mqtt.loop_start()
        if not connected.wait(5):
            raise RuntimeError("no CONNACK")

    def _on_message(self, *_args: Any) -> None:
        self.received += 1

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: list[Any], _p: Any) -> None:
        self.subacks[mid] = [str(code) for code in codes]

    def subscribe(self, topic: str) -> list[str]:
        """Subscribe at QoS 1 and return the SUBACK's reason codes."""
        mid = self.mqtt.subscribe(topic, options=SubscribeOptions(qos=1))[1]
        assert mid is not None
        deadline = time.monotonic() + 5
        while mid not in self.subacks and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.subacks.get(mid, ["no SUBACK"])

    def close(self) -> None:
        self.mqtt.disconnect()
        stop_loop(self.mqtt)


def configuration(rules: str, directory: Path, port: int) -> str:
    """A minimal broker configuration with one of RULE_SETS on its only listener."""
    passwd = directory / "passwd"
    passwd.write_text(f"{CLIENT_USER}:{PASSWORD}\n")
    subprocess.run([find_mosquitto_passwd(), "-U", str(passwd)], check=True)
    plugin = dynsec.find_plugin()
    if plugin is None and rules != "acl_file":
        raise SystemExit("Mosquitto's dynamic security plugin is not installed here")
    config = dynsec.build_config(DEVICE_ACL.read_text(), {CLIENT_USER: PASSWORD})
    if rules == "plugin, anonymous pattern #":
        for role in config["roles"]:
            if role["rolename"] == dynsec.ANONYMOUS:
                role["acls"].append({"acltype": "subscribePattern", "topic": "#", "priority": 0, "allow": True})
    (directory / "dynsec.json").write_text(json.dumps(config))
    files = [f"password_file {passwd}", f"acl_file {DEVICE_ACL}"]
    loaded = [f"plugin {plugin}", f"plugin_opt_config_file {directory / 'dynsec.json'}"]
    chosen = {"acl_file": files, "plugin": loaded, "plugin+acl_file": loaded + files,
              "plugin, anonymous pattern #": loaded}[rules]
    return "\n".join(["user root", "log_dest none", "persistence false", "per_listener_settings true",
                      f"listener {port} 127.0.0.1", "allow_anonymous true", *chosen]) + "\n"


def measure(rules: str, intruders: int, messages: int) -> str:
    """One line: the intruders' SUBACKs and where the readings went, with `rules` on the listener."""
    with tempfile.TemporaryDirectory(prefix="sensorhub-sharegroup-") as name:
        directory = Path(name)
        port = free_port()
        (directory / "mosquitto.conf").write_text(configuration(rules, directory, port))
        broker = subprocess.Popen([find_mosquitto(), "-c", str(directory / "mosquitto.conf")],
                                  stderr=subprocess.DEVNULL)
        clients: list[Client] = []
        try:
            time.sleep(0.5)
            workers = [Client(port, login=True) for _ in range(2)]
            outsiders = [Client(port, protocol=mqtt.MQTTv311 if n == intruders - 1 else mqtt.MQTTv5)
                         for n in range(intruders)]
            board = Client(port)
            clients = [*workers, *outsiders, board]
            for worker in workers:
                assert worker.subscribe(SHARED) == ["Granted QoS 1"]
            codes = sorted({code for outsider in outsiders for code in outsider.subscribe(SHARED)})
            for number in range(messages):
                board.mqtt.publish(TOPIC, f"capteur01;1.000000;{number % 101}", qos=1).wait_for_publish(5)
            time.sleep(1)
            return (f"{rules:28} intruders' SUBACKs {codes}; the workers received "
                    f"{sum(worker.received for worker in workers)} of {messages}, the intruders "
                    f"{sum(outsider.received for outsider in outsiders)}")
        finally:
            for client in clients:
                client.close()
            broker.terminate()
            broker.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--intruders", type=int, default=10)
    parser.add_argument("--messages", type=int, default=100)
    args = parser.parse_args()
    if shutil.which("mosquitto", path="/usr/sbin:/usr/bin:/usr/local/sbin") is None:
        raise SystemExit("mosquitto is not installed")
    for rules in RULE_SETS:
        print(measure(rules, args.intruders, args.messages), flush=True)


if __name__ == "__main__":
    main()
