"""Read the records of an offline W&B run file (run-*.wandb): a LevelDB-style log of protobuf Records.

wandb >= 0.19 no longer ships a Python reader; the format is small: a 7-byte header (':W&B', magic, version),
then 32 KiB blocks of chunks with a 7-byte header (crc32, little-endian length, type: full/first/middle/last).
"""

import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
HEADER = 7


def read_records(path: Path) -> list:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    records, pending, offset = [], b"", HEADER
    while offset + HEADER <= len(data):
        left_in_block = BLOCK - offset % BLOCK
        if left_in_block < HEADER:
            offset += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + HEADER])
        chunk = data[offset + HEADER : offset + HEADER + length]
        offset += HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def config_and_summary(path: Path) -> tuple[dict, dict]:
    """The logged config keys (top level) and the final summary values (JSON strings)."""
    config, summary = {}, {}
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            config.update({item.key: item.value_json for item in record.config.update})
        elif kind == "summary":
            summary.update({item.key: item.value_json for item in record.summary.update})
        elif kind == "history":
            summary.update({item.key: item.value_json for item in record.history.item if item.key})
    return config, summary
