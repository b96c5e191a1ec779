"""The official Meta-Dataset records without TensorFlow: TFRecord framing and `tf.train.Example` decoding (and the
inverse, for building records in that format).

A TFRecord file is a sequence of records: `uint64 length`, `uint32 masked_crc32c(length)`, `data`,
`uint32 masked_crc32c(data)` (little-endian). Each record of Meta-Dataset is a serialised `tf.train.Example`
whose features are `image` (encoded image bytes) and `label` (int64). Both checksums are verified; a record
that fails is reported with its file and byte offset (`CorruptRecord`) and reading goes on at the next record
when its framing is intact.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

try:
    import google_crc32c
except ImportError:  # only needed to convert; the extra "metadataset" installs it
    google_crc32c = None

_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C rotated right by 15 bits plus a constant (mod 2³²)."""
    if google_crc32c is None:
        raise ImportError("Reading TFRecords needs google-crc32c: pip install 'hf-fewshot[metadataset]'.")
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


@dataclass(frozen=True)
class CorruptRecord:
    """A record that could not be read: where it is and why."""

    path: str
    offset: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path} at byte {self.offset}: {self.reason}"


def read_records(path: str | Path) -> Iterator[tuple[int, bytes | CorruptRecord]]:
    """`(offset, data)` for every record of a TFRecord file, or `(offset, CorruptRecord)` for a bad one.

    A bad data checksum skips that record only; a bad length checksum or a truncated file ends the file (the
    framing of what follows cannot be trusted).
    """
    path = Path(path)
    with path.open("rb") as stream:
        while True:
            offset = stream.tell()
            header = stream.read(12)
            if not header:
                return
            if len(header) < 12:
                yield offset, CorruptRecord(str(path), offset, "truncated record header")
                return
            length, length_crc = struct.unpack("<QI", header)
            if masked_crc32c(header[:8]) != length_crc:
                yield offset, CorruptRecord(str(path), offset, "length checksum mismatch")
                return
            data, footer = stream.read(length), stream.read(4)
            if len(data) < length or len(footer) < 4:
                yield offset, CorruptRecord(str(path), offset, "truncated record")
                return
            if masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                yield offset, CorruptRecord(str(path), offset, "data checksum mismatch")
                continue
            yield offset, data


# ------------------------------------------------------------------------------------- protobuf wire format
def _varint(buffer: bytes, position: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if position >= len(buffer):
            raise ValueError("truncated varint")
        byte = buffer[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 64 bits")


def _fields(buffer: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    """`(field number, wire type, value)` of a protobuf message: varints as int, length-delimited as bytes."""
    position = 0
    while position < len(buffer):
        key, position = _varint(buffer, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _varint(buffer, position)
        elif wire_type == 2:
            size, position = _varint(buffer, position)
            if position + size > len(buffer):
                raise ValueError("truncated length-delimited field")
            value, position = buffer[position : position + size], position + size
        elif wire_type == 5:
            value, position = buffer[position : position + 4], position + 4
        elif wire_type == 1:
            value, position = buffer[position : position + 8], position + 8
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        yield number, wire_type, value


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _feature_values(feature: bytes) -> list:
    """The values of one `tf.train.Feature`: bytes_list (1), float_list (2) or int64_list (3)."""
    for kind, _, payload in _fields(feature):
        values = []
        for _, wire_type, value in _fields(payload):
            if kind == 1:
                values.append(value)
            elif kind == 2:  # floats: packed (one blob) or one fixed32 per value
                values.extend(struct.unpack(f"<{len(value) // 4}f", value))
            elif kind == 3 and wire_type == 2:  # packed int64s
                position = 0
                while position < len(value):
                    number, position = _varint(value, position)
                    values.append(_signed64(number))
            elif kind == 3:
                values.append(_signed64(value))
        return values
    return []


def parse_example(data: bytes) -> dict[str, list]:
    """A serialised `tf.train.Example` as `{feature name: list of values}` (bytes, floats or ints)."""
    features = {}
    for number, _, message in _fields(data):
        if number != 1:  # Example.features
            continue
        for entry_number, _, entry in _fields(message):
            if entry_number != 1:  # Features.feature (a map entry)
                continue
            name, values = None, []
            for field, _, value in _fields(entry):
                if field == 1:
                    name = value.decode("utf-8")
                elif field == 2:
                    values = _feature_values(value)
            if name is not None:
                features[name] = values
    return features


def _encode_varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def serialize_example(image: bytes, label: int) -> bytes:
    """A `tf.train.Example` with the two features of Meta-Dataset's records: `image` (bytes) and `label` (int64)."""
    image_feature = _length_delimited(1, _length_delimited(1, image))  # Feature.bytes_list.value
    label_feature = _length_delimited(3, _length_delimited(1, _encode_varint(label)))  # Feature.int64_list (packed)
    entries = _length_delimited(1, _length_delimited(1, b"image") + _length_delimited(2, image_feature))
    entries += _length_delimited(1, _length_delimited(1, b"label") + _length_delimited(2, label_feature))
    return _length_delimited(1, entries)


def frame_record(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, the data, its masked CRC."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


__all__ = ["CorruptRecord", "frame_record", "masked_crc32c", "parse_example", "read_records", "serialize_example"]
