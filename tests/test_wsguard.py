"""The WebSockets guard's reading of frames and MQTT packet lengths, however the bytes are cut."""

from __future__ import annotations

import os
import struct

import pytest

from bench.wsflood import connect_packet, publish_header, remaining_length
from sensorhub.wsguard import FrameReader, MqttLengths, Oversize


def frame(payload: bytes, opcode: int = 2, fin: bool = True, mask: bytes | None = None) -> bytes:
    """A client frame, masked with `mask` (random by default)."""
    key = os.urandom(4) if mask is None else mask
    size = len(payload)
    if size < 126:
        length = bytes([0x80 | size])
    elif size < 65536:
        length = bytes([0x80 | 126]) + struct.pack("!H", size)
    else:
        length = bytes([0x80 | 127]) + struct.pack("!Q", size)
    body = bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))
    return bytes([(0x80 if fin else 0) | opcode]) + length + key + body


def feed(data: bytes, cut: int, limit: int = 200) -> None:
    reader = FrameReader(MqttLengths(limit))
    for start in range(0, len(data), cut):
        reader.feed(data[start:start + cut])


PUBLISH_193 = publish_header("sensorhub/live", 174) + b"7" * 174  # 1 + 2 + 16 + 174 = 193 bytes
SUBSCRIBE = b"\x82" + remaining_length(19) + b"\x00\x01\x00\x0esensorhub/live\x00"


@pytest.mark.parametrize("cut", [1, 2, 3, 7, 64, 100_000])
def test_packets_within_the_limit_pass_however_cut_and_framed(cut: int) -> None:
    stream = connect_packet("page-1") + SUBSCRIBE + PUBLISH_193 + b"\xc0\x00"  # ... and a PINGREQ
    frames = frame(stream[:5]) + frame(b"", opcode=9) + frame(stream[5:40], fin=False)  # a ping between
    frames += frame(stream[40:], opcode=0) + frame(b"\x03\xe8bye", opcode=8)  # a continuation, then a close
    feed(frames, cut)
    feed(frame(stream, mask=b"\0\0\0\0"), cut)


@pytest.mark.parametrize("cut", [1, 3, 64])
def test_a_packet_over_the_limit_is_refused_at_its_header(cut: int) -> None:
    for header in (publish_header("sensorhub/live", 200), publish_header("x", 100 * 1024 * 1024)):
        with pytest.raises(Oversize, match=r"an MQTT packet of \d+ bytes \(max_packet_size 200\)"):
            # the header alone, in a frame announcing far more: nothing after it is needed to refuse
            feed(frame(connect_packet("page-2")) + frame(header)[:40], cut)


def test_a_remaining_length_of_five_bytes_is_refused() -> None:
    with pytest.raises(Oversize, match="longer than 4 bytes"):
        feed(frame(b"\x30\xff\xff\xff\xff\x01"), 1)
