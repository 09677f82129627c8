"""`python -m bench.wsflood [--mib N] [--unfinished K]`: how much memory an anonymous WebSockets client can make
Mosquitto hold with one oversized MQTT packet (docs/security.md, "Packet size on the WebSockets ports").

A raw WebSocket client (HTTP upgrade and binary frames over a plain socket, no library): MQTT CONNECT, then a
PUBLISH whose header announces N MiB, then the N MiB streamed in 64 KiB frames; K more clients announce N MiB each
and stop half way, keeping their connections open. The broker's resident memory (VmRSS) is read from /proc
before, after the complete packet and after the unfinished ones, and a fresh WebSockets client must still connect.

Each variant of the WebSockets listener runs in a bare Mosquitto on free ports, with the project's global options;
with the guard (sensorhub.wsguard, as `sensorhub broker` runs it), the clients connect to the guard's port.
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

from bench.ports import free_port
from sensorhub.broker import find_mosquitto
from sensorhub.protocol import MAX_PACKET
from sensorhub.wsguard import Listener, WsGuard

MIB = 1024 * 1024
CHUNK = 64 * 1024


def rss(pid: int) -> int:
    """Resident memory of process `pid`, in bytes (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def remaining_length(value: int) -> bytes:
    """MQTT's variable-length encoding of a packet's remaining length."""
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def connect_packet(client_id: str, keepalive: int = 60) -> bytes:
    """An MQTT 3.1.1 CONNECT, clean session, anonymous."""
    ident = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02" + struct.pack("!H", keepalive) + struct.pack("!H", len(ident)) + ident
    return b"\x10" + remaining_length(len(body)) + body


def publish_header(topic: str, payload_size: int) -> bytes:
    """The start of a QoS 0 PUBLISH carrying `payload_size` bytes (the payload itself follows separately)."""
    name = topic.encode()
    return b"\x30" + remaining_length(2 + len(name) + payload_size) + struct.pack("!H", len(name)) + name


class RawWebSocket:
    """A WebSocket client speaking the `mqtt` subprotocol: just enough to send binary frames."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /mqtt HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                           "Sec-WebSocket-Protocol: mqtt\r\n\r\n").encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError(f"the broker closed the connection during the upgrade: {answer!r}")
            answer += data
        self.status = answer.split(b"\r\n", 1)[0].decode()
        if " 101 " not in self.status:
            raise ConnectionError(f"upgrade refused: {self.status}")
        self.rest = answer.split(b"\r\n\r\n", 1)[1]

    def send(self, data: bytes) -> None:
        """One masked binary frame (mask key zero: the bytes go unchanged, which RFC 6455 allows)."""
        size = len(data)
        if size < 126:
            header = bytes([0x82, 0x80 | size])
        elif size < 65536:
            header = bytes([0x82, 0x80 | 126]) + struct.pack("!H", size)
        else:
            header = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", size)
        self.sock.sendall(header + b"\x00\x00\x00\x00" + data)

    def stream(self, size: int) -> int:
        """Send `size` payload bytes in CHUNK frames; return how many went before the broker hung up."""
        sent = 0
        block = b"x" * CHUNK
        try:
            while sent < size:
                piece = block[:min(CHUNK, size - sent)]
                self.send(piece)
                sent += len(piece)
        except OSError:
            pass
        return sent

    def receive(self, timeout: float = 2.0) -> bytes:
        """What the broker sent (raw frames), until it stops within `timeout`; b"" once it closed."""
        self.sock.settimeout(timeout)
        data = self.rest
        self.rest = b""
        try:
            chunk = self.sock.recv(4096)
            data += chunk
        except OSError:
            pass
        return data

    def close(self) -> None:
        self.sock.close()


def mqtt_session(port: int, client_id: str) -> RawWebSocket:
    """A WebSocket connection that sent CONNECT and got its CONNACK."""
    ws = RawWebSocket(port)
    ws.send(connect_packet(client_id))
    deadline = time.monotonic() + 5
    data = b""
    while b"\x20\x02" not in data:
        if time.monotonic() > deadline:
            raise ConnectionError(f"no CONNACK for {client_id}: {data!r}")
        data += ws.receive(1)
    return ws


def flood(port: int, pid: int, mib: int, unfinished: int) -> dict[str, object]:
    """One complete oversized PUBLISH and `unfinished` half-sent ones; the broker's RSS after each step."""
    base = rss(pid)
    big = mqtt_session(port, "flood-complete")
    big.send(publish_header("sensorhub/live", mib * MIB))
    sent = big.stream(mib * MIB)
    time.sleep(0.5)
    after_one = rss(pid)
    held = []
    for number in range(unfinished):
        try:
            ws = mqtt_session(port, f"flood-unfinished-{number}")
        except OSError:
            break
        ws.send(publish_header("sensorhub/live", mib * MIB))
        ws.stream(mib * MIB // 2)
        held.append(ws)
    time.sleep(0.5)
    after_all = rss(pid)
    try:
        mqtt_session(port, "flood-after").close()
        serves = True
    except OSError:
        serves = False
    for ws in [big, *held]:
        ws.close()
    return {"base_mib": base / MIB, "sent_mib": sent / MIB, "after_one_mib": after_one / MIB,
            "after_unfinished_mib": after_all / MIB, "serves": serves}


GLOBAL = """{user}log_dest file {log}
connection_messages true
max_packet_size 200
allow_anonymous true
{global_extra}
listener {tcp}
listener {ws}
protocol websockets
{listener_extra}
"""

GUARD = "sensorhub.wsguard in front (now)"
VARIANTS: dict[str, tuple[str, str]] = {
    "max_packet_size 200 (as shipped)": ("", ""),
    GUARD: ("", ""),
    "websockets_headers_size 1024": ("", "websockets_headers_size 1024"),
    "memory_limit 64 MiB": (f"memory_limit {64 * MIB}", ""),
}


def run_variant(global_extra: str, listener_extra: str, mib: int, unfinished: int,
                guarded: bool = False) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="wsflood-") as directory:
        log = Path(directory) / "mosquitto.log"
        tcp, ws = free_port(), free_port()
        conf = Path(directory) / "mosquitto.conf"
        user = "user root\n" if os.geteuid() == 0 else ""  # the temporary directory is ours only
        conf.write_text(GLOBAL.format(user=user, log=log, tcp=tcp, ws=ws, global_extra=global_extra,
                                      listener_extra=listener_extra))
        process = subprocess.Popen([find_mosquitto(), "-c", str(conf)], stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 5
            while "running" not in (log.read_text() if log.exists() else ""):
                if process.poll() is not None or time.monotonic() > deadline:
                    return {"error": log.read_text() if log.exists() else "did not start"}
                time.sleep(0.05)
            guard = None
            if guarded:  # mosquitto's listener on a loopback port; the clients go to the guard's
                guard = WsGuard([Listener(free_port())], ws, MAX_PACKET)
                guard.start()
            try:
                result = flood(guard.listeners[0].port if guard else ws, process.pid, mib, unfinished)
            finally:
                if guard is not None:
                    guard.stop()
            result["log"] = [line for line in log.read_text().splitlines() if "flood-complete" in line][-2:]
            return result
        finally:
            process.terminate()
            process.wait(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--unfinished", type=int, default=4)
    parser.add_argument("--only", help="run the variants whose name contains this")
    args = parser.parse_args()
    for name, (global_extra, listener_extra) in VARIANTS.items():
        if args.only and args.only not in name:
            continue
        print(name, run_variant(global_extra, listener_extra, args.mib, args.unfinished, name == GUARD), flush=True)


if __name__ == "__main__":
    main()
