"""Home Assistant's MQTT discovery: the ingest client speaks for the boards (their firmware cannot change).

Each board is one Home Assistant device (identified by its MAC, named with its sensorhub name) with three
entities, each announced by its own discovery config `homeassistant/<component>/sensorhub_<MAC>/config` (per-entity
discovery: every Home Assistant release since 2021 reads it, the newest ones too):

    light          the LED; Home Assistant commands it on sensorhub/ha/<device id>/led/set (ON or OFF)
    binary_sensor  the button
    sensor         the light level in %, state_class measurement

States go to topics of ours, sensorhub/ha/<device id>/{led,button,light} (ON/OFF, ON/OFF, 0-100) and
sensorhub/ha/<device id>/availability (online/offline: the board's presence), after each commit, only for the
devices a batch changed, coalesced. Our broker refuses retained messages: configs and states are published again
when Home Assistant announces itself on homeassistant/status (`online`) and when the ingest client connects, after a
small random delay (many Home Assistant or several workers do not all answer at once). A LED command from Home
Assistant becomes the same LedRequest the web page sends, for the device's current session: the writer checks
that the device is online in it, and counts and logs a refusal as it does for the page.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from sensorhub.commands import CURRENT_SESSION, LedRequest
from sensorhub.errors import PayloadError, reason
from sensorhub.ingest.sessions import Decisions, NewDevice, Rename
from sensorhub.protocol import HA_MAX_PACKET, Kind

logger = logging.getLogger(__name__)

#: Home Assistant's default discovery prefix, and the topic of its birth (`online`) and Last Will (`offline`).
DISCOVERY_PREFIX: Final = "homeassistant"
BIRTH_TOPIC: Final = f"{DISCOVERY_PREFIX}/status"
#: Our topics for Home Assistant: states, availability, commands.
ROOT: Final = "sensorhub/ha"
COMMAND_FILTER: Final = f"{ROOT}/+/led/set"
#: Configs and states are published at QoS 1 (not retained: our broker refuses retained messages).
QOS: Final = 1
#: After a birth message or our own connection, everything is published again within this many seconds.
REPUBLISH_DELAY: Final = (0.5, 3.0)
#: Home Assistant subscribes to an entity's state topics only once it has read its config (0.1 to 1 s later,
#: measured with 2024.3: it gathers subscriptions): states published with the configs are missed (nothing is
#: retained), so they are published again this many seconds after any config.
STATES_AFTER_CONFIGS: Final = 2.0
#: The entities of a board: discovery component, our state topic's last level, its name in Home Assistant.
ENTITIES: Final[tuple[tuple[str, Kind, str], ...]] = (
    ("light", Kind.LED, "LED"),
    ("binary_sensor", Kind.BUTTON, "Bouton"),
    ("sensor", Kind.LIGHT, "Lumière"),
)
_COMMAND_RE: Final = re.compile(rf"{re.escape(ROOT)}/([1-9][0-9]{{0,9}})/led/set")

Publish = Callable[[str, bytes, int], object]


@dataclass(slots=True)
class Board:
    """What Home Assistant is told of one device."""

    id: int
    mac: str
    name: str
    online: bool = False
    led: int | None = None
    button: int | None = None
    light: int | None = None


def device_key(mac: str) -> str:
    """The device's identifier in Home Assistant: stable across renames and database resets (from its MAC)."""
    return "sensorhub_" + mac.replace(":", "").lower()


def base_topic(device_id: int) -> str:
    """Where a device's states, availability and commands are (topics of ours)."""
    return f"{ROOT}/{device_id}"


def config_topic(component: str, mac: str) -> str:
    """A discovery config's topic."""
    return f"{DISCOVERY_PREFIX}/{component}/{device_key(mac)}/config"


