"""Mosquitto with the project's configuration: starts, accepts TCP and WebSockets clients, clear errors."""

from __future__ import annotations

import base64
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from bench import wsflood
from sensorhub import broker as broker_module
from sensorhub import dynsec, reserve
from sensorhub.broker import BASE_CONFIG, DEVICE_ACL, Broker, find_mosquitto, render_config, speaks_notify
from sensorhub.config import Settings
from sensorhub.errors import BrokerError
from sensorhub.ingest.service import ha_subscriptions, subscriptions
from sensorhub.mqttclient import stop_loop
from sensorhub.ports import LOOPBACK_CEILING, LOOPBACK_FLOOR, PortError, ephemeral_range, loopback_port
from sensorhub.protocol import LIVE_PAYLOAD_MAX, LIVE_TOPIC, MAX_PACKET
from tests.support import connects, free_port, log_in_as_server, wait_for

pytestmark = pytest.mark.integration


def connect(port: int, transport: str = "tcp", client_id: str = "", login: Settings | None = None) -> mqtt.Client:
    """A connected client: anonymous (a board), or the ingest client's broker user with `login`."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, transport=transport,
                         protocol=mqtt.MQTTv5)
    if login is not None:
        log_in_as_server(client, login)
    client.connect("127.0.0.1", port, keepalive=5)
    client.loop_start()
    wait_for(client.is_connected, 5, what=f"a {transport} connection on port {port}")
    return client


def subscribe(client: mqtt.Client, topic: str, qos: int = 0) -> None:
    """Subscribe and wait for the broker's SUBACK: from then on, messages published on `topic` reach us."""
    acknowledged = threading.Event()
    client.on_subscribe = lambda *_args: acknowledged.set()
    client.subscribe(topic, qos=qos)
    assert acknowledged.wait(5), f"no SUBACK for {topic}"


def test_base_config_has_the_specifications_settings() -> None:
    lines = {line.strip() for line in BASE_CONFIG.read_text().splitlines() if line and not line.startswith("#")}
    for expected in ("log_dest file mqtt/mosquitto.log", "log_dest stderr", "log_timestamp true",
                     "connection_messages true", "max_keepalive 12", "max_packet_size 200",
                     "persistence true", "persistence_location var/mosquitto/", "listener 1883", "listener 9001",
                     "protocol websockets",
                     "allow_anonymous true", "max_connections 20"):
        assert expected in lines


def test_debians_mosquitto_says_when_it_is_ready() -> None:
    """Broker.start waits for its READY=1 (the log line only with builds without libsystemd)."""
    assert speaks_notify(find_mosquitto())


def test_render_config_overrides_ports_log_and_limit(tmp_path: Path) -> None:
    settings = Settings().replace(mqtt_port=2883, mqtt_ws_port=3001, broker_max_connections=-1)
    text = render_config(settings, tmp_path / "b.log")
    assert "listener 2883" in text and "listener 3001" in text
    assert "listener 1883" not in text and "listener 9001" not in text
    assert text.count("max_connections -1") == 2
    assert f"log_dest file {tmp_path / 'b.log'}" in text
    assert "max_packet_size 200" in text


def test_render_config_gives_the_tls_twins_the_same_rules_and_can_close_anonymous_access(tmp_path: Path) -> None:
    cert, key, passwd = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "passwd"
    settings = Settings().replace(mqtt_tls_port=8884, mqtt_wss_port=9444, device_password="long enough")
    plugin = tmp_path / "mosquitto_dynamic_security.so"
    text = render_config(settings, tmp_path / "b.log", passwd=passwd, tls=(cert, key), plugin=plugin)
    blocks = {block.split("\n", 1)[0]: block for block in text.split("\nlistener ")[1:]}
    assert set(blocks) == {"1883", "9001", "8884", "9444"}
    for plain, secure in (("1883", "8884"), ("9001", "9444")):
        rules = [line for line in blocks[plain].splitlines()[1:] if line and not line.startswith("#")]
        assert all(rule in blocks[secure] for rule in rules)
        assert f"certfile {cert}" in blocks[secure] and f"keyfile {key}" in blocks[secure]
    assert "allow_anonymous false" in blocks["1883"] and "allow_anonymous false" in blocks["8884"]
    assert "allow_anonymous true" in blocks["9001"]  # browsers stay anonymous, and read-only
    for device_port in ("1883", "8884"):
        assert f"plugin {plugin}" in blocks[device_port]
        assert f"plugin_opt_config_file {tmp_path / 'dynamic-security.json'}" in blocks[device_port]
        assert "acl_file" not in blocks[device_port] and "password_file" not in blocks[device_port]
    assert f"acl_file {BASE_CONFIG.parent / 'acl.browsers'}" in blocks["9444"]
    assert "plugin" not in blocks["9001"] and "plugin" not in blocks["9444"]  # browsers' rules unchanged


