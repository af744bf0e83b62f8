"""One bundle of what every pass over the shards without augmentation needs (evaluation, clustering, reports), and
the objids of the samples such a pass saw, as the tables written at the end print them."""

from __future__ import annotations

import contextlib
import functools
import json
from dataclasses import dataclass

import torch

from .manifest import load_manifest
from .objids import MISSING_OBJID
from .streams import iter_samples, shard_paths


@dataclass(frozen=True)
class EvalData:
    shards: str  # the shards folder (manifest.json beside the splits)
    manifest: dict
    batch_size: int  # per device (eval.batch_size)
    num_workers: int  # dataloader processes per rank
    grayscale: bool  # the run's data.grayscale: images are seen as in training
    device: torch.device
    # The forward's autocast dtype: a training run's own (bf16 on GPUs by default) for its re-clusterings; None
    # (full precision) for the reports a run ends with and for the evaluate / cluster / predict commands.
    autocast_dtype: torch.dtype | None = None

    @classmethod
    def from_config(cls, config, manifest: dict, device: torch.device, num_workers: int | None = None,
                    autocast_dtype: torch.dtype | None = None) -> "EvalData":
        workers = config.data.num_workers if num_workers is None else num_workers
        return cls(str(config.data.shards), manifest, config.eval.batch_size, workers, config.data.grayscale, device,
                   autocast_dtype)


# Accelerate's mixed_precision -> the dtype a forward without gradients autocasts to ("no": full precision)
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def forward_precision(device: torch.device, autocast_dtype: torch.dtype | None):
    """The context a forward pass over the shards runs in: autocast to `autocast_dtype`, or nothing."""
    if autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=autocast_dtype)


def objid_text_maker(shards_dir: str, splits: tuple[str, ...]):
    """A function (integer objid items, sample ids) -> the objids as text, reading the manifest once: from the
    integer items where the manifest says every id is an integer, else (text ids, shards packed before
    objid_type was recorded) from the samples' records, read once, at the first call that needs them."""
    kind = load_manifest(shards_dir).get("objid_type", "string")
    records = functools.cache(lambda: objids(shards_dir, splits))

    def texts(values, ids) -> list[str]:
        if kind is None:
            return [""] * len(ids)
        if kind == "int64" and values is not None:
            return ["" if value == MISSING_OBJID else str(value) for value in values.tolist()]
        found = records()
        return ["" if found.get(sample_id) is None else str(found[sample_id]) for sample_id in ids.tolist()]

    return texts


def objid_texts(values, shards_dir: str, splits: tuple[str, ...], ids) -> list[str]:
    """The objids of the samples `ids` as text (see objid_text_maker), for one table written at once."""
    return objid_text_maker(shards_dir, splits)(values, ids)


def objids(shards_dir: str, splits: tuple[str, ...]) -> dict:
    """{sample id: the catalog's objid (None when absent)} of the given splits, from the samples' records."""
    found = {}
    for split in splits:
        for raw in iter_samples(shard_paths(shards_dir, split)):
            record = json.loads(raw["json"])
            found[record["id"]] = record.get("meta", {}).get("objid")
    return found
