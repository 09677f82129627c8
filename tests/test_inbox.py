"""The writer's inbox: QoS 0 readings are shed when there is no room, everything else always goes in."""

from __future__ import annotations

import threading

import pytest

from sensorhub.ingest.inbox import Empty, Inbox


def inbox(room: int = 4, wait: float = 0.05) -> Inbox[tuple[str, int]]:
    """Items are (kind, number); kind "r0" is a QoS 0 reading, the only bounded kind."""
    return Inbox(room, lambda item: item[0] == "r0", wait=wait, resume=0.5)


def drain(box: Inbox[tuple[str, int]]) -> list[tuple[str, int]]:
    out = []
    while True:
        try:
            out.append(box.get_nowait())
        except Empty:
            return out


def test_items_come_out_in_order() -> None:
    box = inbox()
    items = [("r0", 1), ("q1", 2), ("r0", 3)]
    for item in items:
        assert box.put(item)
    assert drain(box) == items and box.empty()


def test_acknowledged_items_always_go_in_whatever_the_room() -> None:
    box = inbox(room=2)
    assert all(box.put(("q1", n)) for n in range(100))
    assert box.put(("r0", 0)) and box.put(("r0", 1))  # the room is for QoS 0 readings only
    assert box.qsize() == 102 and box.shed == 0


def test_a_reading_without_room_is_shed_and_so_are_the_next_until_the_inbox_drains() -> None:
    box = inbox(room=4)
    assert all(box.put(("r0", n)) for n in range(4))
    assert not box.put(("r0", 4)) and box.shedding  # waited, no room came
    box.get_nowait()  # one place frees, but shedding goes on above half the room
    assert not box.put(("r0", 5))
    assert box.put(("q1", 6))  # never an acknowledged one
    box.get_nowait()
    box.get_nowait()  # now 1 of 4 places held: under half
    assert box.put(("r0", 7)) and not box.shedding
    assert box.shed == 2
    assert [n for _, n in drain(box)] == [3, 6, 7]


def test_a_reading_waits_for_room_that_frees_in_time() -> None:
    box = inbox(room=1, wait=5.0)
    assert box.put(("r0", 0))
    threading.Timer(0.05, box.get_nowait).start()
    assert box.put(("r0", 1))  # the consumer took one meanwhile
    assert box.shed == 0 and drain(box) == [("r0", 1)]


def test_get_waits_for_an_item_or_says_empty() -> None:
    box = inbox()
    with pytest.raises(Empty):
        box.get(timeout=0.01)
    threading.Timer(0.05, box.put, args=(("q1", 1),)).start()
    assert box.get(timeout=5) == ("q1", 1)


def test_put_many_hands_the_consumer_everything_at_once() -> None:
    box = inbox(room=2)
    box.put_many([("r0", n) for n in range(5)])  # a test seam: never shed, even beyond the room
    assert box.qsize() == 5 and [n for _, n in drain(box)] == [0, 1, 2, 3, 4]
    assert box.put(("r0", 5))  # every place was given back


def test_an_inbox_needs_room() -> None:
    with pytest.raises(ValueError, match="room"):
        inbox(room=0)
