"""The core every way of predicting shares (`stellar-dist predict`, its FOLDER/ parts, `predict_catalog`): one
chunk of rows prepared in DataLoader workers and classified, each object's nearest cluster, the prediction columns
of a list of rows, and the provenance an output records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
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


def predictions_of_rows(model, description: dict, rows: list[tuple[int, tuple]], device, *, batch_size: int,
                        workers: int, unusual_below: float) -> pd.DataFrame:
    """The prediction columns of `rows` ((input index, (objid, path, payload)) as predict's inputs yield them),
    one output row per input row in the given order, prepared and classified in chunks."""
    classes, clusters = description["classes"], description["cluster_tensors"]
    clusters = clusters if "centroids" in clusters else None
    far = (description.get("cluster") or {}).get("far_distance", float("inf"))
    count = len(rows)
    position = {index: place for place, (index, _) in enumerate(rows)}
    probabilities = np.full((count, len(classes)), np.nan, dtype=np.float32)
    cluster, distance = np.full(count, -1, dtype=np.int64), np.full(count, np.nan)
    reasons = [""] * count
    for start in range(0, count, CHUNK_ROWS):
        kept, values, features, rejected = classify_rows(model, rows[start : start + CHUNK_ROWS], description,
                                                         device, batch_size, workers)
        places = np.array([position[int(index)] for index in kept.tolist()], dtype=np.int64)
        probabilities[places] = values.cpu().numpy()
        if clusters is not None and len(places):
            assignment, far_from = nearest_cluster(features, clusters)
            cluster[places], distance[places] = assignment.cpu().numpy(), far_from.cpu().numpy()
        for index, reason in rejected:
            reasons[position[int(index)]] = reason
    read = np.array([not reason for reason in reasons], dtype=bool)
    best = np.nan_to_num(probabilities).argmax(1) if count else np.zeros(0, dtype=np.int64)
    maximum = np.where(read, np.nan_to_num(probabilities, nan=-1.0).max(1, initial=-1.0), np.nan)
    table = {"predicted_class": [classes[index] if ok else "" for index, ok in zip(best, read)],
             **{f"p_{name}": probabilities[:, column] for column, name in enumerate(classes)},
             "max_probability": maximum.astype(np.float32)}
    unusual = read & (np.nan_to_num(maximum, nan=1.0) < unusual_below)
    if clusters is not None:
        table |= {"cluster": cluster, "cluster_distance": distance.astype(np.float32)}
        unusual |= read & (np.nan_to_num(distance, nan=0.0) > far)
    return pd.DataFrame(table | {"unusual": unusual, "rejected_reason": reasons})