def test_the_dynamic_security_rules_give_the_share_group_to_the_workers_user_only() -> None:
    """Compiled from mqtt/acl.devices: anonymous clients and the other users get literal rules for their own topics
    only (a pattern would match `$share/…` filters too); the workers' user gets `$share/sensorhub/<topic>`."""
    config = dynsec.build_config(DEVICE_ACL.read_text(), dynsec.users("client secret", "web secret", None))
    rules = {role["rolename"]: role["acls"] for role in config["roles"]}
    assert config["anonymousGroup"] == "anonymous" and not any(config["defaultACLAccess"][kind] for kind in
                                                             ("publishClientSend", "publishClientReceive", "subscribe"))
    for role in ("anonymous", "user-device", "user-sensorhub-web", "user-homeassistant"):
        for rule in rules[role]:  # a pattern starting with a wildcard would match `$share/…` filters too
            assert not rule["topic"].startswith(("$", "+", "#")), rule
    assert [rule["topic"] for rule in rules["user-sensorhub-web"] if rule["acltype"] == "subscribePattern"] == [
        "sensorhub/replies/#"]  # its own replies, under a fixed first level
    with pytest.raises(BrokerError, match="share group"):
        dynsec.build_config("user sensorhub-web\ntopic read +/replies/#\n", {})
    assert {rule["topic"] for rule in rules["anonymous"] if rule["acltype"] == "subscribeLiteral"} == {
        "state/nameAssign", "led/command"}
    shared = {rule["topic"] for rule in rules["user-sensorhub"]
              if rule["acltype"] == "subscribeLiteral" and rule["topic"].startswith("$share/")}
    # Exactly what the workers subscribe to (Home Assistant's birth and commands with SENSORHUB_HOMEASSISTANT).
    assert shared == {topic for topic, _qos in [*subscriptions(1), *ha_subscriptions(1)]}
    users = {client["username"]: client for client in config["clients"]}
    assert set(users) == {"sensorhub", "sensorhub-web"}  # `device` only with SENSORHUB_DEVICE_PASSWORD
    salt = base64.b64decode(users["sensorhub"]["salt"])
    assert len(salt) == 12 and users["sensorhub"]["password"] == dynsec.hash_password("client secret", salt)["password"]


