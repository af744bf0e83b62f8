"""DeepCluster re-clustering across ranks: features -> PCA-whitening -> L2 -> k-means -> assignment table.

Each rank extracts backbone features (eval mode, no augmentation) for its share of a bounded sample of the
samples (clustering/features.py: every sample of a small catalog). PCA statistics are all-reduced (sums and outer
products), so every rank derives the same whitening without moving features. The `faiss` backend gathers a
bounded sample of the reduced labeled + unlabeled features (256 per centroid, chosen and sorted by sample id, so the
result does not depend on the number of ranks) to run Faiss on rank 0 and broadcasts the centroids; the `torch`
backend runs a distributed k-means where only centroid sums and counts travel (`fit_clustering`). Every rank then
assigns every one of its samples (`features.assign_kept` / `assign_stream`), and the (id -> cluster) table is
completed by an all-reduced max (`finish_clustering`): any rank may stream any sample. Test samples are assigned
to the nearest centroid but never fit it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..core import dist
from .cluster import bounded_sample, kmeans_faiss, kmeans_torch, resolve_backend
from .features import ROW_BLOCK, Assigned, LocalFeatures, assign_kept, reduce_features


@dataclass
class ClusterState:
    """What training needs from the latest clustering, on the training device; saved in checkpoints."""

    assignments: torch.Tensor  # [num_ids] int16/int32 cluster of each sample id, -1 for test / not clustered
    centroids: torch.Tensor  # [k, pca_dim]
    cluster_weights: torch.Tensor  # [k] loss weights, uniform over clusters: n / (k * n_c)
    num_reclusterings: int = 0
    inertia: float = 0.0
    # How a new sample's backbone features reach the centroids' space (predict): reduced = L2-normalise((f - mean)
    # @ projection); no projection when cluster.pca_dim is 0. `far_distance`: mean + 3 std of the fit samples'
    # distances to their centroid. `far_feature_distance`: the FAR_QUANTILE of the fit samples' whitened distance
    # from the mean feature, ||(f - mean) @ projection|| (a Mahalanobis distance over the top pca_dim axes, before
    # the L2 normalisation that makes every sample look near some centroid): 1% of the training samples lie beyond
    # it by construction, so a larger share among new objects says they differ from the training images.
    pca_mean: torch.Tensor | None = None
    pca_projection: torch.Tensor | None = None
    far_distance: float = float("inf")
    far_feature_distance: float = float("inf")

    def state_dict(self) -> dict:
        return {"assignments": self.assignments, "centroids": self.centroids, "cluster_weights": self.cluster_weights,
                "num_reclusterings": self.num_reclusterings, "inertia": self.inertia, "pca_mean": self.pca_mean,
                "pca_projection": self.pca_projection, "far_distance": self.far_distance,
                "far_feature_distance": self.far_feature_distance}

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device | str = "cpu") -> "ClusterState":
        tensors = {key: value.to(device) for key, value in state.items() if torch.is_tensor(value)}
        return cls(**(state | tensors))


def whitened_distance(features: torch.Tensor, mean: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """Each sample's distance from the mean training feature in whitened units (see ClusterState), in row blocks."""
    parts = [((features[start : start + ROW_BLOCK].double() - mean.to(features.device, torch.float64))
              @ projection.to(features.device, torch.float64)).norm(dim=1).float()
             for start in range(0, len(features), ROW_BLOCK)]
    return torch.cat(parts) if parts else features.new_zeros(0)


FAR_QUANTILE = 0.99  # of the training samples' whitened distances: the `unusual` threshold of predict


def quantile_over_ranks(values: torch.Tensor, quantile: float, low: float = 1e-3, high: float = 1e6,
                        bins: int = 8192) -> float:
    """The `quantile` of `values` (positive) over all ranks, from an all-reduced histogram of their logarithm
    (bins 0.17% wide): memory and traffic flat in the number of samples."""
    logs = values.double().clamp(min=low, max=high).log()
    counts = torch.histc(logs, bins=bins, min=float(torch.tensor(low).log()), max=float(torch.tensor(high).log()))
    counts = dist.all_reduce_sum(counts.double())
    if counts.sum() == 0:
        return float("inf")
    place = int(torch.searchsorted(counts.cumsum(0), quantile * counts.sum()).clamp(max=bins - 1))
    width = (torch.tensor(high).log() - torch.tensor(low).log()) / bins
    return float((torch.tensor(low).log() + (place + 1) * width).exp())  # the bin's upper edge


def pca_whiten(features: torch.Tensor, fit: torch.Tensor, dim: int):
    """Project on the top `dim` principal axes of the fit rows over all ranks, whiten, L2-normalise; returns the
    reduced features and the (mean, projection) that made them (None, None without PCA). Sums are taken in float64
    over row blocks, so no full float64 copy of the features is ever made."""
    if dim <= 0:
        return reduce_features(features, None, None), None, None
    blocks = [(features[start : start + ROW_BLOCK], fit[start : start + ROW_BLOCK])
              for start in range(0, len(features), ROW_BLOCK)]
    width = features.shape[1]
    count = dist.all_reduce_sum(fit.double().sum().reshape(1))
    total = sum((rows[kept].double().sum(0) for rows, kept in blocks),
                torch.zeros(width, dtype=torch.float64, device=features.device))
    mean = dist.all_reduce_sum(total) / count
    scatter = torch.zeros(width, width, dtype=torch.float64, device=features.device)
    for rows, kept in blocks:
        centred = rows[kept].double() - mean
        scatter += centred.T @ centred
    covariance = dist.all_reduce_sum(scatter) / (count - 1).clamp(min=1)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance.cpu())
    top = torch.argsort(eigenvalues, descending=True)[: min(dim, width)]
    projection = (eigenvectors[:, top] / (eigenvalues[top].clamp(min=0) + 1e-5).sqrt()).to(features.device)
    return reduce_features(features, mean, projection), mean, projection


