"""The swarm simulator (many boards on one epoll loop) against a real Mosquitto and the real ingest client: the
firmware's join, readings, and presence when boards die silently or with their sockets closed."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from sqlalchemy import Engine, func, select

from sensorhub.config import Settings
from sensorhub.db.models import Device, LightReading
from sensorhub.ingest.service import IngestClient
from sensorhub.simulator.fleet import unique_macs
from sensorhub.simulator.swarm import Swarm

pytestmark = pytest.mark.integration



def spin(swarm: Swarm, condition: Callable[[], bool], timeout: float) -> float:
    """Run the swarm's loop until `condition()` holds; the seconds it took (fails after `timeout`)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "timed out"
        swarm.step(0.05)
    return time.monotonic() - started


def online(engine: Engine) -> set[tuple[str, str]]:
    """(MAC, session) of the devices the database shows online."""
    with engine.connect() as conn:
        return {(mac, session) for mac, session in
                conn.execute(select(Device.mac, Device.session_id).where(Device.online.is_(True)))}


def stored(engine: Engine) -> int:
    """Light readings stored."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(LightReading)).scalar_one())


def test_swarm_boards_join_report_and_are_seen_leaving_whichever_way_they_die(
        settings: Settings, engine: Engine, ingest: IngestClient) -> None:
    macs = unique_macs(5, 12)
    swarm = Swarm("127.0.0.1", settings.mqtt_port, macs, interval=0.3, keepalive=2, gate=0,
                  bind_addresses=["127.0.0.2", "127.0.0.3"])
    try:
        swarm.start()
        # Every board in the very session the server gave it, in the database: the firmware's join worked.
        spin(swarm, lambda: len(swarm.sessions()) == 12 and online(engine) == set(swarm.sessions()), 30)
        assert {mac for mac, _ in swarm.sessions()} == set(macs)
        # Each waiting board heard the other boards' name assignments too (one broadcast topic), its own at least.
        assert swarm.counters.assigns_seen >= 12
        spin(swarm, lambda: swarm.counters.acked_led == 12, 10)  # every led/status acknowledged by the broker
        spin(swarm, lambda: swarm.counters.written_readings >= 36, 20)
        swarm.paused = True
        spin(swarm, lambda: stored(engine) == swarm.counters.written_readings, 10)

        swarm.kill([0, 1], silent=False)  # sockets closed: the broker publishes the Wills at once
        closed = spin(swarm, lambda: not {macs[0], macs[1]} & {mac for mac, _ in online(engine)}, 10)
        assert closed < 2
        swarm.kill([2, 3], silent=True)  # mute, sockets open: gone after 1.5 keepalives (3 s)
        silent = spin(swarm, lambda: not {macs[2], macs[3]} & {mac for mac, _ in online(engine)}, 15)
        assert 2.5 < silent < 10, silent
        assert len(online(engine)) == 8

        before = set(swarm.sessions())
        swarm.power_cut()  # the others reboot: new sessions, online again
        spin(swarm, lambda: len(swarm.sessions()) == 8 and online(engine) == set(swarm.sessions()), 30)
        assert not before & set(swarm.sessions())
    finally:
        swarm.stop()


def test_a_refused_broker_makes_the_waiting_boards_back_off_one_step_at_a_time() -> None:
    import socket

    with socket.socket() as listener:  # accepts connections, never answers: the first board waits for CONNACK
        listener.bind(("127.0.0.1", 0))
        listener.listen(10)
        swarm = Swarm("127.0.0.1", listener.getsockname()[1], unique_macs(6, 3_000), gate=1)
        swarm.start()  # one board connecting, 2,999 waiting for the gate
    # The broker is gone: each refused connection lets the next waiting board start, in the loop's next step
    # rather than down the stack (3,000 nested failures were a RecursionError).
    swarm.kill([0], silent=False)
    for _ in range(20):
        swarm.step(0.01)
    assert swarm.counters.connect_failures >= 10 and swarm.online() == 0
    swarm.stop()
