"""`python -m bench.writer`: the database writer alone (no broker), on SQLite and on PostgreSQL.

20,000 QoS 1 readings of one joined device are queued at once; the figure is the time until the last one is
acknowledged (committed), for each largest batch size. It isolates what a batch costs each database from
the broker and the network.
"""

from __future__ import annotations

import sys
import tempfile
import time

from sensorhub.db.schema import migrated_engine
from sensorhub.ingest.drops import Drops
from sensorhub.ingest.sessions import Inbound
from sensorhub.ingest.writer import Writer
from sensorhub.protocol import Kind, MacJoin, Reading, SessionRef

READINGS = 20_000
BATCHES = (20, 200, 20_000)


def _now() -> int:
    return time.time_ns() // 1000


def measure(url: str, batch_max: int, readings: int = READINGS) -> float:
    """Readings per second through a Writer on the database at `url` (migrated here), batches of at most `batch_max`."""
    engine = migrated_engine(url)
    published: list[bytes] = []
    acked: list[int] = []
    writer = Writer(engine, lambda _t, payload, _q: published.append(payload), lambda mid, _q: acked.append(mid),
                    Drops(), batch_max=batch_max)
    writer.start()
    try:
        writer.submit(Inbound(MacJoin("02:00:00:00:00:01"), _now()))
        while not published:
            time.sleep(0.01)
        name, session = published[-1].decode().split(";")[1:]
        writer.submit(Inbound(SessionRef(name, session), _now()))
        while not writer.sessions.by_session_name[name].online:
            time.sleep(0.01)
        items = [Inbound(Reading(Kind.LIGHT, name, session, i % 101), _now(), i + 1, 1) for i in range(readings)]
        started = time.monotonic()
        for item in items:
            writer.submit(item)
        while len(acked) < readings:
            time.sleep(0.001)
        return readings / (time.monotonic() - started)
    finally:
        writer.stop()
        engine.dispose()


def main() -> int:
    """Print one line per database and batch size."""
    from tests.pgcluster import Cluster, binaries

    bindir = binaries()
    with tempfile.TemporaryDirectory(prefix="sensorhub-writer-") as directory:
        for batch in BATCHES:
            rate = measure(f"sqlite:///{directory}/db-{batch}.sqlite3", batch)
            print(f"sqlite      batches <= {batch:>6,}: {rate:>8,.0f} readings/s", flush=True)
    if bindir is None:
        print("postgresql  skipped: no PostgreSQL server binaries (sudo apt-get install postgresql)")
        return 0
    with Cluster(bindir, durable=True) as cluster:
        for batch in BATCHES:
            rate = measure(cluster.create_database(), batch)
            print(f"postgresql  batches <= {batch:>6,}: {rate:>8,.0f} readings/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