FAISS_POINTS_PER_CENTROID = 256  # faiss's own default sample: more points per centroid barely move the centroids


def _centroids(reduced: torch.Tensor, ids: torch.Tensor, k: int, backend: str, seed: int, iterations: int):
    if resolve_backend(backend) == "torch":
        centroids, _, _ = kmeans_torch(reduced, ids, k, seed, iterations)
        return centroids
    # faiss runs on rank 0: it is sent a bounded sample (chosen by id: the same for any number of ranks)
    sample = bounded_sample(ids, k * FAISS_POINTS_PER_CENTROID, seed)
    gathered, gathered_ids = dist.gather_to_main(reduced[sample]), dist.gather_to_main(ids[sample])
    centroids = torch.zeros(k, reduced.shape[1], device=reduced.device)
    if dist.is_main():
        order = torch.argsort(gathered_ids)
        found, _, _ = kmeans_faiss(gathered[order].cpu().numpy(), k, seed, iterations, ids=gathered_ids[order].cpu())
        centroids = found.to(reduced.device)
    return dist.broadcast(centroids)


def fit_clustering(local: LocalFeatures, *, k: int, backend: str, pca_dim: int, seed: int, iterations: int,
                   num_reclusterings: int = 0) -> tuple[ClusterState, torch.Tensor]:
    """PCA and centroids from the fit rows of every rank (same on every rank; no assignment table yet), and every
    row of `local` in the clustering's space (what `assign_kept` assigns, so nothing is reduced twice)."""
    reduced, mean, projection = pca_whiten(local.features, local.fit, pca_dim)
    fit_ids = local.ids[local.fit]
    centroids = _centroids(reduced[local.fit], fit_ids, k, backend, seed + num_reclusterings, iterations)
    far_feature = float("inf") if projection is None else quantile_over_ranks(
        whitened_distance(local.features[local.fit], mean, projection), FAR_QUANTILE)
    empty = torch.zeros(0, dtype=torch.int16, device=centroids.device)
    state = ClusterState(empty, centroids.float(), torch.zeros(k, device=centroids.device), num_reclusterings + 1,
                         0.0, None if mean is None else mean.float(),
                         None if projection is None else projection.float(), float("inf"), far_feature)
    return state, reduced


def finish_clustering(state: ClusterState, assigned: Assigned, num_ids: int) -> ClusterState:
    """The (id -> cluster) table of every rank's fit samples, cluster weights, inertia and the far distance."""
    k = state.centroids.shape[0]
    fit = assigned.fit
    # One entry per sample id on every rank: int16 (2 bytes; 200 MB per rank at 10^8 samples) while k fits in it.
    # Each rank fills its own samples and a max over ranks completes it: 4 bytes per sample in flight, where
    # gathering (id, cluster) pairs would hold 12.
    table = torch.full((num_ids,), -1, dtype=torch.int32, device=state.centroids.device)
    table[assigned.ids[fit].to(table.device)] = assigned.assignment[fit].to(table.device, table.dtype)
    table = dist.all_reduce_max(table).to(torch.int16 if k < 2**15 else torch.int32)
    counts = torch.bincount(table[table >= 0].long(), minlength=k).double()
    weights = torch.where(counts > 0, counts.sum() / (k * counts.clamp(min=1)), torch.zeros_like(counts))
    distance = assigned.distance[fit].double()
    moments = dist.all_reduce_sum(torch.stack([distance.new_tensor(float(len(distance))), distance.sum(),
                                               (distance**2).sum()]))
    average = moments[1] / moments[0].clamp(min=1)
    spread = (moments[2] / moments[0].clamp(min=1) - average**2).clamp(min=0).sqrt()
    return replace(state, assignments=table, cluster_weights=weights.float(), inertia=float(moments[2]),
                   far_distance=float(average + 3 * spread))


def recluster(local: LocalFeatures, *, k: int, num_ids: int, backend: str, pca_dim: int, seed: int,
              iterations: int, num_reclusterings: int = 0) -> tuple[ClusterState, Assigned]:
    """Cluster the fit samples of all ranks when `local` holds every sample (pass 1 kept all: no second pass);
    returns the state (same on every rank) and this rank's assignments (for reports)."""
    state, reduced = fit_clustering(local, k=k, backend=backend, pca_dim=pca_dim, seed=seed, iterations=iterations,
                                    num_reclusterings=num_reclusterings)
    assigned = assign_kept(local, reduced, state.centroids)
    return finish_clustering(state, assigned, num_ids), assigned
