"""`python -m bench.joins [--devices N] [--joins M]`: a join storm on two workers' writers (no broker).

A database already holds N devices (100,000 by default: a building after a power cut); M of them join again
(their MAC, as a rebooted board does), the joins shared between two `shared` writers as two workers would get
them, one message at a time. The figure is joins per second until the last one is acknowledged, on SQLite and
on PostgreSQL: each join batch is decided under the cross-worker lock, on the rows it needs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from sqlalchemy import Engine

from sensorhub.db.schema import migrated_engine
from sensorhub.ingest.drops import Drops
from sensorhub.ingest.sessions import Inbound
from sensorhub.ingest.writer import Writer
from sensorhub.protocol import MacJoin
from tests.factories import device_row, insert_devices, mac_of


def fill(engine: Engine, devices: int) -> None:
    """Insert `devices` offline devices, as a writer would have."""
    joined = 1_795_939_200_000_000  # 2026-11-29 08:00:00 UTC
    rows = [device_row(n, joined_us=joined, last_seen_us=joined + 1_000_000, online=False, name=f"capteur{n:02d}",
                       session=f"1743946777.{n % 1_000_000:06d}") for n in range(1, devices + 1)]
    with engine.begin() as conn:
        insert_devices(conn, rows)


def measure(url: str, devices: int, joins: int) -> float:
    """Joins per second through two shared writers on a database of `devices` devices."""
    engine = migrated_engine(url)
    fill(engine, devices)
    acked: list[int] = []  # list.append is atomic: both writers' threads share it

    def ack(mid: int, _qos: int) -> None:
        acked.append(mid)

    writers = [Writer(engine, lambda _t, _p, _q: None, ack, Drops(), shared=True) for _ in range(2)]
    for writer in writers:
        writer.start()
    try:
        started = time.monotonic()
        for n in range(joins):
            join = MacJoin(mac_of(1 + n * (devices // joins)))
            writers[n % 2].submit(Inbound(join, time.time_ns() // 1000, n + 1, 2))
        while len(acked) < joins:
            time.sleep(0.001)
        return joins / (time.monotonic() - started)
    finally:
        for writer in writers:
            writer.stop()
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    """Print one line per database."""
    from tests.pgcluster import Cluster, binaries

    parser = argparse.ArgumentParser(prog="python -m bench.joins", description=__doc__)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--joins", type=int, default=1_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sensorhub-joins-") as directory:
        rate = measure(f"sqlite:///{directory}/db.sqlite3", args.devices, args.joins)
        print(f"sqlite      {args.joins:,} joins among {args.devices:,} devices, 2 writers: {rate:,.0f} joins/s",
              flush=True)
    bindir = binaries()
    if bindir is None:
        print("postgresql  skipped: no PostgreSQL server binaries (sudo apt-get install postgresql)")
        return 0
    with Cluster(bindir, durable=True) as cluster:
        rate = measure(cluster.create_database(), args.devices, args.joins)
        print(f"postgresql  {args.joins:,} joins among {args.devices:,} devices, 2 writers: {rate:,.0f} joins/s",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
