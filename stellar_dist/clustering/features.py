"""The backbone features a clustering needs, with memory flat in the size of the catalog.

Pass 1 (`extract_features`) keeps the backbone feature (512 floats for resnet18: 2 KB a sample) only for a bounded
sample chosen by a seeded hash of the sample id, the same whatever the number of ranks: the rows the PCA and the
k-means are fit on (at most `cluster.fit_samples`, 200,000 by default, labeled + unlabeled samples over all ranks)
and the linear probe's labeled and test rows (at most `cluster.probe_samples` of each). Samples outside it are
skipped before they are decoded. Pass 2 (`assign_stream`) streams every sample again, reduces each batch into the
clustering's space and keeps per sample only what the tables need (`Assigned`: ~30 bytes). Where every split is
within its limit (tests, the Quickstart, the 20,000 SDSS cutouts), pass 1 keeps every sample and pass 2 reuses its
features (`assign_kept`): one pass, the same clusters as fitting on everything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core import dist
from ..data.eval_data import forward_precision
from .cluster import HASH_PRIME, assign, id_hash, id_hash_int

SPLIT_CODES = {"labeled": 0, "unlabeled": 1, "test": 2}
FIT_SAMPLE_LIMIT = 200_000  # cluster.fit_samples' default (faiss then fits on a further k x 256 of them)
PROBE_LIMIT = 50_000  # cluster.probe_samples' default


@dataclass
class LocalFeatures:
    """This rank's kept samples: ids, true class (-1 unknown), split code, backbone features, the number of the
    shard each came from, and whether it belongs to the fit sample."""

    ids: torch.Tensor
    labels: torch.Tensor
    splits: torch.Tensor
    features: torch.Tensor
    shards: torch.Tensor
    objids: torch.Tensor | None = None  # integer objids (data/objids.py): assignments.csv reads no shard
    fit: torch.Tensor | None = None  # rows PCA and k-means are fit on (None: every labeled + unlabeled row)

    def __post_init__(self):
        if self.fit is None:
            self.fit = self.splits != SPLIT_CODES["test"]


@dataclass(frozen=True)
class Selection:
    """Which samples pass 1 keeps: those whose id hash lies below a split's threshold (None: every sample)."""

    seed: int
    fit_threshold: int | None
    labeled_probe_threshold: int | None
    test_threshold: int | None

    @property
    def complete(self) -> bool:
        return self.fit_threshold is None and self.labeled_probe_threshold is None and self.test_threshold is None

    def keep_threshold(self, split: str) -> int | None:
        if split == "unlabeled":
            return self.fit_threshold
        if split == "test":
            return self.test_threshold
        if self.fit_threshold is None or self.labeled_probe_threshold is None:
            return None
        return max(self.fit_threshold, self.labeled_probe_threshold)

    def fit_mask(self, ids: torch.Tensor, split: str) -> torch.Tensor:
        if split == "test":
            return torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
        if self.fit_threshold is None:
            return torch.ones(len(ids), dtype=torch.bool, device=ids.device)
        return id_hash(ids, self.seed) < self.fit_threshold


def _threshold(count: int, limit: int) -> int | None:
    return None if count <= limit else int(HASH_PRIME * (limit / count))


def plan_selection(manifest: dict, seed: int, fit_limit: int = FIT_SAMPLE_LIMIT,
                   probe_limit: int = PROBE_LIMIT) -> Selection:
    counts = manifest["num_samples"]
    return Selection(seed, _threshold(counts["labeled"] + counts["unlabeled"], fit_limit),
                     _threshold(counts["labeled"], probe_limit), _threshold(counts["test"], probe_limit))


@dataclass(frozen=True)
class IdHashBelow:
    """A stream filter (picklable for DataLoader workers): the raw sample's id hashes below `threshold`."""

    threshold: int
    seed: int

    def __call__(self, raw: dict) -> bool:
        try:
            return id_hash_int(int(json.loads(raw["json"])["id"]), self.seed) < self.threshold
        except (KeyError, ValueError, TypeError):
            return True  # an unreadable record is the item maker's to refuse (and list), not the filter's


def _batches(shards_dir: str, manifest: dict, split: str, *, batch_size: int, num_workers: int, grayscale: bool,
             keep=None):
    from ..data.streams import ItemMaker, OnceStream, make_loader, shard_paths

    stream = OnceStream(shard_paths(shards_dir, split), ItemMaker.for_shards("plain", manifest, grayscale),
                        batch_size, rank=dist.rank(), world_size=dist.world_size(), keep=keep)
    for batch in make_loader(stream, num_workers, pin_memory=torch.cuda.is_available()):  # copied without a wait
        if not bool(batch["valid"].all()):  # an unreadable sample is left out of the clustering
            batch = {key: value[batch["valid"]] for key, value in batch.items()}
        yield batch


def _describe(batch: dict, split: str, device: torch.device) -> dict:
    # Copies: a tensor received from a DataLoader worker holds a shared-memory file descriptor for as long as it
    # lives; keeping ~5 per batch ran out of descriptors ("Too many open files") at 10^6 samples in one process.
    def copied(tensor):
        return tensor.to(device, copy=True, non_blocking=True)

    return {"ids": copied(batch["id"]),
            "labels": copied(batch["true_label"] if split == "unlabeled" else batch["label"]),
            "splits": torch.full((len(batch["id"]),), SPLIT_CODES[split], dtype=batch["id"].dtype, device=device),
            "shards": copied(batch["shard"]), "objids": copied(batch["objid"])}


