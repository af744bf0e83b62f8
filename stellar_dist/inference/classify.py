"""The computing kernel of the prediction pipeline (pipeline.py): one chunk of rows prepared in DataLoader workers
and classified, each object's nearest cluster, the rule for `unusual`, the domain-shift warning, and the
provenance an output records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


def nearest_cluster(features: torch.Tensor, clusters: dict) -> dict[str, torch.Tensor]:
    """Each object's cluster and distance to its centroid in the space the run's last clustering was fit in, and,
    where that space is a whitened PCA, its distance from the mean training feature in whitened units
    (`feature_distance`, the measure `unusual` uses; clustering/recluster.py's ClusterState)."""
    from ..clustering.cluster import assign
    from ..clustering.features import reduce_features
    from ..clustering.recluster import whitened_distance

    reduced = reduce_features(features, clusters.get("pca_mean"), clusters.get("pca_projection"))
    assignment, squared = assign(reduced, clusters["centroids"].to(reduced.device))
    columns = {"cluster": assignment, "cluster_distance": squared.clamp(min=0).sqrt()}
    if clusters.get("pca_projection") is not None:
        columns["feature_distance"] = whitened_distance(features, clusters["pca_mean"], clusters["pca_projection"])
    return columns


def cluster_columns(description: dict) -> tuple[str, ...]:
    """The clustering columns a model's predictions have (none without a clustering)."""
    tensors = description["cluster_tensors"]
    if "centroids" not in tensors:
        return ()
    return ("cluster", "cluster_distance", *(("feature_distance",) if "pca_projection" in tensors else ()))


def far_rule(description: dict) -> tuple[str | None, float]:
    """(column, threshold) beyond which an object is `unusual` as unlike the training images: the whitened feature
    distance's 99th training percentile (calibrated: 1% of the training images lie beyond it); models saved before
    it existed: the cluster distance's mean + 3 std; no clustering: none."""
    info = description.get("cluster") or {}
    if info.get("far_feature_distance") is not None and "feature_distance" in cluster_columns(description):
        return "feature_distance", float(info["far_feature_distance"])
    return ("cluster_distance", float(info["far_distance"])) if info.get("far_distance") is not None else (None, 0.0)


def unusual_flags(maximum: np.ndarray, columns: dict[str, np.ndarray], unusual_below: float,
                  far: tuple[str | None, float]) -> tuple[np.ndarray, np.ndarray]:
    """The one rule for `unusual`, as its two reasons per object: (low_confidence, beyond). Low confidence: the
    model hesitates (max_probability below `unusual_below`); beyond: its far_rule column exceeds the threshold
    (unlike the training images). `unusual` is either. NaN (an unread object) is neither."""
    column, threshold = far
    beyond = np.nan_to_num(columns[column], nan=0.0) > threshold if column in columns else \
        np.zeros(len(maximum), dtype=bool)
    return np.nan_to_num(maximum, nan=1.0) < unusual_below, beyond


def shift_warning(num_far: int, num_classified: int, quantile: float = 0.99) -> str | None:
    """One line when far more objects lie beyond the training images' `quantile` than the 1 - quantile expected
    of images like the training ones (binomial test, p < 0.001): a domain shift no single-object flag shows."""
    from scipy.stats import binomtest

    expected = 1 - quantile
    if num_classified < 50 or num_far <= expected * num_classified or \
            binomtest(num_far, num_classified, expected, alternative="greater").pvalue >= 1e-3:
        return None
    return (f"warning: {num_far} of {num_classified} objects ({num_far / num_classified:.1%}) lie farther from the "
            f"training images' features than {quantile:.0%} of the training images ({expected:.0%} expected): "
            "these images may differ from the training ones (another survey, filters, pixel scale or "
            "preprocessing); check the `unusual` rows before trusting the predictions")


def provenance(model_folder: Path, description: dict, model_sha256: str | None = None) -> dict:
    """What an output table records about where its predictions come from."""
    import datetime

    from .. import __version__
    from ..core.files import sha256_of
    from .model_folder import WEIGHTS

    return {"model": str(Path(model_folder).resolve()), "model_sha256": (model_sha256 or sha256_of(model_folder / WEIGHTS))[:16],
            "model_commit": description.get("git_commit") or "", "classes": ",".join(description["classes"]),
            "stellar_dist": __version__, "date": datetime.datetime.now(datetime.timezone.utc).isoformat()[:19]}
