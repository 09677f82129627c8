"""The dispatcher's figures as Prometheus metrics, read at each collection (in the ingest client's registry)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sensorhub.notify.dispatcher import Dispatcher
from sensorhub.timestamps import micros_of


class NotifyCollector(Collector):
    """Delivered and failed notifications per channel since start; what waits, and for how long."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        """One series per configured channel (0 included), and per channel with notifications waiting."""
        stats = dict(self.dispatcher.stats)
        delivered = CounterMetricFamily("sensorhub_notifications_delivered", "Alert notifications a channel took "
                                        "(webhook 2xx, SMTP accepted, MQTT PUBACK), per channel.", labels=["channel"])
        failed = CounterMetricFamily("sensorhub_notifications_failed", "Attempts at an alert notification that "
                                     "failed (each is kept and tried again), per channel.", labels=["channel"])
        for name, figures in sorted(stats.items()):
            delivered.add_metric([name], figures.delivered)
            failed.add_metric([name], figures.failed)
        yield delivered
        yield failed
        waiting = GaugeMetricFamily("sensorhub_notifications_waiting", "Alert notifications not delivered yet, per "
                                    "channel (counted every 5 s).", labels=["channel"])
        oldest = GaugeMetricFamily("sensorhub_notifications_oldest_seconds", "Age of the oldest notification not "
                                   "delivered yet, per channel (0: none waits).", labels=["channel"])
        counts = {name: 0 for name in stats} | dict(self.dispatcher.waiting)
        now_us = time.time_ns() // 1000
        for name, count in sorted(counts.items()):
            waiting.add_metric([name], count)
            since = stats[name].oldest if name in stats else None
            oldest.add_metric([name], max(0.0, (now_us - micros_of(since)) / 1e6) if since and count else 0.0)
        yield waiting
        yield oldest
