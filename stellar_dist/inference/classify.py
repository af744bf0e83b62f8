"""The core every way of predicting shares (`stellar-dist predict`, its FOLDER/ parts, `predict_catalog`): one
chunk of rows prepared in DataLoader workers and classified, each object's nearest cluster, and the provenance
an output records."""

from __future__ import annotations

from pathlib import Path

import torch

from .inputs import PreparedRows

CHUNK_ROWS = 2048


@torch.no_grad()
def classify_rows(model, rows: list[tuple[int, tuple]], description: dict, device, batch_size: int, workers: int):
    """This rank's rows of a chunk: (row indices, probabilities, features, rejected [(row, reason)]). Images are
    read and prepared in `workers` DataLoader processes (0: in this one)."""
    kept, tensors, rejected = [], [], []
    loader = torch.utils.data.DataLoader(PreparedRows(rows, description), batch_size=64, num_workers=workers,
                                         collate_fn=list)
    for part in loader:
        for index, tensor, reason in part:
            if tensor is None:
                rejected.append((index, reason))
            else:
                kept.append(index)
                tensors.append(tensor)
    probabilities, features = [], []
    for start in range(0, len(tensors), batch_size):
        batch = torch.stack(tensors[start : start + batch_size]).to(device)
        embedding = model.features(batch)
        features.append(embedding.float())
        probabilities.append(model.classifier(embedding).float().softmax(-1))
    width = model.feature_dim
    kept = torch.tensor(kept, dtype=torch.long, device=device)
    probabilities = torch.cat(probabilities) if probabilities else torch.zeros(0, len(description["classes"]),
                                                                               device=device)
    features = torch.cat(features) if features else torch.zeros(0, width, device=device)
    finite = torch.isfinite(probabilities).all(1) & torch.isfinite(features).all(1)
    if not bool(finite.all()):  # an image with NaN / inf pixels: listed, never a NaN row in the output
        rejected += [(int(index), "non-finite probabilities: the image holds NaN or infinite values")
                     for index in kept[~finite].tolist()]
        kept, probabilities, features = kept[finite], probabilities[finite], features[finite]
    return kept, probabilities, features, rejected


def nearest_cluster(features: torch.Tensor, clusters: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(cluster id, distance to its centroid) in the space the run's last clustering was fit in."""
    from ..clustering.cluster import assign
    from ..clustering.recluster import reduce_features

    reduced = reduce_features(features, clusters.get("pca_mean"), clusters.get("pca_projection"))
    assignment, squared = assign(reduced, clusters["centroids"].to(reduced.device))
    return assignment, squared.clamp(min=0).sqrt()


def provenance(model_folder: Path, description: dict) -> dict:
    """What an output table records about where its predictions come from."""
    import datetime
    import hashlib

    from .. import __version__
    from .model_folder import WEIGHTS

    digest = hashlib.sha256()
    with open(model_folder / WEIGHTS, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return {"model": str(Path(model_folder).resolve()), "model_sha256": digest.hexdigest()[:16],
            "model_commit": description.get("git_commit") or "", "classes": ",".join(description["classes"]),
            "stellar_dist": __version__, "date": datetime.datetime.now(datetime.timezone.utc).isoformat()[:19]}
