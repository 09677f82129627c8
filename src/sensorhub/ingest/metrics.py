"""The ingest client's Prometheus metrics, in a registry of its own (written to a file the web server re-exports).

Names and units follow Prometheus' conventions (`_total` counters, `_seconds`); docs/deploy.md lists them.
Counters are updated once per committed batch, never per reading.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from sensorhub.ingest.sessions import Decisions
from sensorhub.protocol import Kind, Topic

if TYPE_CHECKING:
    from sensorhub.ingest.writer import Writer

# No `_created` series: read back from the text file by the web server, they would be separate gauges whose
# names clash with their counters in OpenMetrics (what Prometheus scrapes). The process start time says as much.
disable_created_metrics()  # type: ignore[no-untyped-call]

BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _WriterCollector(Collector):
    """What the writer and its Drops already count, read at each collection."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def collect(self) -> Iterator[CounterMetricFamily]:
        """Discarded messages per reason seen so far, and failed transactions."""
        family = CounterMetricFamily("sensorhub_messages_discarded", "Messages discarded, per reason "
                                     "(docs/deploy.md).", labels=["reason"])
        for reason, count in sorted(self.writer.drops.snapshot().items()):
            family.add_metric([reason], count)
        yield family
        yield CounterMetricFamily("sensorhub_writer_failed_batches", "Transactions that failed (the database "
                                  "could not be written, or a message was refused), then retried.",
                                  value=self.writer.stats.failed_batches)


class IngestMetrics:
    """Everything the ingest client counts; `registry` is what goes to the metrics file."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.stored = Counter("sensorhub_readings_stored", "Readings stored in the database, per kind.", ["kind"],
                              registry=registry)
        for kind in Kind:
            self.stored.labels(kind.value)
        self.joins = Counter("sensorhub_device_joins", "Devices that came online (a join in their session).",
                             registry=registry)
        self.leaves = Counter("sensorhub_device_leaves", "Devices that went offline (leave, Will, or silent "
                              "after a broker restart).", registry=registry)
        self.online = Gauge("sensorhub_devices_online", "Devices online now.", registry=registry)
        self.known = Gauge("sensorhub_devices", "Devices known (every device ever named).", registry=registry)
        self.queue = Gauge("sensorhub_writer_queue_messages", "Messages received and waiting for the database "
                           "writer.", registry=registry)
        self.batch = Histogram("sensorhub_writer_batch_messages", "Messages per committed transaction.",
                               buckets=BATCH_BUCKETS, registry=registry)
        self.commit = Histogram("sensorhub_writer_commit_duration_seconds", "Time to write and commit one "
                                "transaction.", buckets=COMMIT_BUCKETS, registry=registry)
        self.connected = Gauge("sensorhub_broker_connected", "1 while the ingest client is connected to the broker.",
                               registry=registry)
        self.reconnections = Counter("sensorhub_broker_reconnections", "Connections to the broker after the first "
                                     "one (each follows a lost connection).", registry=registry)
        self.led = Counter("sensorhub_led_commands", "LED commands from the web pages, per outcome: `published` "
                           "to the device, or `device-offline` (not online in that session: refused).",
                           ["outcome"], registry=registry)
        for outcome in ("published", "device-offline"):
            self.led.labels(outcome)
        ProcessCollector(namespace="sensorhub_client", registry=registry)

    def watch(self, writer: Writer) -> None:
        """Read the queue depth, the devices, the discarded messages and the failures from `writer` when collected."""
        self.queue.set_function(lambda: float(writer.queue.qsize()))
        # list() copies the devices at once (the writer thread may add one meanwhile).
        self.online.set_function(lambda: float(sum(1 for d in list(writer.sessions.by_id.values()) if d.online)))
        self.known.set_function(lambda: float(len(writer.sessions.by_id)))
        self.registry.register(_WriterCollector(writer))

    def committed(self, done: Decisions, size: int, seconds: float) -> None:
        """Count one committed batch of `size` messages that took `seconds` (in the writer's thread)."""
        self.batch.observe(size)
        self.commit.observe(seconds)
        for kind, rows in done.readings.items():
            if rows:
                self.stored.labels(kind.value).inc(len(rows))
        if done.presence:
            joined = sum(1 for change in done.presence if change.online)
            if joined:
                self.joins.inc(joined)
            if len(done.presence) > joined:
                self.leaves.inc(len(done.presence) - joined)
        if done.publishes:
            led = sum(1 for topic, _payload, _qos in done.publishes if topic == Topic.LED_COMMAND)
            if led:
                self.led.labels("published").inc(led)
        if done.drops:
            offline = sum(1 for reason, _detail in done.drops if reason == "pipe-offline")
            if offline:
                self.led.labels("device-offline").inc(offline)
