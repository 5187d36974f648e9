"""TensorBoard scalars without TensorBoard: a writer of ``events.out.tfevents.*`` files.

The format is TFRecord framing around serialized ``tensorflow.Event`` protocol buffers:
``uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)``, little-endian, where
``masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8`` over CRC-32C (Castagnoli). The first event carries
``file_version = "brain.Event:2"``; each scalar is an ``Event{wall_time, step, summary{value{tag,
simple_value}}}``. Only these few protobuf fields are encoded, by hand, so writing needs neither TensorFlow
nor the ``tensorboard`` package (the tests read the files back with ``tensorboard``'s own reader).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

_CRC_TABLE: list[int] = []


def _crc_table() -> list[int]:
    if not _CRC_TABLE:
        for byte in range(256):
            crc = byte
            for _ in range(8):
                crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
            _CRC_TABLE.append(crc)
    return _CRC_TABLE


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli polynomial, reflected 0x82F63B78) of ``data``."""
    table, crc = _crc_table(), 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # two's complement for negative int64, as protobuf does
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(
    wall_time: float, step: int | None = None, file_version: str | None = None, summary: bytes | None = None
) -> bytes:
    out = bytes([1 << 3 | 1]) + struct.pack("<d", wall_time)
    if step is not None:
        out += _varint(2 << 3 | 0) + _varint(int(step))
    if file_version is not None:
        out += _field_bytes(3, file_version.encode())
    if summary is not None:
        out += _field_bytes(5, summary)
    return out


def _scalar_summary(tag: str, value: float) -> bytes:
    item = _field_bytes(1, tag.encode()) + bytes([2 << 3 | 5]) + struct.pack("<f", float(value))
    return _field_bytes(1, item)


def _record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


class ScalarWriter:
    """``ScalarWriter(log_dir).add_scalar("loss", 0.3, step)``; flushed on every write, so a killed run keeps
    what it logged. ``log_dir`` is created; each writer opens its own uniquely named events file."""

    _counter = 0

    def __init__(self, log_dir: str | os.PathLike):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        ScalarWriter._counter += 1
        name = (
            f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}."
            f"{os.getpid()}.{ScalarWriter._counter}"
        )
        self.path = self.log_dir / name
        self._file = open(self.path, "ab")  # noqa: SIM115 - closed in close()
        self._write(_event(time.time(), file_version="brain.Event:2"))

    def _write(self, event: bytes) -> None:
        self._file.write(_record(event))
        self._file.flush()

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        if not isinstance(tag, str) or not tag:
            raise ValueError(f"a scalar needs a non-empty string tag, got {tag!r}")
        self._write(_event(time.time(), step=step, summary=_scalar_summary(tag, float(value))))

    def add_scalars(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        for tag, value in values.items():
            self.add_scalar(f"{prefix}{tag}", value, step)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> ScalarWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
