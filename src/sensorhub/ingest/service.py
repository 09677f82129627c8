"""The ingest client: paho callbacks parse and enqueue; the writer stores; the pipe or the broker's server-only
topic brings the web server's LED commands and renames, and a command from the broker is answered on its
MQTT 5 Response Topic once its batch is committed.

If the database writer dies or stops making progress, the client says so in one line and exits with
status 3 (WRITER_FAILED) without acknowledging anything more: what it had not acknowledged stays in its
session at the broker and is delivered again when the supervisor (or systemd) starts it again.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from sensorhub import credentials
from sensorhub.commands import COMMAND_TOPIC, REPLY_PREFIX, Command, Outcome, Reply, parse_command
from sensorhub.config import Settings, configured
from sensorhub.credentials import CLIENT_USER, client_password, client_secret_path
from sensorhub.db.engine import make_engine
from sensorhub.db.schema import check_schema
from sensorhub.db.space import warn_if_low
from sensorhub.errors import IngestError, PayloadError
from sensorhub.ingest.alerts import Alerts
from sensorhub.ingest.beacon import Beacon
from sensorhub.ingest.bookkeeping import History
from sensorhub.ingest.drops import Drops
from sensorhub.ingest.habroker import HaBroker
from sensorhub.ingest.homeassistant import BIRTH_TOPIC, COMMAND_FILTER, ROOT, HomeAssistant
from sensorhub.ingest.ledpipe import PipeReader
from sensorhub.ingest.limits import Limits
from sensorhub.ingest.metrics import IngestMetrics
from sensorhub.ingest.retention import Purger
from sensorhub.ingest.sessions import BrokerOutage, BrokerSessionLost, Inbound, Incoming
from sensorhub.ingest.summary import Summary
from sensorhub.ingest.watchdog import Watchdog
from sensorhub.ingest.writer import QUEUE_MAX, Writer
from sensorhub.mqttclient import REFUSED_LOGIN, no_delay, stop_loop
from sensorhub.notify.channels import make_channels
from sensorhub.notify.dispatcher import Dispatcher
from sensorhub.notify.metrics import NotifyCollector
from sensorhub.notify.mqtt import MqttChannel
from sensorhub.process import notify
from sensorhub.protocol import SERVER_SUBSCRIPTIONS, SHARE_GROUP, parse_server_message

logger = logging.getLogger(__name__)


#: How long the broker keeps our session (subscriptions and undelivered QoS 1/2 messages) after we disconnect.
SESSION_EXPIRY = 24 * 3600
#: Reconnection: the first attempt after this many seconds, then doubling up to the ceiling.
RECONNECT_MIN = 0.1
RECONNECT_MAX = 0.5
#: Out of reach for this long, the broker is taken as down (a shorter blip changes nothing on the pages).
OUTAGE_GRACE = 2.0
#: Exit status when the database writer cannot go on.
WRITER_FAILED = 3
#: How long stopping may take (the writer commits what is queued: up to 30 s) before the process leaves anyway.
STOP_DEADLINE = 45.0
#: How long the writer may show no sign of life while messages wait before the client gives up on it.
STALL_TIMEOUT = 60.0
#: A command from the broker is carried out only within its remaining message expiry plus this many seconds of
#: its arrival: the broker counts whole seconds, and its web server waits more than a second longer than the
#: expiry (commands.COMMAND_EXPIRY), so the answer still reaches it.
LATE_GRACE = 0.5


class IngestClient:
    """The long-running server-side MQTT client, usable in-process (tests) or through `run_client`."""

    def __init__(self, settings: Settings, client_id: str | None = None, *,
                 on_fatal: Callable[[int], object] | None = None, stall_timeout: float = STALL_TIMEOUT,
                 queue_max: int = QUEUE_MAX) -> None:
        self.settings = settings
        self.drops = Drops()
        self.engine = make_engine(settings.database_url)
        check_schema(self.engine)
        warn_if_low(settings.database_url, settings.low_space_mib)
        password = client_password(settings)
        # A fixed id, so that the broker keeps our session while we restart; derived from our secret, so
        # that nobody can take our connection over by connecting with it. Each worker has its own session.
        base_id = client_id or credentials.client_id(password)
        self.worker = settings.worker
        self.subscriptions = subscriptions(settings.worker)
        #: Home Assistant's discovery (SENSORHUB_HOMEASSISTANT), on our broker or on its own (`ha_broker`).
        self.homeassistant: HomeAssistant | None = None
        self.ha_broker: HaBroker | None = None
        self.ha_topics: list[tuple[str, int]] = []
        if settings.homeassistant:
            if settings.homeassistant_url:
                self.ha_broker = HaBroker(settings, f"{base_id}-ha{self.worker}", self._on_ha_message)
                publish = self.ha_broker.publish
            else:
                publish = self._publish
                self.ha_topics = ha_subscriptions(settings.worker)
            self.homeassistant = HomeAssistant(self.engine, publish)
            if self.ha_broker is not None:
                self.ha_broker.on_connected = self.homeassistant.schedule
        self.mqtt = mqtt.Client(CallbackAPIVersion.VERSION2,
                                client_id=f"{base_id}-w{self.worker}" if self.worker else base_id,
                                protocol=mqtt.MQTTv5, manual_ack=True)
        self.mqtt.username_pw_set(CLIENT_USER, password)
        # paho's default of 20 QoS 1/2 messages in flight stays: it is also mosquitto's Receive Maximum, and
        # mosquitto silently drops what a client sends beyond it.
        # Back within half a second of the broker: what devices publish meanwhile waits in our session there,
        # and a board's MAC join gets its answer at once.
        self.mqtt.reconnect_delay_set(min_delay=RECONNECT_MIN, max_delay=RECONNECT_MAX)  # type: ignore[arg-type]
        self.mqtt.on_connect = self._on_connect
        self.mqtt.on_connect_fail = self._on_connect_fail
        self.mqtt.on_disconnect = self._on_disconnect
        self.mqtt.on_subscribe = self._on_subscribe
        self.mqtt.on_message = self._on_message
        self.mqtt.on_publish = self._on_publish
        self.mqtt.on_socket_open = no_delay
        self.metrics = IngestMetrics()
        # Alert notifications: written to the outbox in the writer's transactions, one row per channel the
        # settings enable, and delivered by the dispatcher's threads on their own database connection.
        channels = configured(settings)
        self.notify_mqtt = MqttChannel(self.mqtt) if "mqtt" in channels else None
        self.dispatcher = Dispatcher(settings.database_url, make_channels(settings, self.notify_mqtt),
                                     retry_max=settings.notify_retry_max) if channels else None
        if self.dispatcher is not None:
            self.metrics.registry.register(NotifyCollector(self.dispatcher))
        self.writer = Writer(self.engine, self._publish, self.mqtt.ack, self.drops,
                             presence_timeout=3 * settings.keepalive, history=History(worker=settings.worker),
                             purger=Purger(settings.retention_days, settings.rollup_retention_days,
                                           stray_hours=settings.stray_device_hours),
                             metrics=self.metrics, shared=bool(settings.worker), answer=self._answer,
                             limits=Limits.of(settings.readings_per_second, settings.readings_burst,
                                              settings.new_devices_per_minute), queue_max=queue_max,
                             alerts=Alerts(channels),
                             committed=self.homeassistant.committed if self.homeassistant else None,
                             deleted=self.homeassistant.deleted if self.homeassistant else None)
        self.metrics.watch(self.writer)
        self.beacon = Beacon(settings, self._health_facts, self.metrics.registry)
        self.watchdog = Watchdog(self.writer, self._writer_failed, stall_timeout=stall_timeout)
        # Every worker of a machine may read the pipe; one at a time does (the others take over if it stops).
        self.pipe = PipeReader(settings.fifo_path, self._on_command, self._on_pipe_error)
        self.ready = threading.Event()
        #: Set, with the reason, when the client cannot go on (the broker refused our password).
        self.fatal: str | None = None
        self.failed = threading.Event()
        self.connect_failures = 0
        self._on_fatal = on_fatal
        self._disconnected = threading.Event()
        self._flushed = threading.Event()
        self._stopping = False
        self._unreachable_logged = False
        self._outage: threading.Timer | None = None
        #: When the broker was last found out of reach (µs since the epoch): devices not heard since go offline.
        self._outage_since = 0
        self._outage_lock = threading.Lock()
        self._connected = False
        self._connections = 0
        self._awaited: set[int] = set()  # SUBSCRIBE packets not granted yet

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self, wait_ready: float | None = None) -> None:
        """Open the pipe (or stand by for it), start the writer, connect (retrying until the broker answers)."""
        self.pipe.start()
        self.writer.start()
        self.watchdog.start()
        self.beacon.start()
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SESSION_EXPIRY
        self.mqtt.connect_async(self.settings.mqtt_host, self.settings.mqtt_port, keepalive=self.settings.keepalive,
                                clean_start=False, properties=properties)
        self.mqtt.loop_start()
        if self.dispatcher is not None:
            self.dispatcher.start()
        if self.ha_broker is not None:
            self.ha_broker.start()
        if wait_ready is not None and not self.ready.wait(wait_ready):
            raise TimeoutError(f"the ingest client did not get ready within {wait_ready} s")

    def stop(self) -> None:
        """Stop cleanly: no new commands, flush and acknowledge everything received, then disconnect."""
        # From now on, what arrives is neither stored nor acknowledged: the broker delivers it again to the next
        # start (QoS 1/2; QoS 0 is lost, as with any disconnection).
        self._stopping = True
        if self.homeassistant is not None:
            self.homeassistant.stop()
        if self.ha_broker is not None:
            self.ha_broker.stop()
        self.beacon.stop()
        if self.dispatcher is not None:  # first: its MQTT channel publishes through our connection
            self.dispatcher.stop()
        self.watchdog.stop()
        self.pipe.stop()  # before the writer: it hands the writer every command still in the pipe
        self.writer.stop()  # commits and acknowledges everything received before
        # The broker must have read those acknowledgements before we close: it keeps sending meanwhile, and
        # its data reaching a closed socket brings a reset that makes it drop what it had not read yet (the
        # messages would come twice). A SUBSCRIBE to what we already subscribe to changes nothing, and its
        # SUBACK comes after the broker read everything we sent before it.
        self._flushed.clear()
        if self.mqtt.is_connected():
            self.mqtt.subscribe([(topic, SubscribeOptions(qos=qos)) for topic, qos in self.subscriptions[-1:]])
            if not self._flushed.wait(5):
                logger.warning("the broker did not confirm it read our last acknowledgements")
        self.mqtt.disconnect()
        stop_loop(self.mqtt)
        self.engine.dispose()
        if not self.writer.failed.is_set():  # after a writer failure, its CRITICAL line stays the last word
            logger.info("ingest client stopped; stored %s; discarded %s", self.writer.stats.stored,
                        self.drops.snapshot() or "nothing")

    # -- paho callbacks: parse and enqueue, nothing more ---------------------------------------------

    def _on_connect(self, client: mqtt.Client, _userdata: Any, flags: mqtt.ConnectFlags, reason: ReasonCode,
                    _properties: Properties | None) -> None:
        if reason.is_failure:
            if reason.value in REFUSED_LOGIN:
                # Retrying cannot help: say which file holds the password, and stop.
                self.fatal = (f"the broker refused the ingest client's password ({reason}): the password is in "
                              f"{client_secret_path(self.settings)} and the broker reads its hash from "
                              f"{self.settings.state_dir}/mosquitto/passwd when it starts; restart the broker "
                              f"(`make broker`) so that both agree")
                self.failed.set()
            else:
                logger.error("the broker refused the connection: %s", reason)
            return
        self._unreachable_logged = False
        self._cancel_outage()
        self._connected = True
        self._connections += 1
        self.metrics.connected.set(1)
        if self._connections > 1:
            self.metrics.reconnections.inc()
        # SUBSCRIBE packets each under the broker's max_packet_size (200 bytes): the device channels, the
        # command topic, Home Assistant's topics. Ready when all are granted (on_subscribe runs on this same
        # thread, after us).
        self._awaited = {cast(int, client.subscribe([(topic, SubscribeOptions(qos=qos)) for topic, qos in packet])[1])
                         for packet in self._packets()}
        logger.info("connected to the broker at %s:%d (session present: %s)", self.settings.mqtt_host,
                    self.settings.mqtt_port, flags.session_present)
        if not flags.session_present:
            # The broker restarted or forgot us: Wills may have fired while nobody listened.
            self.writer.submit(Inbound(BrokerSessionLost(), time.time_ns() // 1000))
        if self.homeassistant is not None and self.ha_broker is None:
            self.homeassistant.max_packet = getattr(_properties, "MaximumPacketSize", None)
            self.homeassistant.schedule()  # nothing is retained: Home Assistant may have missed what we said

    def _packets(self) -> list[list[tuple[str, int]]]:
        """Our subscriptions, one list per SUBSCRIBE packet."""
        packets = [self.subscriptions[:-1], self.subscriptions[-1:]]
        return [*packets, self.ha_topics] if self.ha_topics else packets

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        self.connect_failures += 1
        self._start_outage()
        if not self._unreachable_logged:
            logger.warning("cannot reach the broker at %s:%d; retrying (is it running? `make broker`)",
                           self.settings.mqtt_host, self.settings.mqtt_port)
            self._unreachable_logged = True

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: mqtt.DisconnectFlags,
                       reason: ReasonCode, _properties: Properties | None) -> None:
        self._disconnected.set()
        self._connected = False
        self.metrics.connected.set(0)
        if not self._stopping:
            logger.warning("lost the broker connection (%s); reconnecting", reason)
            self._start_outage()

    # -- the broker out of reach ---------------------------------------------------------------------

    def _start_outage(self) -> None:
        """Unless we are back within OUTAGE_GRACE seconds, have every online device marked offline."""
        with self._outage_lock:
            if self._outage is None and not self._stopping:
                self._outage_since = time.time_ns() // 1000
                self._outage = threading.Timer(OUTAGE_GRACE, self._outage_confirmed)
                self._outage.daemon = True
                self._outage.start()

    def _cancel_outage(self) -> None:
        with self._outage_lock:
            if self._outage is not None:
                self._outage.cancel()
                self._outage = None

    def _outage_confirmed(self) -> None:
        if self._stopping or self.mqtt.is_connected():
            return
        logger.warning("the broker has been out of reach for %.0f s: devices are shown offline until they are "
                       "heard from again", OUTAGE_GRACE)
        self.writer.submit(Inbound(BrokerOutage(self._outage_since), time.time_ns() // 1000))

    def _on_subscribe(self, _client: mqtt.Client, _userdata: Any, mid: int, reasons: list[ReasonCode],
                      _properties: Properties | None) -> None:
        if self._stopping:
            self._flushed.set()  # the SUBACK stop() waits for
            return
        refused = [str(reason) for reason in reasons if reason.is_failure]
        if refused:
            logger.error("the broker refused subscriptions: %s", ", ".join(refused))
            return
        self._awaited.discard(mid)
        if not self.ready.is_set() and not self._awaited:
            self.ready.set()
            who = f"worker {self.worker} (shared subscriptions $share/{SHARE_GROUP}/…)" if self.worker else ""
            pipe = (f"reading pipe {self.settings.fifo_path}" if self.pipe.holding.is_set()
                    else f"standing by for pipe {self.settings.fifo_path} (another worker reads it)")
            logger.info("ingest client %sready: subscribed on %s:%d (commands on %s too), %s",
                        f"{who} " if who else "", self.settings.mqtt_host, self.settings.mqtt_port, COMMAND_TOPIC,
                        pipe)
            notify("READY=1")

    def _on_message(self, client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        if self._stopping:
            return  # not acknowledged: delivered again to the next start
        received = time.time_ns() // 1000
        topic = message.topic
        reply = None
        try:
            if topic == COMMAND_TOPIC:
                parsed: Incoming = parse_command(cast(bytes, message.payload))
                reply = self._reply_to(message)
            elif self.homeassistant is not None and (topic.startswith(f"{ROOT}/") or topic == BIRTH_TOPIC):
                parsed = self._from_ha(topic, cast(bytes, message.payload))
            else:
                parsed = parse_server_message(topic, cast(bytes, message.payload))
        except PayloadError as err:
            if err.reason != "ha-status":
                self.drops.add(err.reason, f"{topic}: {err}")
            if message.qos:
                client.ack(message.mid, message.qos)
            return
        # Acknowledged by the writer once committed; if it was given up on, never (the broker keeps it).
        self.writer.submit(Inbound(parsed, received, message.mid, message.qos, reply))

    def _from_ha(self, topic: str, payload: bytes) -> Incoming:
        """Home Assistant's birth (PayloadError: nothing to store) or LED command."""
        assert self.homeassistant is not None
        if topic == BIRTH_TOPIC:
            self.homeassistant.birth(payload)
            raise PayloadError("Home Assistant's status", "ha-status")
        return self.homeassistant.command(topic, payload)

    def _on_ha_message(self, topic: str, payload: bytes) -> None:
        """A message from Home Assistant's own broker (SENSORHUB_HOMEASSISTANT_URL): its birth or a command."""
        if self._stopping:
            return
        try:
            parsed = self._from_ha(topic, payload)
        except PayloadError as err:
            if err.reason != "ha-status":
                self.drops.add(err.reason, f"{topic}: {err}")
            return
        self.writer.submit(Inbound(parsed, time.time_ns() // 1000))

    @staticmethod
    def _reply_to(message: mqtt.MQTTMessage) -> Reply | None:
        """Where the web server wants the answer to a command (None: it wants none), and until when."""
        properties = message.properties
        topic = getattr(properties, "ResponseTopic", None)
        if topic is None:
            return None
        if not isinstance(topic, str) or not topic.startswith(REPLY_PREFIX) or "+" in topic or "#" in topic:
            # Never an answer where boards listen, whatever a command asks.
            raise PayloadError(f"a command asks for its answer on {str(topic)[:80]!r}", "reply-topic")
        correlation = getattr(properties, "CorrelationData", b"")
        # The broker leaves the expiry out once less than a second of it remains.
        remaining = getattr(properties, "MessageExpiryInterval", 0)
        return Reply(topic, bytes(correlation), time.monotonic() + remaining + LATE_GRACE)

    def _on_publish(self, _client: mqtt.Client, _userdata: Any, mid: int, reason: ReasonCode,
                    _properties: Properties | None) -> None:
        if reason.is_failure:
            self.drops.add("publish-denied", f"the broker refused our message {mid}: {reason}")
        if self.notify_mqtt is not None:
            self.notify_mqtt.published(mid, reason)

    def _health_facts(self) -> dict[str, Any]:
        """What the heartbeat says (sensorhub.health reads it)."""
        return {"broker": self._connected, "writer": self.writer.alive and not self.writer.failed.is_set(),
                "queued": self.writer.queue.qsize(),
                # Not connected yet since it started: whether the broker answers is asked of the broker itself.
                "connecting": not self._connected and self._connections == 0}

    # -- the pipe -----------------------------------------------------------------------------------

    def _on_command(self, command: Command) -> None:
        self.writer.submit(Inbound(command, time.time_ns() // 1000))

    def _on_pipe_error(self, err: PayloadError) -> None:
        self.drops.add(err.reason, f"pipe: {err}")

    def _publish(self, topic: str, payload: bytes, qos: int) -> None:
        self.mqtt.publish(topic, payload, qos)

    def _answer(self, reply: Reply, outcome: Outcome) -> None:
        """Tell the web server that sent a command what became of it (after the batch was committed)."""
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if reply.correlation:
            properties.CorrelationData = reply.correlation
        self.mqtt.publish(reply.topic, outcome.value.encode("ascii"), 1, properties=properties)

    # -- the writer cannot go on ---------------------------------------------------------------------

    def _writer_failed(self, problem: str) -> None:
        """Say why in one line, leave the broker without acknowledging anything more, then `on_fatal`."""
        logger.critical("%s: exiting with status %d to be restarted; nothing unacknowledged is lost, the broker "
                        "delivers it again", problem, WRITER_FAILED)
        self._stopping = True
        self.pipe.stop()
        # DISCONNECT, not a dropped connection: the broker keeps our session, with every QoS 1/2 message we
        # did not acknowledge, for the next start (clean_start=False, SESSION_EXPIRY).
        self._disconnected.clear()
        self.mqtt.disconnect()
        if not self._disconnected.wait(5):
            logger.warning("the broker did not confirm the disconnection")
        stop_loop(self.mqtt)
        if self._on_fatal is not None:
            self._on_fatal(WRITER_FAILED)


def ha_subscriptions(worker: int) -> list[tuple[str, int]]:
    """Home Assistant's birth and LED commands on our broker (SENSORHUB_HOMEASSISTANT): one SUBSCRIBE packet,
    shared by several workers (then one of them republishes, one carries out each command)."""
    topics = [(BIRTH_TOPIC, 1), (COMMAND_FILTER, 1)]
    if not worker:
        return topics
    return [(f"$share/{SHARE_GROUP}/{topic}", qos) for topic, qos in topics]


def subscriptions(worker: int) -> list[tuple[str, int]]:
    """The device channels and the command topic the ingest client subscribes to: plain for the only worker,
    shared for several (then one of them takes each command).

    The only worker keeps plain subscriptions, so that an existing persistent session carries on unchanged
    (subscribing to the shared filter as well would bring every message twice until that session expires).
    """
    topics = [*SERVER_SUBSCRIPTIONS, (COMMAND_TOPIC, 1)]
    if not worker:
        return topics
    return [(f"$share/{SHARE_GROUP}/{topic}", qos) for topic, qos in topics]


def _exit_now(status: int) -> None:
    """Leave at once with `status`: the writer thread may hold locks that a normal exit would wait for."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(status)


def run_client(settings: Settings) -> None:
    """Run the ingest client until SIGINT or SIGTERM, or until it cannot go on; then stop it, within STOP_DEADLINE.

    The main thread owns the shutdown: a watchdog that gives up on the writer only asks for it (the client leaves
    the broker without acknowledging anything more, then this thread stops the rest and exits with
    WRITER_FAILED). Should stopping take longer than STOP_DEADLINE (a writer stuck in the database), the process
    exits anyway, with that status (1 for a plain stop).
    """
    gave_up: list[int] = []
    done = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s; stopping", signal.Signals(signum).name)
        done.set()

    def _writer_gone(status: int) -> None:
        gave_up.append(status)
        done.set()

    client = IngestClient(settings, on_fatal=_writer_gone)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    client.start()
    last_report = time.monotonic()
    summary = Summary(client.writer.stats, settings.summary_every) if settings.summary_every else None
    try:
        while not done.wait(0.5):
            if client.failed.is_set():
                break
            if not client.pipe.alive:
                client.fatal = f"the LED pipe reader stopped: {client.pipe.failure or 'unknown reason'}"
                break
            if summary is not None:
                summary.report()
            if time.monotonic() - last_report >= 600:
                last_report = time.monotonic()
                dropped = client.drops.snapshot()
                logger.info("stored so far %s; discarded %s", client.writer.stats.stored, dropped or "nothing")
    finally:
        deadline = threading.Timer(STOP_DEADLINE, _stop_overdue, args=(gave_up[0] if gave_up else 1,))
        deadline.daemon = True
        deadline.start()
        client.stop()
        deadline.cancel()
    if gave_up:
        raise SystemExit(gave_up[0])
    if client.fatal:
        raise IngestError(client.fatal)


def _stop_overdue(status: int) -> None:
    """Stopping took longer than STOP_DEADLINE: leave anyway (what is unacknowledged stays with the broker)."""
    logger.critical("the ingest client did not stop within %.0f s; exiting with status %d", STOP_DEADLINE, status)
    _exit_now(status)