def test_without_the_dynamic_security_plugin_the_device_port_falls_back_to_the_acl_file(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    text = render_config(Settings(), tmp_path / "b.log", passwd=passwd, plugin=None)
    device = text.split("\nlistener ")[1]
    assert f"password_file {passwd}" in device and f"acl_file {BASE_CONFIG.parent / 'acl.devices'}" in device
    assert not [line for line in device.splitlines() if line.startswith("plugin")]


def test_every_listener_loads_the_plugin_reserving_the_ingest_client_s_ids(tmp_path: Path) -> None:
    built = tmp_path / "sensorhub_reserve.so"
    text = render_config(Settings().replace(tls_cert="c.pem", tls_key="k.pem"), tmp_path / "b.log",
                         passwd=tmp_path / "passwd", tls=(tmp_path / "c.pem", tmp_path / "k.pem"),
                         plugin=tmp_path / dynsec.PLUGIN, reserved_ids=built)
    listeners = text.split("\nlistener ")[1:]
    assert len(listeners) == 4  # TCP, TLS, WebSockets, secure WebSockets
    for listener in listeners:
        assert f"plugin {built}\nplugin_opt_reserve1 sensorhub-ingest- sensorhub\n" in listener
    # Without it (no C compiler), the lines are left out rather than make the broker fail to start.
    without = render_config(Settings(), tmp_path / "b.log", plugin=None)
    assert not [line for line in without.splitlines() if "reserve" in line and not line.startswith("#")]


def test_the_plugin_is_compiled_once_and_copied_to_each_broker_directory(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "one").mkdir()
    first = reserve.build(tmp_path / "one")
    assert first is not None and first.parent.name == "one"
    kept = list((tmp_path / "cache" / "sensorhub").iterdir())
    assert [path.suffix for path in kept] == [".so"] and kept[0].read_bytes() == first.read_bytes()
    # Another directory gets a copy, compiler or not; the stamp says which source and headers it was built from.
    monkeypatch.setattr(reserve, "find_compiler", lambda: None)
    (tmp_path / "two").mkdir()
    second = reserve.build(tmp_path / "two")
    assert second is not None and second.read_bytes() == first.read_bytes()
    assert (tmp_path / "two" / f"{reserve.NAME}.sha256").read_text() == (tmp_path / "one" / f"{reserve.NAME}.sha256"
                                                                          ).read_text()
    # A changed source is built again: without a compiler, no plugin, and the warning says what is lost.
    changed = tmp_path / "changed.c"
    changed.write_text(reserve.SOURCE.read_text() + "\n/* changed */\n")
    monkeypatch.setattr(reserve, "SOURCE", changed)
    with caplog.at_level(logging.WARNING, logger="sensorhub.reserve"):
        assert reserve.build(tmp_path / "two") is None
    assert "no C compiler (sudo apt-get install gcc mosquitto-dev libmosquitto-dev)" in caplog.text
    assert "join storm is quadratic" in caplog.text


def test_without_a_usable_cache_the_plugin_is_built_for_its_directory(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A service's home may be hidden or read-only (ProtectHome, ProtectSystem), or missing: the broker still gets
    its plugin."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "cache"))
    built = reserve.build(tmp_path)
    assert built is not None and built.stat().st_size > 1000
    (tmp_path / reserve.NAME).unlink()

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(reserve, "cache_directory", no_home)
    assert reserve.build(tmp_path) == tmp_path / reserve.NAME


def test_a_plugin_that_does_not_compile_says_why_and_the_broker_goes_without(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    broken = tmp_path / "broken.c"
    broken.write_text("int broken( {\n")
    monkeypatch.setattr(reserve, "SOURCE", broken)
    with caplog.at_level(logging.WARNING, logger="sensorhub.reserve"):
        assert reserve.build(tmp_path) is None
    assert "could not build the broker plugin broken.c (" in caplog.text and "error" in caplog.text
    assert not (tmp_path / reserve.NAME).exists() and not list(tmp_path.glob(".*.tmp"))
    assert not (tmp_path / "cache" / "sensorhub").exists()


def test_tcp_and_websocket_clients_connect_and_exchange(broker: Broker, settings: Settings) -> None:
    received: list[bytes] = []
    ws = connect(settings.mqtt_ws_port, transport="websockets")
    ws.on_message = lambda _c, _u, msg: received.append(msg.payload)
    subscribe(ws, "state/join", qos=2)
    pub = shutil.which("mosquitto_pub")
    assert pub, "mosquitto-clients is not installed"
    subprocess.run([pub, "-p", str(settings.mqtt_port), "-t", "state/join", "-q", "2", "-m",
                    "61:EC:ED:3B:25:B1"], check=True, timeout=10)
    wait_for(lambda: received, 5, what="the message over WebSockets")
    assert received == [b"61:EC:ED:3B:25:B1"]
    stop_loop(ws)
    ws.disconnect()
    log = Path(settings.broker_log).read_text()
    assert "New client connected" in log


def test_mosquitto_sub_connects(broker: Broker, settings: Settings) -> None:
    sub = shutil.which("mosquitto_sub")
    assert sub, "mosquitto-clients is not installed"
    result = subprocess.run([sub, "-p", str(settings.mqtt_port), "-t", "state/nameAssign", "-W", "1"],
                            capture_output=True, text=True, timeout=10, check=False)
    assert "Timed out" in result.stderr  # connected, then waited 1 s for nothing: not "Connection refused"
    # An anonymous client may subscribe to what a board reads, nothing else (the dynamic security plugin).
    result = subprocess.run([sub, "-p", str(settings.mqtt_port), "-t", "#", "-W", "1"],
                            capture_output=True, text=True, timeout=10, check=False)
    assert "All subscription requests were denied" in result.stderr


def test_packet_size_limit_is_enforced(broker: Broker, settings: Settings) -> None:
    received: list[bytes] = []
    sub = connect(settings.mqtt_port, login=settings)
    sub.on_message = lambda _c, _u, msg: received.append(msg.payload)
    subscribe(sub, "photoresistor/status")
    oversize = connect(settings.mqtt_port)
    oversize.publish("photoresistor/status", b"x" * 300)
    wait_for(lambda: "disconnected due to oversize packet" in Path(settings.broker_log).read_text(), 5)
    small = connect(settings.mqtt_port)
    small.publish("photoresistor/status", b"small")
    wait_for(lambda: received, 5)
    assert received == [b"small"]
    for client in (sub, oversize, small):
        stop_loop(client)
        client.disconnect()


def test_the_live_feeds_longest_payload_is_the_longest_the_broker_takes(broker: Broker, settings: Settings) -> None:
    """LIVE_PAYLOAD_MAX, computed from `max_packet_size`, goes through (the ingest client publishes payloads up to
    it); a longer packet gets its sender disconnected. (Mosquitto 2.0.11 leaves the remaining length's bytes
    out of its count: up to 182 bytes pass. The budget keeps to the packet's full size.)"""
    assert f"max_packet_size {MAX_PACKET}" in BASE_CONFIG.read_text()
    received: list[bytes] = []
    page = connect(settings.mqtt_ws_port, transport="websockets")
    page.on_message = lambda _c, _u, msg: received.append(msg.payload)
    subscribe(page, LIVE_TOPIC)
    server = connect(settings.mqtt_port, login=settings)
    server.reconnect_delay_set(0.05, 0.05)  # type: ignore[arg-type]  # hung up on below: stopping it takes no second
    longest = b"7" * LIVE_PAYLOAD_MAX
    server.publish(LIVE_TOPIC, longest).wait_for_publish(5)
    wait_for(lambda: received, 5, what="the longest live payload over WebSockets")
    assert received == [longest]
    log = Path(settings.broker_log)
    assert "oversize" not in log.read_text()
    server.publish(LIVE_TOPIC, b"7" * MAX_PACKET)
    wait_for(lambda: "disconnected due to oversize packet" in log.read_text(), 5, what="the oversize packet refused")
    # A sentinel published after the refusal reaches the page after anything the oversize packet could have caused.
    later = connect(settings.mqtt_port, login=settings)
    later.publish(LIVE_TOPIC, b"sentinel").wait_for_publish(5)
    wait_for(lambda: received[-1:] == [b"sentinel"], 5, what="the sentinel over WebSockets")
    assert received == [longest, b"sentinel"]
    for client in (page, server, later):
        client.disconnect()  # first: it wakes the network loop, which stop_loop then joins at once
        stop_loop(client)


def test_an_oversized_packet_over_websockets_is_refused_before_the_broker_buffers_it(broker: Broker,
                                                                                     settings: Settings) -> None:
    """Mosquitto 2.0.11 buffers a whole WebSockets packet whatever max_packet_size says: one anonymous client
    announcing 100 MiB and 4 more sending half of theirs made it hold about 200 MiB (bench.wsflood). The guard in
    front of the WebSockets port closes each one at its packet's header; the broker goes on serving."""
    assert broker.process is not None
    before = wsflood.rss(broker.process.pid)
    result = wsflood.flood(settings.mqtt_ws_port, broker.process.pid, mib=100, unfinished=4)
    growth = (float(str(result["after_unfinished_mib"])) * wsflood.MIB - before) / wsflood.MIB
    assert growth < 50, f"the broker grew by {growth:.0f} MiB: {result}"
    assert float(str(result["sent_mib"])) < 50, "the oversized packet was taken in"
    assert result["serves"]
    # Pages still follow the live feed over WebSockets, and boards connect over TCP.
    received: list[bytes] = []
    page = connect(settings.mqtt_ws_port, transport="websockets")
    page.on_message = lambda _c, _u, msg: received.append(msg.payload)
    subscribe(page, LIVE_TOPIC)
    server = connect(settings.mqtt_port, login=settings)
    server.publish(LIVE_TOPIC, b"7;p;42").wait_for_publish(5)
    wait_for(lambda: received == [b"7;p;42"], 5, what="the live feed over WebSockets after the flood")
    for client in (page, server):
        stop_loop(client)
        client.disconnect()


def test_connection_limit(settings: Settings) -> None:
    limited = settings.replace(broker_max_connections=2)
    with Broker(limited):
        first, second = connect(limited.mqtt_port), connect(limited.mqtt_port)
        third = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        connacks: list[object] = []
        closed = threading.Event()
        third.on_connect = lambda *args: connacks.append(args)
        third.on_disconnect = lambda *_args: closed.set()
        third.connect("127.0.0.1", limited.mqtt_port, keepalive=5)
        third.loop_start()
        assert closed.wait(5), "the third connection was neither accepted nor closed"
        stop_loop(third)
        assert connacks == [] and not third.is_connected()
        wait_for(lambda: "denied: max_connections exceeded" in Path(limited.broker_log).read_text(), 5)
        # The limit is the reason: once a place is free, another client gets in.
        first.disconnect()
        stop_loop(first)
        fourth = wait_for(lambda: _try_connect(limited.mqtt_port), 5, what="a connection once a place is free")
        for client in (second, fourth):
            stop_loop(client)
            client.disconnect()


def test_missing_mosquitto_says_how_to_install(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setattr(broker_module, "_SEARCH_PATH", str(tmp_path))
    with pytest.raises(BrokerError, match=r"not installed.*apt-get install mosquitto"):
        Broker(settings).start()


def test_busy_port_names_the_port_and_the_setting(settings: Settings) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", settings.mqtt_port))
        squatter.listen()
        with pytest.raises(PortError, match=f"port {settings.mqtt_port} .*SENSORHUB_MQTT_PORT"):
            Broker(settings).start()
    with socket.socket() as squatter:
        squatter.bind(("0.0.0.0", settings.mqtt_ws_port))
        squatter.listen()
        with pytest.raises(PortError, match=f"port {settings.mqtt_ws_port} .*SENSORHUB_MQTT_WS_PORT"):
            Broker(settings).start()


def test_a_guard_s_loopback_port_is_never_one_the_tests_chose_for_a_service() -> None:
    """A broker draws its guard's port at random; a test or a benchmark chooses its services' ports before starting
    them: from two ranges, so the draw cannot take a port chosen and not yet bound (a benchmark's broker met its
    port in use so, with 6 test workers)."""
    low = ephemeral_range()[0]
    drawn = {loopback_port() for _ in range(200)}
    chosen = {free_port() for _ in range(200)}
    assert all(LOOPBACK_FLOOR <= port < LOOPBACK_CEILING for port in drawn), sorted(drawn)[-3:]
    assert all(LOOPBACK_CEILING <= port < low for port in chosen), sorted(chosen)[:3]


def test_a_loopback_port_taken_behind_the_guard_is_replaced(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    # Another program's connection can take the loopback port between its choice and mosquitto's bind.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        choices = iter([taken, free_port()])
        monkeypatch.setattr(broker_module, "loopback_port", lambda: next(choices))
        with caplog.at_level(logging.INFO, logger="sensorhub.broker"), Broker(settings) as running:
            assert running.ws_upstream != taken
            assert connects(settings.mqtt_ws_port, transport="websockets")
        assert f"loopback port {taken} behind the WebSockets guard was taken" in caplog.text


def test_a_busy_port_after_the_check_is_not_mistaken_for_the_loopback_one(settings: Settings,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # A public port taken after the check (which passed) is the user's problem: said, not retried.
    monkeypatch.setattr(Broker, "_check_ports", lambda self: find_mosquitto())
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("0.0.0.0", settings.mqtt_port))
        squatter.listen()
        with pytest.raises(BrokerError, match="a port is already in use"):
            Broker(settings).start()


def test_the_broker_log_is_its_owners_only_even_when_it_existed(settings: Settings) -> None:
    # It shows every client id, the ingest client's too (docs/security.md).
    log = Path(settings.broker_log)
    log.write_text("an older log\n")
    os.chmod(log, 0o644)
    with Broker(settings):
        assert log.stat().st_mode & 0o777 == 0o600
    assert log.read_text().startswith("an older log\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root makes mosquitto drop privileges")
def test_as_root_the_log_file_is_handed_to_the_mosquitto_user(settings: Settings, tmp_path: Path) -> None:
    log = tmp_path / "root-owned" / "mosquitto.log"
    log.parent.mkdir()
    log.write_text("")
    os.chmod(tmp_path, 0o755)
    with Broker(settings.replace(broker_log=str(log))):
        client = connect(settings.mqtt_port)
        stop_loop(client)
        client.disconnect()
    assert "mosquitto version" in log.read_text()


def test_cli_broker_runs_in_the_foreground_and_stops_on_sigint(tmp_path: Path) -> None:
    port, ws_port = free_port(), free_port()
    env = {**os.environ, "SENSORHUB_MQTT_PORT": str(port), "SENSORHUB_MQTT_WS_PORT": str(ws_port),
           "SENSORHUB_BROKER_LOG": str(tmp_path / "b.log"), "SENSORHUB_STATE_DIR": str(tmp_path / "var")}
    output = tmp_path / "stderr.txt"
    with output.open("w") as stderr:  # a file, not a pipe nobody reads while it runs
        # Started with SIGINT ignored, as a shell starts a background job (and as the full suite's workers once
        # did, by something an earlier module ran): Python then leaves SIGINT ignored unless the program sets it.
        process = subprocess.Popen([sys.executable, "-m", "sensorhub", "broker"], stderr=stderr, text=True,
                                   env={**env, "PYTHONFAULTHANDLER": "1"},
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        client = wait_for(lambda: _try_connect(port), 10, what="the broker started by the CLI")
        stop_loop(client)
        client.disconnect()
        process.send_signal(signal.SIGINT)
        try:
            status = process.wait(10)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)  # faulthandler writes where each thread stands
            process.wait(5)
            said = output.read_text()[-6000:]
            raise AssertionError(f"`sensorhub broker` still ran 10 s after SIGINT:\n{said}") from None
        assert status == 0, output.read_text()[-3000:]
    finally:
        process.kill()
        process.wait()
    assert not _try_connect(port), "mosquitto outlived `sensorhub broker`"


def test_cli_reports_a_busy_port_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("0.0.0.0", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = {**os.environ, "SENSORHUB_MQTT_PORT": str(port), "SENSORHUB_MQTT_WS_PORT": str(free_port()),
               "SENSORHUB_BROKER_LOG": str(tmp_path / "b.log"), "SENSORHUB_STATE_DIR": str(tmp_path / "var")}
        result = subprocess.run([sys.executable, "-m", "sensorhub", "broker"], env=env, capture_output=True,
                                text=True, timeout=20, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"sensorhub: error: port {port} (MQTT)")


def test_a_start_interrupted_once_mosquitto_listens_leaves_no_mosquitto_behind(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C (or SIGTERM, a KeyboardInterrupt in `sensorhub broker`) between mosquitto's READY and the guard's start:
    the full suite's SIGINT test sent it there once, and mosquitto outlived `sensorhub broker`."""
    broker = Broker(settings)

    def interrupted() -> None:
        assert _try_connect(settings.mqtt_port) is not None  # mosquitto already listens
        raise KeyboardInterrupt

    monkeypatch.setattr(broker, "_start_guard", interrupted)
    with pytest.raises(KeyboardInterrupt), broker:
        pytest.fail("the block ran")
    assert broker.process is not None and broker.process.poll() is not None, "mosquitto still runs"
    assert _try_connect(settings.mqtt_port) is None


def _try_connect(port: int) -> mqtt.Client | None:
    try:
        return connect(port)
    except (OSError, AssertionError):
        return None


def test_without_the_plugin_the_broker_starts_on_the_acl_file_and_says_the_share_group_is_open(
        settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(dynsec, "find_plugin", lambda: None)
    with caplog.at_level(logging.WARNING, logger="sensorhub.broker"), Broker(settings):
        assert "dynamic security plugin" in caplog.text and "share group" in caplog.text
        anonymous = connect(settings.mqtt_port)
        granted: list[list[object]] = []
        anonymous.on_subscribe = lambda _c, _u, _mid, codes, _p: granted.append(codes)
        anonymous.subscribe("$share/sensorhub/photoresistor/status", qos=1)
        wait_for(lambda: granted, 5, what="the SUBACK")
        assert not granted[0][0].is_failure  # type: ignore[attr-defined]  # what the plugin closes
        stop_loop(anonymous)
        anonymous.disconnect()


@pytest.mark.parametrize("command", ["broker", "run"])
def test_a_connection_limit_above_the_open_file_limit_is_refused_in_one_line(tmp_path: Path, command: str) -> None:
    env = {**os.environ, "SENSORHUB_MQTT_PORT": str(free_port()), "SENSORHUB_MQTT_WS_PORT": str(free_port()),
           "SENSORHUB_WEB_PORT": str(free_port()), "SENSORHUB_BROKER_MAX_CONNECTIONS": "1000",
           "SENSORHUB_BROKER_LOG": str(tmp_path / "b.log"), "SENSORHUB_STATE_DIR": str(tmp_path / "var"),
           "SENSORHUB_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "SENSORHUB_FIFO": str(tmp_path / "fifo")}
    # `ulimit -n` sets the soft and the hard limit: the program cannot raise it back.
    result = subprocess.run(["sh", "-c", f'ulimit -n 256 && exec "$0" -m sensorhub {command}', sys.executable],
                            env=env, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("sensorhub: error: SENSORHUB_BROKER_MAX_CONNECTIONS=1000 needs 2050 open files but the "
                           "broker may open 256"), line
    assert "`ulimit -n 2050`" in line and "LimitNOFILE=2050" in line
    assert not (tmp_path / "b.log").exists() or "running" not in (tmp_path / "b.log").read_text()


def test_the_open_file_check_raises_the_soft_limit_when_the_hard_one_allows(monkeypatch: pytest.MonkeyPatch) -> None:
    import resource

    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (1024, 524288))
    monkeypatch.setattr(resource, "setrlimit", lambda _which, limits: calls.append(limits))
    settings = Settings().replace(broker_max_connections=100_000)
    assert broker_module.check_open_files(settings) == 200_050
    assert calls == [(200_050, 524288)]
    assert broker_module.open_files_needed(settings.replace(broker_max_connections=-1)) is None
    assert broker_module.open_files_needed(Settings()) == 90


class _LateJoiner(mqtt.Client):
    """A client whose `loop_stop` loses paho's race every time: its network thread, ending after a DISCONNECT,
    waits in `on_disconnect` until `loop_stop` has checked the thread's handle, then finishes and clears that
    handle before `loop_stop` joins it."""

    def __init__(self) -> None:
        self.__checked = threading.Event()
        super().__init__(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.on_disconnect = lambda *_args: self.__checked.wait(5)

    @property
    def _thread_terminate(self) -> bool:
        return self.__terminate

    @_thread_terminate.setter
    def _thread_terminate(self, value: bool) -> None:
        self.__terminate = value
        thread = getattr(self, "_thread", None)
        if value and thread is not None and thread is not threading.current_thread():
            self.__checked.set()  # loop_stop has checked the handle: let the network thread end...
            thread.join(5)  # ...and clear it


@pytest.mark.parametrize("stop", ["paho", "sensorhub"])
def test_stopping_a_disconnected_client_survives_paho_thread_race(broker: Broker, settings: Settings,
                                                                   stop: str) -> None:
    """paho 2.1's `loop_stop` can find the network thread's handle cleared between its check and its join
    (eclipse-paho/paho.mqtt.python#872): a benchmark's publisher died of it in CI. `stop_loop` is the way out."""
    client = _LateJoiner()
    client.connect("127.0.0.1", settings.mqtt_port, keepalive=5)
    client.loop_start()
    wait_for(client.is_connected, 5, what="a connection")
    client.disconnect()
    if stop == "paho":  # the race, as paho has it
        with pytest.raises(AttributeError, match="join"):
            client.loop_stop()  # paho's own, on purpose
    else:
        stop_loop(client)
    assert client._thread is None
    assert not client.is_connected()


def test_every_client_stops_its_loop_through_stop_loop() -> None:
    """No sensorhub, test or benchmark code calls paho's `loop_stop` itself (the race above)."""
    root = Path(__file__).resolve().parent.parent
    calls = [f"{path.relative_to(root)}:{number}"
             for folder in ("src", "bench", "tests") for path in sorted((root / folder).rglob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if ".loop_stop()" in line and "on purpose" not in line and path.name != "mqttclient.py"]
    assert calls == []
