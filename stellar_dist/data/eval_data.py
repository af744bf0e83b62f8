"""One bundle of what every pass over the shards without augmentation needs (evaluation, clustering, reports), and
the objids of the samples such a pass saw, as the tables written at the end print them."""

from __future__ import annotations

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

    @classmethod
    def from_config(cls, config, manifest: dict, device: torch.device, num_workers: int | None = None) -> "EvalData":
        workers = config.data.num_workers if num_workers is None else num_workers
        return cls(str(config.data.shards), manifest, config.eval.batch_size, workers, config.data.grayscale, device)


def objid_lookup(shards_dir: str, splits: tuple[str, ...]) -> dict | None:
    """{sample id: objid} read from the shards where the samples' integer objids cannot say it (text ids, shards
    packed before objid_type was recorded); None where they can (or there are none)."""
    kind = load_manifest(shards_dir).get("objid_type", "string")
    return None if kind in (None, "int64") else objids(shards_dir, splits)


def objid_texts(values, shards_dir: str, splits: tuple[str, ...], ids, lookup: dict | None = None) -> list[str]:
    """The objids of the samples `ids` as text: from their integer items (`values`) where the manifest says every
    id is an integer, else (text ids, shards packed before objid_type was recorded) from `lookup` or the shards."""
    kind = load_manifest(shards_dir).get("objid_type", "string")
    if kind is None:
        return [""] * len(ids)
    if kind == "int64" and values is not None:
        return ["" if value == MISSING_OBJID else str(value) for value in values.tolist()]
    found = objids(shards_dir, splits) if lookup is None else lookup
    return ["" if found.get(sample_id) is None else str(found[sample_id]) for sample_id in ids.tolist()]


def objids(shards_dir: str, splits: tuple[str, ...]) -> dict:
    """{sample id: the catalog's objid (None when absent)} of the given splits, from the samples' records."""
    found = {}
    for split in splits:
        for raw in iter_samples(shard_paths(shards_dir, split)):
            record = json.loads(raw["json"])
            found[record["id"]] = record.get("meta", {}).get("objid")
    return found
