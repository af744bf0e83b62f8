"""One pass over packed shards for `select`: every labeled and unlabeled object's features, memory flat in N.

Every rank reads its share of the shards (as predict does) and the rows are gathered on rank 0, sorted by id: the
same choice for any number of ranks. Cold (no model): the photometric numbers of photometry.py, ~80 floats a row.
Warm (a trained model): the model's backbone features, reduced on each rank by a seeded random orthonormal
projection to `RANDOM_DIM` (the same on every rank, no data needed), then on rank 0 whitened onto `PROJECTED_DIM`
principal axes (10^6 rows x 128 float32 = 512 MB instead of 2 GB for resnet18's 512 floats), with the class
probabilities. Test rows are never read: they measure the model, so they must not steer which objects get
spectra.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.photometry import measure, standardize
from ..data.streams import ItemMaker, OnceStream, make_loader, shard_paths

SPLITS = ("labeled", "unlabeled")  # selection candidates come from unlabeled; labeled rows mark covered regions
RANDOM_DIM = 128
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


def _random_axes(width: int, seed: int = 0) -> torch.Tensor | None:
    """A seeded random orthonormal basis (width x RANDOM_DIM), the same on every rank without any data; None when
    the features are narrow already."""
    if width <= RANDOM_DIM:
        return None
    generator = torch.Generator().manual_seed(seed)
    axes, _ = torch.linalg.qr(torch.randn(width, RANDOM_DIM, generator=generator))
    return axes


def whiten(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """Principal axes of at most PROJECTION_FIT rows (every axis scaled to unit variance), then L2-normalised.
    Not the cluster stage's `pca_whiten`: its eigenvalue floor (+1e-5) damps the weak axes, and with it the
    two-round choice of 100 real spectra fell from test macro-F1 0.761 to 0.714 (draw 0, bench/selection_cnn.py)."""
    rng = np.random.default_rng(seed)
    sample = features if len(features) <= PROJECTION_FIT else features[rng.choice(len(features), PROJECTION_FIT,
                                                                                  replace=False)]
    sample = torch.from_numpy(sample).double()
    mean = sample.mean(dim=0)
    _, singular, vectors = torch.linalg.svd(sample - mean, full_matrices=False)
    keep = min(PROJECTED_DIM, len(singular))
    axes = vectors[:keep].T / (singular[:keep] / max(1, len(sample) - 1) ** 0.5).clamp(min=1e-8)
    parts = [torch.nn.functional.normalize((torch.from_numpy(features[start : start + 65536]).double() - mean) @ axes,
                                           dim=1).float().numpy() for start in range(0, len(features), 65536)]
    return np.concatenate(parts) if parts else np.zeros((0, keep), np.float32)


@torch.no_grad()
def collect(shards_dir: str, manifest: dict, model=None, batch_size: int = 256, workers: int = 2,
            device: torch.device = torch.device("cpu")) -> Rows | None:
    """The features of every labeled and unlabeled sample (an unreadable one is left out), on rank 0 (None on the
    other ranks)."""
    from ..core import dist

    parts = {"ids": [], "labeled": [], "shards": [], "features": [], "probabilities": []}
    axes = _random_axes(model.feature_dim) if model is not None else None
    maker = ItemMaker.for_shards("plain", manifest)
    for split in SPLITS:
        stream = OnceStream(shard_paths(shards_dir, split), maker, batch_size, rank=dist.rank(),
                            world_size=dist.world_size())
        for batch in make_loader(stream, workers):
            valid = batch["valid"]
            images = batch["image"][valid].to(device)
            parts["ids"].append(batch["id"][valid])
            parts["labeled"].append(torch.full((int(valid.sum()),), split == "labeled"))
            parts["shards"].append(batch["shard"][valid])
            if model is None:
                parts["features"].append(measure(images).cpu())
                continue
            features = model.features(images).float()
            parts["probabilities"].append(torch.softmax(model.classifier(features), dim=1).cpu())
            parts["features"].append((features.cpu() @ axes) if axes is not None else features.cpu())
    width = measure(torch.zeros(1, maker.stretch.channels if maker.stretch else 3, 16, 16)).shape[1] \
        if model is None else (RANDOM_DIM if axes is not None else model.feature_dim)
    empty = {"ids": torch.zeros(0, dtype=torch.long), "labeled": torch.zeros(0, dtype=torch.bool),
             "shards": torch.zeros(0, dtype=torch.long), "features": torch.zeros(0, width),
             "probabilities": torch.zeros(0, len(manifest["classes"]) or 1)}
    gathered = {}
    for key, value in parts.items():
        if key == "probabilities" and model is None:
            continue
        local = torch.cat(value) if value else empty[key]
        local = local.to(torch.uint8) if key == "labeled" else local
        whole = dist.gather_to_main(local.to(device))
        gathered[key] = None if whole is None else whole.cpu().numpy()
    if not dist.is_main():
        return None
    order = np.argsort(gathered["ids"], kind="stable")  # the same rows in the same order for any number of ranks
    features = gathered["features"][order]
    features = standardize(torch.from_numpy(features)).numpy() if model is None else whiten(features)
    return Rows(gathered["ids"][order].astype(np.int64), gathered["labeled"][order].astype(bool),
                gathered["shards"][order].astype(np.int32), np.ascontiguousarray(features, dtype=np.float32),
                gathered["probabilities"][order] if model is not None else None)
