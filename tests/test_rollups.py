"""Roll-ups: the writer's pure arithmetic against a brute-force computation, batch by batch as the writer feeds
it, and the database's upsert and bulk rebuild against the same computation."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from sensorhub.buckets import SIZES, Bucket, Last, roll
from sensorhub.db.rollups import rebuild, upsert
from sensorhub.timestamps import format_micros, micros_of
from tests.support import both_databases

T0 = int(datetime(2026, 11, 28, 22, 58, tzinfo=UTC).timestamp()) * 1_000_000

Event = tuple[int, str, int, int | None]  # device, kind, µs, value (None: the device left)
Expected = dict[tuple[str, int, str, str], tuple[int, int | None, int | None, int, int]]


def brute_force(events: list[Event]) -> Expected:
    """Every bucket, computed from scratch: readings counted where they fall, on-time as interval overlaps."""
    found: dict[tuple[str, int, str, str], list[int | None]] = {}

    def bucket(size: str, device: int, kind: str, start: int) -> list[int | None]:
        return found.setdefault((size, device, kind, format_micros(start)), [0, None, None, 0, 0])

    for device, kind, at, value in events:
        if value is None:
            continue
        for size, width in SIZES.items():
            b = bucket(size, device, kind, at - at % width)
            b[0] = int(b[0] or 0) + 1
            b[1] = value if b[1] is None else min(b[1], value)
            b[2] = value if b[2] is None else max(b[2], value)
            b[3] = int(b[3] or 0) + value
    per_device: dict[tuple[int, str], list[tuple[int, int | None]]] = defaultdict(list)
    for device, kind, at, value in events:
        if kind in ("led", "button"):
            per_device[(device, kind)].append((at, value))
    for (device, kind), timeline in per_device.items():
        timeline.sort(key=lambda item: (item[0], item[1] is not None))
        for (start, value), (end, _next) in pairwise(timeline):
            if value != 1 or end <= start:
                continue
            for size, width in SIZES.items():
                first = start - start % width
                for bucket_start in range(first, end, width):
                    overlap = min(end, bucket_start + width) - max(start, bucket_start)
                    if overlap > 0:
                        b = bucket(size, device, kind, bucket_start)
                        b[4] = int(b[4] or 0) + overlap
    return {key: (int(v[0] or 0), v[1], v[2], int(v[3] or 0), int(v[4] or 0)) for key, v in found.items()}


def incremental(batches: list[list[Event]]) -> Expected:
    """Feed the batches through `roll` as the writer does, folding the changes as the upsert does."""
    states: dict[tuple[int, str], Last] = {}
    total: dict[tuple[str, int, str, str], Bucket] = {}
    for batch in batches:
        readings: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
        ends = []
        for device, kind, at, value in batch:
            if value is None:
                ends.append((device, format_micros(at)))
            else:
                readings[kind].append((device, format_micros(at), value))
        rolled = roll(readings, states, ends)
        states = rolled.states
        for size, changes in rolled.buckets.items():
            for (device, kind, start), change in changes.items():
                total.setdefault((size, device, kind, start), Bucket()).merge(change)
    return {key: (b.count, b.low, b.high, b.total, b.on_us) for key, b in total.items()}


# Readings a few seconds to a few hours apart, across minute and hour boundaries, with some leaves.
_step = st.one_of(st.integers(1, 5_000_000), st.integers(5_000_000, 400_000_000), st.integers(1, 8_000_000_000))


@st.composite
def timelines(draw: st.DrawFn) -> list[Event]:
    events: list[Event] = []
    for device in (1, 2):
        at = T0 + draw(st.integers(0, 120_000_000))
        for _ in range(draw(st.integers(0, 25))):
            at += draw(_step)
            kind = draw(st.sampled_from(["led", "button", "light", "leave"]))
            if kind == "leave":
                events.append((device, "led", at, None))
            else:
                events.append((device, kind, at, draw(st.integers(0, 100 if kind == "light" else 1))))
    return sorted(events, key=lambda e: e[2])


def _as_brute_force_input(events: list[Event]) -> list[Event]:
    """A leave ends both the LED and the button."""
    out: list[Event] = []
    for device, kind, at, value in events:
        out.append((device, kind, at, value))
        if value is None:
            out.append((device, "button", at, None))
    return out


@settings(max_examples=300, deadline=None)
@given(timelines(), st.lists(st.integers(1, 10), min_size=1, max_size=8))
def test_rolling_batch_by_batch_matches_the_brute_force_computation(events: list[Event], cuts: list[int]) -> None:
    batches, index = [], 0
    for size in cuts * 10:
        if index >= len(events):
            break
        batches.append(events[index:index + size])
        index += size
    batches.append(events[index:])
    assert incremental(batches) == brute_force(_as_brute_force_input(events))


def test_time_on_spans_buckets_and_stops_at_a_leave() -> None:
    at = T0 + 30_000_000  # 22:58:30
    rolled = roll({"led": [(1, format_micros(at), 1)]}, {})
    assert rolled.states == {(1, "led"): Last(at, 1)}
    later = at + 90_000_000  # 23:00:00, in the next hour
    rolled = roll({}, rolled.states, [(1, format_micros(later))])
    minutes = {key[2][11:16]: b.on_us for key, b in rolled.buckets["1m"].items()}
    assert minutes == {"22:58": 30_000_000, "22:59": 60_000_000}
    assert {key[2][11:13]: b.on_us for key, b in rolled.buckets["1h"].items()} == {"22": 90_000_000}
    assert rolled.states == {}
    assert roll({"led": [(1, format_micros(later + 5), 0)]}, rolled.states).buckets["1m"][
        (1, "led", format_micros(later))].on_us == 0


def test_micros_of_reads_the_stored_form() -> None:
    for value in (0, T0, T0 + 123_456, 4_102_444_799_999_999):
        assert micros_of(format_micros(value)) == value


@both_databases
def test_upsert_and_rebuild_agree_with_the_brute_force_computation(engine: Engine) -> None:
    from tests.factories import add_device

    joined = datetime.fromtimestamp(T0 / 1e6 - 3600, UTC)
    devices = [add_device(engine, f"capteur{i}", i, joined=joined, online=False) for i in (1, 2)]
    events: list[Event] = []
    for n in range(400):
        device = devices[n % 2]
        kind = ("light", "led", "button")[n % 3]
        events.append((device, kind, T0 + n * 7_777_777, n % 101 if kind == "light" else (n // 3) % 2))
    expected = brute_force(events)
    with engine.begin() as conn:
        for kind in ("light", "led", "button"):
            conn.execute(text(f"INSERT INTO {kind}_reading (device_id, at, value) VALUES (:d, :at, :v)"),
                         [{"d": d, "at": format_micros(at), "v": v} for d, k, at, v in events if k == kind])
        states: dict[tuple[int, str], Last] = {}
        for start in range(0, len(events), 37):  # as the writer would, batch by batch
            readings: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
            for d, k, at, v in events[start:start + 37]:
                readings[k].append((d, format_micros(at), int(v or 0)))
            rolled = roll(readings, states)
            states = rolled.states
            upsert(conn, rolled.buckets)
    assert _stored(engine) == expected
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM device_session"))  # no session ended: nothing stops the count
        rebuild(conn, chunk=50)
    assert _stored(engine) == expected


def _stored(engine: Engine) -> Expected:
    found: Expected = {}
    with engine.connect() as conn:
        for size, table in (("1m", "rollup_minute"), ("1h", "rollup_hour")):
            query = f"SELECT device_id, kind, start, count, low, high, total, on_us FROM {table}"
            for row in conn.execute(text(query)):
                found[(size, row[0], row[1], row[2])] = (row[3], row[4], row[5], row[6], row[7])
    return found


@both_databases
def test_a_restarted_writer_reads_each_online_device_s_led_and_button_state_as_the_readings_say(
        engine: Engine) -> None:
    from sensorhub.db.latest import refresh_latest
    from sensorhub.ingest.bookkeeping import History
    from tests.factories import add_device

    joined = datetime.fromtimestamp(T0 / 1e6 - 3600, UTC)
    online = [add_device(engine, f"capteur{i}", i, joined=joined) for i in (1, 2, 3)]
    offline = add_device(engine, "capteur4", 4, joined=joined, online=False)
    rows = {  # per kind: (device, µs, value) inserted in this order; the newest by (at, id) is the state
        "led": [(online[0], T0 + 5, 1), (online[0], T0 + 9, 0), (online[0], T0 + 7, 1),  # a late, older one
                (online[1], T0 + 3, 0), (online[1], T0 + 3, 1),  # a tie: the later row wins
                (offline, T0 + 1, 1)],
        "button": [(online[0], T0 + 2, 1), (online[2], T0 + 4, 1), (online[2], T0 + 6, 0)],
    }
    with engine.begin() as conn:
        for kind, readings in rows.items():
            for device, at, value in readings:
                conn.execute(text(f"INSERT INTO {kind}_reading (device_id, at, value) VALUES (:d, :at, :v)"),
                             {"d": device, "at": format_micros(at), "v": value})
        refresh_latest(conn, [*online, offline])
    history = History()
    with engine.connect() as conn:
        history.load(conn)
    assert history.states == {
        (online[0], "led"): Last(T0 + 9, 0), (online[1], "led"): Last(T0 + 3, 1),
        (online[0], "button"): Last(T0 + 2, 1), (online[2], "button"): Last(T0 + 6, 0),
    }  # nothing for the offline device, nor for a kind a device never reported
