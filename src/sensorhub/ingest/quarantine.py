"""A message that fails on its own is kept aside with why, in the quarantine table, and acknowledged."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import Connection

from sensorhub.db import dialect, writes
from sensorhub.errors import reason
from sensorhub.ingest.drops import Drops
from sensorhub.ingest.sessions import Inbound, wire
from sensorhub.timestamps import format_micros

logger = logging.getLogger(__name__)


class Quarantine:
    """Sets aside the messages the writer could not store alone (the database refused them, or a bug)."""

    def __init__(self, drops: Drops, acknowledge: Callable[[int, int], object]) -> None:
        self.drops = drops
        self.acknowledge = acknowledge
        #: Messages kept in the table, and messages that could not even be kept (left with the broker).
        self.quarantined = 0
        self.discarded = 0
        self._traced: set[type[BaseException]] = set()

    def discard(self, conn: Connection, item: Inbound, err: Exception) -> None:
        """Keep `item` in the quarantine table with why, then acknowledge it (a redelivery would fail too). If even
        that cannot be written, it stays unacknowledged with the broker."""
        kind = "db-rejected" if type(err).__module__.startswith("sqlalchemy") else "writer-error"
        why = f"{kind}: {type(err).__name__}: {reason(err)}"
        if kind == "writer-error" and type(err) not in self._traced:
            self._traced.add(type(err))  # the traceback of a bug once; the drop counters say how often
            logger.error("quarantined %r after an unexpected error", item.message, exc_info=err)
        if not self._keep(conn, item, why):
            self.discarded += 1
            self.drops.add(kind, f"{item.message!r}: {why} (not stored; "
                                 f"{'left unacknowledged with the broker' if item.qos else 'QoS 0: lost'})")
            return
        self.quarantined += 1
        self.drops.add("quarantined", f"{item.message!r}: {why}")
        if item.qos:
            self.acknowledge(item.mid, item.qos)

    def _keep(self, conn: Connection, item: Inbound, why: str) -> bool:
        """Write the message into the quarantine table; False if that fails too."""
        topic, payload = wire(item.message)
        try:
            dialect.execute(conn, writes.QUARANTINE, (format_micros(item.at), topic[:64], payload[:256], why[:512]))
            conn.commit()
        except Exception as err:  # whatever fails, the message must not be acknowledged
            conn.rollback()
            logger.error("could not quarantine %r: %s", item.message, reason(err))
            return False
        return True
