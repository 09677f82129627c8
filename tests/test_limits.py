"""The flood limits on their own and in the session engine, on made-up times (no clock, no broker)."""

from __future__ import annotations

from sensorhub.ingest.limits import MINUTE_US, Limits, NewDeviceLimit, ReadingLimit
from sensorhub.ingest.sessions import Inbound, Sessions
from sensorhub.protocol import Kind, MacJoin, Reading, SessionRef
from tests.test_sessions import T0, Harness, assigned

SECOND = 1_000_000


def test_a_bucket_lets_a_burst_through_then_the_rate() -> None:
    limit = ReadingLimit(rate=50, burst=100)
    assert [limit.allow(1, T0) for _ in range(101)] == [True] * 100 + [False]
    assert not limit.allow(1, T0 + SECOND // 100)  # half a token back
    assert limit.allow(1, T0 + SECOND // 50)  # one token back
    assert not limit.allow(1, T0 + SECOND // 50)
    # 10 s later: the bucket is full again, never fuller.
    assert sum(limit.allow(1, T0 + 10 * SECOND) for _ in range(200)) == 100


def test_over_a_long_flood_the_bucket_lets_the_rate_through() -> None:
    limit = ReadingLimit(rate=50, burst=100)
    # 10,000 readings a second for 10 s: the burst, then 50 a second.
    taken = sum(limit.allow(7, T0 + n * 100) for n in range(100_000))
    assert 100 + 50 * 10 - 1 <= taken <= 100 + 50 * 10


def test_buckets_are_per_device() -> None:
    limit = ReadingLimit(rate=1, burst=3)
    assert [limit.allow(1, T0) for _ in range(4)] == [True, True, True, False]
    assert [limit.allow(2, T0) for _ in range(3)] == [True, True, True]


def test_a_clock_stepped_back_refills_nothing() -> None:
    limit = ReadingLimit(rate=1, burst=2)
    assert limit.allow(1, T0) and limit.allow(1, T0)
    assert not limit.allow(1, T0 - 3600 * SECOND)
    assert not limit.allow(1, T0)  # back to where it was: still nothing earned
    assert limit.allow(1, T0 + SECOND)


def test_a_rolled_back_batch_gives_its_readings_back() -> None:
    limit = ReadingLimit(rate=1, burst=3)
    assert limit.allow(1, T0) and limit.allow(1, T0)
    limit.commit()
    assert limit.allow(1, T0) and limit.allow(2, T0)
    assert not limit.allow(1, T0)
    limit.rollback()  # as if that batch never happened: device 1 has one reading left, device 2 a whole bucket
    assert limit.allow(1, T0) and not limit.allow(1, T0)
    assert [limit.allow(2, T0) for _ in range(4)] == [True, True, True, False]


def test_no_rate_is_no_limit() -> None:
    assert not ReadingLimit(0, 1).enabled and ReadingLimit(0.5, 1).enabled


def test_new_devices_in_any_minute_are_bounded() -> None:
    limit = NewDeviceLimit(3)
    assert [limit.allow(T0 + n) for n in range(5)] == [True, True, True, False, False]
    assert not limit.allow(T0 + MINUTE_US - 1)
    assert limit.allow(T0 + MINUTE_US)  # the first one is a minute old
    assert not limit.allow(T0 + MINUTE_US)
    assert limit.allow(T0 + MINUTE_US + 1) and limit.allow(T0 + MINUTE_US + 2)
    assert not limit.allow(T0 + MINUTE_US + 2)
    assert all(NewDeviceLimit(0).allow(T0) for _ in range(1000))


def test_new_devices_of_a_rolled_back_batch_are_not_counted() -> None:
    limit = NewDeviceLimit(2)
    assert limit.allow(T0)
    limit.commit()
    assert limit.allow(T0 + 1) and not limit.allow(T0 + 2)
    limit.rollback()
    assert limit.allow(T0 + 3) and not limit.allow(T0 + 4)


# -- in the engine -----------------------------------------------------------------------------------------


def limited(rate: float = 50, burst: int = 100, per_minute: int = 0) -> Harness:
    return Harness(Sessions(presence_timeout_us=15_000_000, limits=Limits.of(rate, burst, per_minute)))


def test_a_flooding_session_is_capped_and_a_board_alongside_loses_nothing() -> None:
    harness = limited(rate=50, burst=100)
    flood_name, flood_session = harness.join("02:00:00:00:00:01")
    board_name, board_session = harness.join("02:00:00:00:00:02")
    batch = []
    for n in range(20_000):  # 2 s of 10,000 readings a second, a board's 2 a second among them
        at = T0 + SECOND + n * 100
        batch.append(Inbound(Reading(Kind.LIGHT, flood_name, flood_session, n % 101), at))
        if n % 5_000 == 0:
            batch.append(Inbound(Reading(Kind.LED, board_name, board_session, n % 2), at, mid=n + 1, qos=1))
    done = harness.engine.apply(batch)
    flood_id = harness.engine.by_session_name[flood_name].id
    flood = [row for row in done.readings[Kind.LIGHT] if row[0] == flood_id]
    assert 100 + 50 * 2 - 1 <= len(flood) <= 100 + 50 * 2
    assert len(done.readings[Kind.LED]) == 4
    reasons = [reason for reason, _detail in done.drops]
    assert reasons == ["rate-limited"] * (20_000 - len(flood))
    assert "over 50 readings/s" in done.drops[0][1] and repr(flood_name) in done.drops[0][1]
    assert len(done.acks) == 4  # the board's QoS 1 readings are acknowledged, and nothing is stuck


def test_a_dropped_acknowledged_reading_is_still_acknowledged() -> None:
    harness = limited(rate=1, burst=1)
    name, session = harness.join("02:00:00:00:00:01")
    done = harness.send(*(Reading(Kind.LED, name, session, n % 2) for n in range(3)), qos=1)
    assert len(done.readings[Kind.LED]) == 1 and len(done.drops) == 2
    assert [mid for mid, _qos in done.acks] == [1, 2, 3]


def test_joins_of_new_macs_beyond_the_bound_get_no_name_and_known_boards_are_never_limited() -> None:
    harness = limited(per_minute=3)
    known = "02:00:00:00:00:01"
    harness.join(known)
    done = harness.send(*(MacJoin(f"02:00:00:00:01:{n:02X}") for n in range(10)))
    assert len(assigned(done)) == 2  # the known board took the first of the 3
    assert [reason for reason, _ in done.drops] == ["new-device-limit"] * 8
    assert "refused: 3 new devices in the last minute already" in done.drops[0][1]
    assert len(harness.engine.by_id) == 3 and len(harness.table) == 3
    for _ in range(5):  # a known board's joins, however many
        [(mac, name, session)] = assigned(harness.send(MacJoin(known)))
        harness.send(SessionRef(name, session))
        assert mac == known
    harness.now += MINUTE_US
    assert len(assigned(harness.send(*(MacJoin(f"02:00:00:00:02:{n:02X}") for n in range(5))))) == 3


def test_a_forgotten_device_joins_again_as_a_new_one() -> None:
    harness = limited()
    name, _session = harness.join("02:00:00:00:00:01")
    device = harness.engine.by_session_name[name]
    harness.engine.forget([device.id])
    assert harness.engine.by_id == {} and harness.engine.by_mac == {} and harness.engine.by_name == {}
    [(_mac, again, _)] = assigned(harness.send(MacJoin("02:00:00:00:00:01")))
    assert harness.engine.by_session_name[again].id == device.id + 1
