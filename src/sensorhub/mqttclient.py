"""What sensorhub's own MQTT connections (ingest client, web server) share."""

from __future__ import annotations

import socket
from typing import Any, Final

import paho.mqtt.client as mqtt

#: CONNACK reason codes that mean the user name or password is wrong (MQTT 5 and their 3.1.1 mappings).
REFUSED_LOGIN: Final = frozenset({134, 135})


def no_delay(_client: Any, _userdata: Any, sock: Any) -> None:
    """paho's `on_socket_open`: send each packet at once (TCP_NODELAY), as the broker does with `set_tcp_nodelay
    true`. A name or a LED command written right after an acknowledgement must not wait 40 ms in the kernel
    (Nagle's algorithm against the broker's delayed ACK)."""
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def stop_loop(client: mqtt.Client) -> None:
    """`client.loop_stop()` without paho's race: its network thread, ending after a `disconnect()`, clears the
    handle that `loop_stop` checked and is about to join (eclipse-paho/paho.mqtt.python#872, paho 2.1), and
    `loop_stop` fails with AttributeError although the thread is stopped. Every sensorhub, test and benchmark
    client stops its loop through here."""
    try:
        client.loop_stop()
    except AttributeError:
        if client._thread is not None:  # not that race: a real error
            raise
