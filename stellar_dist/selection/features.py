"""One pass over packed shards for `select`: every labeled and unlabeled object's features, memory flat in N.

Cold (no model): the photometric numbers of photometry.py, ~80 floats a row. Warm (a trained model): the model's
backbone features projected to `PROJECTED_DIM` principal axes (fit on the first `PROJECTION_FIT` rows; 10^6 rows x
64 float32 = 256 MB instead of 2 GB for resnet18's 512) and its class probabilities. Test rows are never read: they
measure the model, so they must not steer which objects get spectra.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.streams import ItemMaker, OnceStream, make_loader, shard_paths
from .photometry import measure, standardize

SPLITS = ("labeled", "unlabeled")  # selection candidates come from unlabeled; labeled rows mark covered regions
PROJECTED_DIM = 64
PROJECTION_FIT = 20_000


@dataclass
class Rows:
    """Every labeled and unlabeled object, in stream order."""

    ids: np.ndarray  # int64 sample ids (the catalog row numbers)
    labeled: np.ndarray  # bool: the object has a spectrum (labeled split)
    shards: np.ndarray  # int32 shard numbers: where to read the chosen ones again
    features: np.ndarray  # float32 rows x dims
    probabilities: np.ndarray | None  # float32 rows x classes (with a model)


class _Projection:
    """Principal axes of the first PROJECTION_FIT rows, then every batch projected onto them."""

    def __init__(self):
        self.waiting, self.mean, self.axes = [], None, None

    def add(self, features: torch.Tensor) -> list[np.ndarray]:
        if self.axes is None:
            self.waiting.append(features)
            if sum(len(part) for part in self.waiting) < PROJECTION_FIT:
                return []
            self._fit()
            ready, self.waiting = torch.cat(self.waiting), []
            return [self._project(ready)]
        return [self._project(features)]

    def finish(self) -> list[np.ndarray]:
        if self.axes is None and self.waiting:
            self._fit()
            return [self._project(torch.cat(self.waiting))]
        return []

    def _fit(self) -> None:
        sample = torch.cat(self.waiting).double()
        self.mean = sample.mean(dim=0)
        _, singular, vectors = torch.linalg.svd(sample - self.mean, full_matrices=False)
        keep = min(PROJECTED_DIM, len(singular))
        scale = singular[:keep] / max(1, len(sample) - 1) ** 0.5
        self.axes = vectors[:keep].T / scale.clamp(min=1e-8)  # whitened: every axis counts alike

    def _project(self, features: torch.Tensor) -> np.ndarray:
        projected = (features.double() - self.mean) @ self.axes
        return torch.nn.functional.normalize(projected, dim=1).float().numpy()


@torch.no_grad()
def collect(shards_dir: str, manifest: dict, model=None, batch_size: int = 256, workers: int = 2) -> Rows:
    """The features of every labeled and unlabeled sample (an unreadable one is left out and counted)."""
    parts = {"ids": [], "labeled": [], "shards": [], "features": [], "probabilities": []}
    projection = _Projection() if model is not None else None
    maker = ItemMaker.for_shards("plain", manifest)
    for split in SPLITS:
        stream = OnceStream(shard_paths(shards_dir, split), maker, batch_size, rank=0, world_size=1)
        for batch in make_loader(stream, workers):
            valid = batch["valid"]
            images = batch["image"][valid]
            parts["ids"].append(batch["id"][valid].numpy())
            parts["labeled"].append(np.full(int(valid.sum()), split == "labeled"))
            parts["shards"].append(batch["shard"][valid].numpy())
            if model is None:
                parts["features"].append(measure(images).numpy())
                continue
            features = model.features(images).float()
            parts["probabilities"].append(torch.softmax(model.classifier(features), dim=1).numpy())
            parts["features"].extend(projection.add(features))
    if projection is not None:
        parts["features"].extend(projection.finish())
    joined = {key: np.concatenate(value) if value else None for key, value in parts.items()}
    if joined["ids"] is None:
        return Rows(np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, np.int32), np.zeros((0, 1), np.float32),
                    None)
    features = joined["features"]
    if model is None:
        features = standardize(torch.from_numpy(features)).numpy()
    return Rows(joined["ids"].astype(np.int64), joined["labeled"], joined["shards"].astype(np.int32),
                np.ascontiguousarray(features, dtype=np.float32), joined["probabilities"])