def _json(body: dict[str, object]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def configs(board: Board) -> list[tuple[str, bytes]]:
    """The three discovery configs of a board (abbreviated keys, as Home Assistant reads them)."""
    key = device_key(board.mac)
    device = {"ids": [key], "name": board.name, "mf": "sensorhub", "mdl": "ESP32",
              "cns": [["mac", board.mac.lower()]]}
    out = []
    for component, kind, name in ENTITIES:
        body: dict[str, object] = {"~": base_topic(board.id), "name": name, "uniq_id": f"{key}_{kind.value}",
                                   "stat_t": f"~/{kind.value}", "avty_t": "~/availability", "dev": device}
        if component == "light":
            body["cmd_t"] = "~/led/set"
        elif component == "sensor":
            body |= {"unit_of_meas": "%", "stat_cla": "measurement"}
        out.append((config_topic(component, board.mac), _json(body)))
    return out


def removals(mac: str) -> list[tuple[str, bytes]]:
    """Empty configs: Home Assistant removes the entities (and the device once it has none)."""
    return [(config_topic(component, mac), b"") for component, _kind, _name in ENTITIES]


def state_payload(kind: Kind, value: int) -> bytes:
    """A reading as Home Assistant's default payloads want it: ON/OFF, or the percentage."""
    if kind is Kind.LIGHT:
        return str(value).encode()
    return b"ON" if value else b"OFF"


def states(board: Board) -> list[tuple[str, bytes]]:
    """A board's availability and known readings."""
    base = base_topic(board.id)
    out = [(f"{base}/availability", b"online" if board.online else b"offline")]
    for kind, value in ((Kind.LED, board.led), (Kind.BUTTON, board.button), (Kind.LIGHT, board.light)):
        if value is not None:
            out.append((f"{base}/{kind.value}", state_payload(kind, value)))
    return out


def parse_led_set(topic: str, payload: bytes) -> tuple[int, bool]:
    """(device id, on) of a command from Home Assistant; PayloadError if it is not one."""
    match = _COMMAND_RE.fullmatch(topic)
    if match is None:
        raise PayloadError(f"not a Home Assistant command topic: {topic[:80]!r}", "ha-topic")
    word = payload.strip().upper()
    if word not in (b"ON", b"OFF"):
        raise PayloadError(f"a Home Assistant LED command is ON or OFF, not {payload[:20]!r}", "ha-payload")
    return int(match[1]), word == b"ON"


_BOARDS = text("SELECT id, mac, name, online, last_led, last_button, last_light FROM device")


def load_boards(engine: Engine) -> dict[int, Board]:
    """Every device as the database holds it now."""
    with engine.connect() as conn:
        return {row[0]: Board(row[0], row[1], row[2], bool(row[3]), row[4], row[5], row[6])
                for row in conn.execute(_BOARDS)}


class HomeAssistant:
    """Tells Home Assistant what the writer committed; turns its LED commands into the web page's LedRequest.

    `committed` and `deleted` run in the writer thread after a commit and only note the last payload of each topic
    (a dictionary update per device and kind changed: a paho publish costs about 100 µs, which the writer does not
    pay); a thread of its own publishes what is noted, and what changed again before it got there is sent once.
    `republish` runs in a timer thread and reads the devices from the database; a lock orders it with the
    commits (a newer state is never overwritten by an older one) and keeps `boards` (what announcing a device
    again needs: its MAC and name) consistent.
    """

    def __init__(self, engine: Engine, publish: Publish, delay: tuple[float, float] = REPUBLISH_DELAY) -> None:
        self.engine = engine
        self.publish = publish
        self.delay = delay
        self.boards: dict[int, Board] = {}
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._with_configs = False
        #: The broker's Maximum Packet Size (MQTT 5 CONNACK), when it gave one: a longer message would have it
        #: disconnect us (paho does not check), so it is not sent.
        self.max_packet: int | None = None
        self._too_long_said = False
        #: Seconds between configs and their states published again (STATES_AFTER_CONFIGS).
        self.states_after = STATES_AFTER_CONFIGS
        #: How many times everything was published (tests wait for it).
        self.republished = 0
        #: What waits for the publishing thread: the last payload of each topic, in the order first noted.
        self._pending: dict[str, bytes] = {}
        self._pending_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- after each commit (the writer thread) -------------------------------------------------------------

    def committed(self, done: Decisions) -> None:
        """Publish the states of the devices this batch changed (the last value of each kind), and the configs of
        devices new or renamed."""
        announce: list[Board] = []
        changed: dict[int, list[tuple[str, bytes]]] = {}
        for presence in done.presence:
            changed.setdefault(presence.id, []).append(
                (f"{base_topic(presence.id)}/availability", b"online" if presence.online else b"offline"))
        for kind, rows in done.readings.items():
            if rows:
                last = {device_id: value for device_id, _stamp, value in rows}
                for device_id, value in last.items():
                    changed.setdefault(device_id, []).append(
                        (f"{base_topic(device_id)}/{kind.value}", state_payload(kind, value)))
        with self._lock:  # ordered with a republish: its older states never come after these
            boards = self.boards
            for change in done.changes:
                if isinstance(change, NewDevice):
                    boards[change.id] = Board(change.id, change.mac, change.name)
                    announce.append(boards[change.id])
                elif isinstance(change, Rename) and (renamed := boards.get(change.id)) is not None:
                    renamed.name = change.name
                    announce.append(renamed)
            for board in announce:
                self._send(configs(board))
            for messages in changed.values():
                self._send(messages)
        if announce:
            self.schedule(self.states_after, with_configs=False)

    def deleted(self, device_ids: Iterable[int]) -> None:
        """Devices deleted from the database: Home Assistant removes them (empty configs)."""
        with self._lock:
            gone = [board for device_id in device_ids if (board := self.boards.pop(device_id, None)) is not None]
        for board in gone:
            logger.info("Home Assistant: removing %s", board.name)
            self._send(removals(board.mac))

    # -- everything again ------------------------------------------------------------------------------

    def birth(self, payload: bytes) -> None:
        """Home Assistant's status message: when it comes online, publish everything again shortly."""
        if payload.strip() == b"online":
            self.schedule()

    def schedule(self, delay: float | None = None, *, with_configs: bool = True) -> None:
        """Publish every state, and config unless `with_configs` is False, after `delay` seconds (a small random
        delay by default); once, however often asked meanwhile."""
        with self._lock:
            self._with_configs = self._with_configs or with_configs
            if self._timer is not None or self._stopping:
                return
            self._timer = threading.Timer(random.uniform(*self.delay) if delay is None else delay, self.republish)
            self._timer.daemon = True
            self._timer.start()

    def republish(self) -> None:
        """Publish every device's configs (unless only states were asked for) and states now, as the database
        holds them (with several workers, each one's commits only reach the Home Assistant of its own batches)."""
        with self._lock:  # a commit's states wait: they are never overtaken by the older ones read here
            self._timer = None
            with_configs, self._with_configs = self._with_configs, False
            try:
                boards = load_boards(self.engine)
            except SQLAlchemyError as err:
                logger.warning("Home Assistant: cannot read the devices (%s); trying again shortly", reason(err))
                self._with_configs = self._with_configs or with_configs
                failed = True
            else:
                failed = False
                self.boards = {board.id: Board(board.id, board.mac, board.name) for board in boards.values()}
                for board in boards.values():
                    if with_configs:
                        self._send(configs(board))
                    self._send(states(board))
                self.republished += 1
        if failed:
            self.schedule()
        elif with_configs:
            logger.info("Home Assistant: announced %d device(s)", len(boards))
            self.schedule(self.states_after, with_configs=False)

    def stop(self) -> None:
        """Cancel a pending republish; stop the publishing thread."""
        with self._lock:
            self._stopping = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)

    # -- commands from Home Assistant ----------------------------------------------------------------

    @staticmethod
    def command(topic: str, payload: bytes) -> LedRequest:
        """The LedRequest of a Home Assistant command, in the device's current session when the writer decides
        (it checks the device is online in it, as for the web page); PayloadError if the command is malformed."""
        device_id, on = parse_led_set(topic, payload)
        logger.info("Home Assistant: LED %s for device %d", "on" if on else "off", device_id)
        return LedRequest(device_id, CURRENT_SESSION, on)

    def _send(self, messages: Iterable[tuple[str, bytes]]) -> None:
        """Note messages for the publishing thread (started at the first one)."""
        with self._pending_lock:
            for topic, payload in messages:
                self._pending[topic] = payload
            if self._thread is None and not self._stopping:
                self._thread = threading.Thread(target=self._run, name="ha-publisher", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait()
            self._wake.clear()
            with self._pending_lock:
                pending, self._pending = self._pending, {}
            for topic, payload in pending.items():
                self._publish_now(topic, payload)

    def _publish_now(self, topic: str, payload: bytes) -> None:
        # PUBLISH: type, remaining length (at most 4 bytes), topic length, topic, packet id, properties.
        size = 1 + 4 + 2 + len(topic.encode()) + 2 + 1 + len(payload)
        if self.max_packet is not None and size > self.max_packet:
            if not self._too_long_said:
                logger.error("Home Assistant: the broker takes packets of at most %d bytes, a discovery config "
                             "needs about 400: nothing is sent to Home Assistant. Start the broker with "
                             "SENSORHUB_HOMEASSISTANT=1 too (it then allows %d), or give Home Assistant its own "
                             "broker (SENSORHUB_HOMEASSISTANT_URL)", self.max_packet, HA_MAX_PACKET)
                self._too_long_said = True
            return
        try:
            self.publish(topic, payload, QOS)
        except Exception as err:  # what is committed stays committed whatever paho says
            logger.error("Home Assistant: could not publish %s: %s", topic, err)
