"""Plausible dummy data: a few devices with a day of readings, for trying the pages without hardware."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from sensorhub.db.latest import refresh_latest
from sensorhub.db.models import ButtonReading, Device, DeviceSession, LedReading, LightReading
from sensorhub.db.rollups import rebuild
from sensorhub.protocol import new_session_id


def seed(engine: Engine, devices: int = 4, hours: int = 24, rng: random.Random | None = None) -> int:
    """Add `devices` offline devices with `hours` of readings each; return how many devices were added."""
    rng = rng or random.Random()
    now = datetime.now(UTC)
    added: list[int] = []
    with Session(engine) as session, session.begin():
        taken = set(session.scalars(select(Device.name)))
        macs = set(session.scalars(select(Device.mac)))
        number = len(taken) + 1
        for _ in range(devices):
            while f"demo{number:02d}" in taken:
                number += 1
            name = f"demo{number:02d}"
            taken.add(name)
            mac = _random_mac(rng, macs)
            joined = now - timedelta(hours=hours, minutes=rng.randint(1, 59))
            last = now - timedelta(minutes=rng.randint(1, 30))
            device = Device(
                name=name, session_name=name, mac=mac, online=False,
                session_id=new_session_id(), joined_at=joined, last_seen=last,
            )
            session.add(device)
            session.flush()
            session.add(DeviceSession(device_id=device.id, session_id=device.session_id, started_at=joined,
                                      online_at=joined, ended_at=last))
            _readings(session, device.id, joined, last, rng)
            added.append(device.id)
        rebuild(session.connection(), added)  # as the ingest client would have kept them
        refresh_latest(session.connection(), added)
    return len(added)


def _random_mac(rng: random.Random, taken: set[str]) -> str:
    while True:
        # Locally administered, unicast: the second hex digit is 2, 6, A or E.
        octets = [rng.randrange(256) for _ in range(6)]
        octets[0] = (octets[0] & 0xFC) | 0x02
        mac = ":".join(f"{o:02X}" for o in octets)
        if mac not in taken:
            taken.add(mac)
            return mac


def _readings(session: Session, device_id: int, start: datetime, end: datetime, rng: random.Random) -> None:
    span = (end - start).total_seconds()
    light, led, button = [], [], []
    moments = sorted(start + timedelta(seconds=rng.uniform(1, span)) for _ in range(60))
    phase = rng.uniform(0, math.tau)
    led_on = False
    for moment in moments:
        daylight = 50 + 45 * math.sin(phase + moment.timestamp() / 86400 * math.tau)
        light.append({"device_id": device_id, "at": moment, "value": max(0, min(100, round(daylight)))})
        if rng.random() < 0.2:
            led_on = not led_on
            led.append({"device_id": device_id, "at": moment, "value": int(led_on)})
        if rng.random() < 0.2:
            button.append({"device_id": device_id, "at": moment, "value": 1})
            button.append({"device_id": device_id, "at": moment + timedelta(milliseconds=300), "value": 0})
    for model, rows in ((LightReading, light), (LedReading, led), (ButtonReading, button)):
        if rows:
            session.execute(insert(model), rows)