def _concatenated(parts: dict[str, list], empty_width: dict[str, int], device: torch.device
                  ) -> dict[str, torch.Tensor]:
    """A rank without samples still enters the gathers: its empty tensors on its own device (NCCL takes no other)."""
    return {key: torch.cat(value) if value else torch.zeros((0, empty_width[key]) if key in empty_width else 0,
                                                              dtype=torch.float32 if key in empty_width else torch.long,
                                                              device=device)
            for key, value in parts.items()}


@torch.no_grad()
def extract_features(model, shards_dir: str, manifest: dict, *, batch_size: int, num_workers: int, grayscale: bool,
                     device: torch.device, selection: Selection | None = None,
                     autocast_dtype: torch.dtype | None = None) -> LocalFeatures:
    """Pass 1: the backbone features of this rank's share of the selected samples (every sample without a
    selection); the forward autocast to `autocast_dtype` when given, the features kept in float32."""
    was_training = model.training
    model.eval()
    parts: dict[str, list] = {name: [] for name in ("ids", "labels", "splits", "features", "shards", "objids", "fit")}
    for split in SPLIT_CODES:
        threshold = None if selection is None else selection.keep_threshold(split)
        keep = None if threshold is None else IdHashBelow(threshold, selection.seed)
        for batch in _batches(shards_dir, manifest, split, batch_size=batch_size, num_workers=num_workers,
                              grayscale=grayscale, keep=keep):
            for key, value in _describe(batch, split, device).items():
                parts[key].append(value)
            with forward_precision(device, autocast_dtype):
                features = model.features(batch["image"].to(device, non_blocking=True))
            parts["features"].append(features.float())
            ids = parts["ids"][-1]
            parts["fit"].append(selection.fit_mask(ids, split) if selection is not None
                                else torch.full_like(ids, split != "test", dtype=torch.bool))
    model.train(was_training)
    found = _concatenated(parts, {"features": getattr(model, "feature_dim", 1)}, device)
    return LocalFeatures(**found | {"fit": found["fit"].bool()})


ROW_BLOCK = 65536  # rows converted to float64 at a time: memory flat in N (1M x 1,280 float64 would be 10 GB)


def reduce_features(features: torch.Tensor, mean: torch.Tensor | None, projection: torch.Tensor | None):
    """New samples into the space of a clustering (see ClusterState), in row blocks."""
    parts = []
    for start in range(0, len(features), ROW_BLOCK):
        x = features[start : start + ROW_BLOCK].double()
        if projection is not None:
            x = (x - mean.to(x.device, x.dtype)) @ projection.to(x.device, x.dtype)
        parts.append(F.normalize(x, dim=1).float())
    width = features.shape[1] if projection is None else projection.shape[1]
    return torch.cat(parts) if parts else features.new_zeros(0, width, dtype=torch.float32)


@dataclass
class Assigned:
    """Every sample of this rank after a clustering: what the tables and reports need, ~30 bytes a sample."""

    ids: torch.Tensor  # int64
    labels: torch.Tensor  # int16: true class, -1 unknown
    splits: torch.Tensor  # int8: SPLIT_CODES
    shards: torch.Tensor  # int32: the shard's number
    objids: torch.Tensor  # int64 (MISSING_OBJID where none)
    assignment: torch.Tensor  # int32: nearest centroid
    distance: torch.Tensor  # float32: distance to it in the whitened PCA space

    @property
    def fit(self) -> torch.Tensor:
        return self.splits != SPLIT_CODES["test"]


def _assigned(described: dict, reduced: torch.Tensor, centroids: torch.Tensor) -> dict:
    assignment, _ = assign(reduced, centroids)
    distance = (reduced - centroids.to(reduced.device, reduced.dtype)[assignment]).norm(dim=1)
    return {"ids": described["ids"].long(), "labels": described["labels"].to(torch.int16),
            "splits": described["splits"].to(torch.int8), "shards": described["shards"].to(torch.int32),
            "objids": described["objids"].long(), "assignment": assignment.to(torch.int32),
            "distance": distance.float()}


def assign_kept(local: LocalFeatures, reduced: torch.Tensor, centroids: torch.Tensor) -> Assigned:
    """Pass 2 from pass 1 (when it kept every sample): `reduced`, its rows in the clustering's space."""
    described = {"ids": local.ids, "labels": local.labels, "splits": local.splits, "shards": local.shards,
                 "objids": local.objids if local.objids is not None else torch.zeros_like(local.ids)}
    return Assigned(**_assigned(described, reduced, centroids))


@torch.no_grad()
def assign_stream(model, shards_dir: str, manifest: dict, state, *, batch_size: int, num_workers: int,
                  grayscale: bool, device: torch.device, autocast_dtype: torch.dtype | None = None) -> Assigned:
    """Pass 2: every sample of this rank, reduced and assigned batch by batch; no feature is kept."""
    was_training = model.training
    model.eval()
    parts: dict[str, list] = {name: [] for name in Assigned.__dataclass_fields__}
    for split in SPLIT_CODES:
        for batch in _batches(shards_dir, manifest, split, batch_size=batch_size, num_workers=num_workers,
                              grayscale=grayscale):
            with forward_precision(device, autocast_dtype):
                features = model.features(batch["image"].to(device, non_blocking=True))
            reduced = reduce_features(features.float(), state.pca_mean, state.pca_projection)
            for key, value in _assigned(_describe(batch, split, device), reduced, state.centroids).items():
                parts[key].append(value)
    model.train(was_training)
    kinds = {"ids": torch.long, "labels": torch.int16, "splits": torch.int8, "shards": torch.int32,
             "objids": torch.long, "assignment": torch.int32, "distance": torch.float32}
    return Assigned(**{key: torch.cat(value) if value else torch.zeros(0, dtype=kinds[key], device=device)
                       for key, value in parts.items()})
