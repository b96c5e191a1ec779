"""TFRecord framing and tf.train.Example decoding, against records written here in the official format by an
encoder independent of the library's (so that an encoder and decoder sharing a mistake cannot pass)."""

import struct

import google_crc32c
import pytest

from hf_fewshot.data.tfrecord import CorruptRecord, parse_example, read_records


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64s are ten-byte two's complement varints
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def example(features: dict, packed: bool = True) -> bytes:
    """A serialised tf.train.Example: bytes → bytes_list, int → int64_list, float → float_list."""
    entries = b""
    for name, values in features.items():
        if isinstance(values[0], bytes):
            feature = field(1, b"".join(field(1, v) for v in values))
        elif isinstance(values[0], float):
            feature = field(2, field(1, struct.pack(f"<{len(values)}f", *values)))
        elif packed:
            feature = field(3, field(1, b"".join(varint(v) for v in values)))
        else:
            feature = field(3, b"".join(varint(1 << 3 | 0) + varint(v) for v in values))
        entries += field(1, field(1, name.encode()) + field(2, feature))
    return field(1, entries)


def masked(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + masked(length) + data + masked(data)


def test_examples_decode_to_their_features():
    data = example({"image": [b"\x89PNG fake"], "label": [7], "scores": [0.5, -2.0]})
    assert parse_example(data) == {"image": [b"\x89PNG fake"], "label": [7], "scores": [0.5, -2.0]}
    assert parse_example(example({"label": [3, -1, 2**40]}, packed=False)) == {"label": [3, -1, 2**40]}


def test_records_are_read_with_offsets_and_corruption_is_reported(tmp_path):
    records = [record(example({"image": [bytes([k]) * 50], "label": [k]})) for k in range(3)]
    path = tmp_path / "class.tfrecords"
    path.write_bytes(b"".join(records))
    read = list(read_records(path))
    assert [offset for offset, _ in read] == [0, len(records[0]), len(records[0]) + len(records[1])]
    assert [parse_example(data)["label"] for _, data in read] == [[0], [1], [2]]

    damaged = bytearray(b"".join(records))
    damaged[len(records[0]) + 20] ^= 0xFF  # a byte of the second record's data
    path.write_bytes(bytes(damaged))
    read = list(read_records(path))
    assert isinstance(read[1][1], CorruptRecord) and read[1][1].reason == "data checksum mismatch"
    assert f"{path} at byte {len(records[0])}" in str(read[1][1])
    assert parse_example(read[2][1])["label"] == [2], "reading goes on after a bad data checksum"

    path.write_bytes(b"".join(records)[:-10])
    *_, (offset, last) = read_records(path)
    assert isinstance(last, CorruptRecord) and last.reason == "truncated record" and offset == len(records[0]) * 2
    damaged = bytearray(b"".join(records))
    damaged[2] ^= 0xFF  # the first length
    path.write_bytes(bytes(damaged))
    assert [r.reason for _, r in read_records(path)] == ["length checksum mismatch"]


def test_malformed_protobuf_is_a_value_error():
    with pytest.raises(ValueError, match="truncated"):
        parse_example(field(1, b"")[:1] + b"\x0a\x05ab")


def test_the_library_writer_matches_the_format():
    from hf_fewshot.data.tfrecord import frame_record, serialize_example

    assert frame_record(serialize_example(b"jpeg", 12)) == record(example({"image": [b"jpeg"], "label": [12]}))
