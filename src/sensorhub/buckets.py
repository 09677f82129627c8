"""Roll-up arithmetic, pure: a batch of readings in, the 1-minute and 1-hour bucket changes out.

The writer feeds each committed batch through `roll` and upserts what it returns in the same transaction
(`ingest/bookkeeping.py`); the migration and the benchmark's bulk builder feed whole tables through it. No I/O here,
so that tests compare it with a brute-force computation (tests/test_rollups.py).

Every bucket keeps the count, minimum, maximum and sum of the readings whose time falls in it. For the LED
and the button it also keeps `on_us`: the time the LED was on (the button pressed) within the bucket,
counted from each reading to the next one of the same device. A device that leaves ends its state: the time
after its last reading of a session is counted up to the leave, and nothing is counted while it is away.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sensorhub.timestamps import format_micros, micros_of

#: Bucket sizes, in microseconds, by the name the API uses.
SIZES: dict[str, int] = {"1m": 60_000_000, "1h": 3_600_000_000}
#: Kinds that have a state in time (on / pressed), as opposed to the light, a measurement.
STATEFUL = ("led", "button")
_MINUTE = SIZES["1m"]

#: A reading as the writer inserts it: (device id, stored time text, value).
Row = tuple[int, str, int]
#: A bucket: (device id, kind, start as stored time text).
Key = tuple[int, str, str]


@dataclass(frozen=True, slots=True)
class Last:
    """The last known state of a device's LED or button: since when (µs since the epoch) and which value."""

    at_us: int
    value: int


@dataclass(slots=True)
class Bucket:
    """What a batch adds to one bucket."""

    count: int = 0
    low: int | None = None
    high: int | None = None
    total: int = 0
    on_us: int = 0

    def add(self, value: int) -> None:
        """Count one reading."""
        self.count += 1
        self.total += value
        if self.low is None or value < self.low:
            self.low = value
        if self.high is None or value > self.high:
            self.high = value

    def merge(self, other: Bucket) -> None:
        """Add another change to the same bucket (what the database's upsert does)."""
        self.count += other.count
        self.total += other.total
        self.on_us += other.on_us
        if other.low is not None and (self.low is None or other.low < self.low):
            self.low = other.low
        if other.high is not None and (self.high is None or other.high > self.high):
            self.high = other.high


States = dict[tuple[int, str], Last]


@dataclass(slots=True)
class Rolled:
    """The outcome of a batch: bucket changes per size, and the LED and button states after it."""

    buckets: dict[str, dict[Key, Bucket]]
    states: States


def minute_of(text: str) -> str:
    """The start of the minute holding a stored time text, in the same form."""
    return text[:17] + "00.000000"


def hour_of(text: str) -> str:
    """The start of the hour holding a stored time text, in the same form."""
    return text[:14] + "00:00.000000"


def bucket_start(text: str, size: str) -> str:
    """The start of the `size` bucket holding a stored time text."""
    return minute_of(text) if size == "1m" else hour_of(text)


def roll(readings: Mapping[str, Sequence[Row]], states: Mapping[tuple[int, str], Last],
         ends: Iterable[tuple[int, str]] = ()) -> Rolled:
    """Bucket changes for a batch of readings (per kind, each device's rows in time order) and device leaves.

    `states` holds the LED and button states before the batch; it is not changed (the caller keeps the
    returned states only once the transaction commits). `ends` are (device id, time text) of leaves.
    """
    minutes: dict[Key, Bucket] = {}
    hours: dict[Key, Bucket] = {}
    for kind, rows in readings.items():
        for device_id, at, value in rows:
            key = (device_id, kind, at[:17] + "00.000000")
            bucket = minutes.get(key)
            if bucket is None:
                bucket = minutes[key] = Bucket()
            bucket.add(value)
            key = (device_id, kind, at[:14] + "00:00.000000")
            bucket = hours.get(key)
            if bucket is None:
                bucket = hours[key] = Bucket()
            bucket.add(value)
    after: States = dict(states)
    # The time on: each device's LED and button events (readings and leaves) in time order.
    events: list[tuple[int, int, int, str, int | None]] = []
    for kind in STATEFUL:
        events.extend((device_id, micros_of(at), 1, kind, value) for device_id, at, value in readings.get(kind, ()))
    for device_id, at in ends:
        at_us = micros_of(at)
        events.extend((device_id, at_us, 0, kind, None) for kind in STATEFUL)
    events.sort(key=lambda event: (event[0], event[1], event[2]))
    for device_id, at_us, _order, kind, state in events:
        previous = after.get((device_id, kind))
        if previous is not None and previous.value and at_us > previous.at_us:
            credit(minutes, hours, device_id, kind, previous.at_us, at_us)
        if state is None:
            after.pop((device_id, kind), None)
        else:
            after[(device_id, kind)] = Last(at_us, state)
    return Rolled({"1m": minutes, "1h": hours}, after)


def credit(minutes: dict[Key, Bucket], hours: dict[Key, Bucket], device_id: int, kind: str, start: int,
            end: int) -> None:
    """Add the time from `start` to `end` (µs) to the on-time of every minute and hour bucket it crosses."""
    moment = start
    while moment < end:
        bucket_start = moment - moment % _MINUTE
        stop = min(end, bucket_start + _MINUTE)
        text = format_micros(bucket_start)
        for table, key in ((minutes, (device_id, kind, text)), (hours, (device_id, kind, hour_of(text)))):
            bucket = table.get(key)
            if bucket is None:
                bucket = table[key] = Bucket()
            bucket.on_us += stop - moment
        moment = stop


def merge_into(target: dict[str, dict[Key, Bucket]], more: Mapping[str, Mapping[Key, Bucket]]) -> None:
    """Fold one batch's bucket changes into another's (the bulk builders roll a table chunk by chunk)."""
    for size, buckets in more.items():
        into = target.setdefault(size, {})
        for key, bucket in buckets.items():
            found = into.get(key)
            if found is None:
                into[key] = Bucket(bucket.count, bucket.low, bucket.high, bucket.total, bucket.on_us)
            else:
                found.merge(bucket)
