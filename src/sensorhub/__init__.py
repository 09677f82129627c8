"""sensorhub: the server side of a network of ESP32 sensor boards."""

from __future__ import annotations

__version__ = "0.1.0"
