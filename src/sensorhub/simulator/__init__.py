"""Virtual ESP32s speaking the device side of the protocol, many of them in one asyncio loop."""

from __future__ import annotations

from sensorhub.simulator.device import (
    BrokerUnreachable,
    DeviceNotReady,
    NoNameAssigned,
    SimulatorError,
    VirtualDevice,
    default_seed,
    mac_address,
)
from sensorhub.simulator.fleet import Fleet, run_simulator

__all__ = [
    "BrokerUnreachable",
    "DeviceNotReady",
    "Fleet",
    "NoNameAssigned",
    "SimulatorError",
    "VirtualDevice",
    "default_seed",
    "mac_address",
    "run_simulator",
]
