"""k-means backends and cluster-to-class evaluation (groundwork for DeepCluster re-clustering, issue 4).

Backends, both seeded explicitly (never from the global RNG), both refilling empty clusters by splitting the
largest one (DeepCluster's fix, deepcluster#43):
- `kmeans_faiss`: Faiss k-means on one process (GPU when faiss-gpu and a GPU are present).
Both start from the same k-means++ seeding of a hashed sample of the data (`initial_centroids`).
- `kmeans_torch`: Lloyd iterations where each rank keeps its own features and only centroid sums and counts are
  all-reduced; the initial centroids are chosen by a hash of the sample ids, so the result does not depend on how
  the samples are spread over ranks.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..core import dist
from ..core.errors import UserError

SPLIT_EPSILON = 1e-4


def split_empty_clusters(centroids: torch.Tensor, counts: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Give each empty cluster half of the largest one: copy its centroid and push the two apart slightly."""
    centroids, counts = centroids.clone(), counts.clone().double()
    for empty in torch.nonzero(counts == 0).flatten().tolist():
        largest = int(torch.argmax(counts))
        noise = SPLIT_EPSILON * torch.randn(centroids.shape[1], generator=generator, dtype=centroids.dtype)
        centroids[empty] = centroids[largest] + noise.to(centroids.device)
        centroids[largest] = centroids[largest] - noise.to(centroids.device)
        counts[empty] = counts[largest] / 2
        counts[largest] = counts[largest] / 2
    return centroids


ASSIGN_BLOCK_VALUES = 2**26  # distances held at once (256 MB of float32): 1M samples x k = 3,000 would be 12 GB


def _assign(features: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid and squared distance per row, in row blocks so that memory stays flat in N."""
    centroids = centroids.to(features.dtype)
    rows = max(1024, ASSIGN_BLOCK_VALUES // max(1, len(centroids)))
    best, assignment = [], []
    for start in range(0, len(features), rows):
        # matrix-multiply form of the distances (cdist's default for big inputs)
        block_best, block_assignment = torch.cdist(features[start : start + rows], centroids).pow(2).min(dim=1)
        best.append(block_best)
        assignment.append(block_assignment)
    if not best:
        return torch.zeros(0, dtype=torch.long, device=features.device), features.new_zeros(0)
    return torch.cat(assignment), torch.cat(best)


def kmeans_plus_plus(candidates: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Greedy k-means++ seeding (as scikit-learn: 2 + ln k trials per centre, keep the best), seeded explicitly."""
    # On the candidates' device (a GPU: k = 1,000 in well under a second instead of ~37 s on 2 CPU cores); every
    # rank holds the same candidates and seed, hence the same centres.
    generator = torch.Generator(device=candidates.device).manual_seed(seed)
    candidates = candidates.float()
    trials = 2 + int(np.log(k))
    chosen = [int(torch.randint(len(candidates), (), generator=generator, device=candidates.device))]
    nearest = torch.cdist(candidates, candidates[chosen]).pow(2)[:, 0]
    for _ in range(1, k):
        picks = torch.multinomial(nearest / nearest.sum(), trials, replacement=True, generator=generator)
        options = torch.minimum(nearest[None, :], torch.cdist(candidates[picks], candidates).pow(2))
        best = int(torch.argmin(options.double().sum(1)))
        chosen.append(int(picks[best]))
        nearest = options[best]
    return candidates[chosen]


def resolve_backend(name: str) -> str:
    """cluster.backend as run: "auto" is faiss where it is installed and torch elsewhere (a GPU node without a
    faiss wheel still clusters); "faiss" without faiss is refused in one line, before any training."""
    import importlib.util

    has_faiss = importlib.util.find_spec("faiss") is not None
    if name == "faiss" and not has_faiss:
        raise UserError("cluster.backend=faiss but faiss is not installed here: pip install faiss-cpu (or faiss-gpu), "
                        "or set cluster.backend=auto (torch k-means where faiss is absent)")
    return ("faiss" if has_faiss else "torch") if name == "auto" else name


HASH_PRIME = 2**61 - 1
HASH_MULTIPLIER, HASH_INCREMENT = 6364136223846793005, 1442695040888963407  # Knuth's MMIX LCG constants


def id_hash(ids: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded hash of sample ids in [0, HASH_PRIME): picks samples by id, whatever rank holds them."""
    # The seed's term is reduced in Python first: seed * HASH_INCREMENT leaves int64 from seed 7 on (a run
    # at seed 42, or any seed after a few re-clusterings, since the seed grows by one per re-clustering).
    return (ids.long() * HASH_MULTIPLIER + (seed * HASH_INCREMENT) % HASH_PRIME) % HASH_PRIME


def id_hash_int(sample_id: int, seed: int) -> int:
    """`id_hash` of one id in plain Python (a stream filter decides before decoding): int64 wrap-around included."""
    def wrapped(value: int) -> int:
        return (value + 2**63) % 2**64 - 2**63

    return wrapped(wrapped(sample_id * HASH_MULTIPLIER) + (seed * HASH_INCREMENT) % HASH_PRIME) % HASH_PRIME


def bounded_sample(ids: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    """A mask of about `limit` samples over all ranks (every one when there are fewer), chosen by id hash: the same
    samples whatever the number of ranks. What faiss fits its centroids on (rank 0 then holds a bounded number of
    rows, not every feature of the catalog); every sample is still assigned, on its own rank."""
    total = int(dist.all_reduce_sum(torch.tensor([len(ids)], dtype=torch.float64, device=ids.device)).item())
    if total <= limit:
        return torch.ones(len(ids), dtype=torch.bool, device=ids.device)
    return id_hash(ids, seed) < int(HASH_PRIME * (limit / total))


def initial_centroids(features: torch.Tensor, ids: torch.Tensor, k: int, seed: int,
                      num_candidates: int = 20000) -> torch.Tensor:
    """k-means++ on the samples with the smallest seeded hash of their id, wherever they live: the same
    initial centroids whatever the number of ranks."""
    keys = id_hash(ids, seed)
    local = torch.argsort(keys)[:num_candidates]
    candidate_keys, candidates = dist.gather_variable(keys[local]), dist.gather_variable(features[local])
    order = torch.argsort(candidate_keys)[:num_candidates]
    return kmeans_plus_plus(candidates[order], k, seed).to(features.device, features.dtype)


def cluster_sums(assignment: torch.Tensor, rows: torch.Tensor, k: int, blocked: bool | None = None) -> torch.Tensor:
    """Per cluster, the sum of its rows. On a GPU (`blocked`) as one-hot matrix products in row blocks (index_add_
    of float64 rows into k centroids would contend on k rows of atomics); on a CPU index_add_, in row order."""
    if not (rows.is_cuda if blocked is None else blocked):
        return torch.zeros((k, rows.shape[1]), dtype=rows.dtype, device=rows.device).index_add_(0, assignment, rows)
    sums = torch.zeros((k, rows.shape[1]), dtype=rows.dtype, device=rows.device)
    block = max(1024, 2**23 // k)  # a one-hot block of <= 8M entries
    clusters = torch.arange(k, device=rows.device)
    for start in range(0, len(rows), block):
        one_hot = (assignment[start : start + block, None] == clusters).to(rows.dtype)
        sums += one_hot.T @ rows[start : start + block]
    return sums


def kmeans_torch(features: torch.Tensor, ids: torch.Tensor, k: int, seed: int, iterations: int = 20):
    """Distributed k-means: returns (centroids, this rank's assignments, global inertia)."""
    features = features.float()
    exact = features.double()  # float32 distances, float64 sums: fast and order-insensitive enough
    centroids = initial_centroids(features, ids, k, seed).double()
    generator = torch.Generator().manual_seed(seed)
    for _ in range(iterations):
        assignment, _ = _assign(features, centroids)
        sums = cluster_sums(assignment, exact, k)
        counts = torch.zeros(k, dtype=torch.float64, device=features.device).index_add_(
            0, assignment, torch.ones_like(assignment, dtype=torch.float64))
        sums, counts = dist.all_reduce_sum(sums), dist.all_reduce_sum(counts)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centroids)
        centroids = split_empty_clusters(centroids, counts, generator)
    assignment, squared = _assign(features, centroids)
    inertia = dist.all_reduce_sum(squared.sum().reshape(1)).item()
    return centroids.float(), assignment, inertia


def kmeans_faiss(features: np.ndarray, k: int, seed: int, iterations: int = 20, use_gpu: bool | None = None,
                 ids: torch.Tensor | None = None):
    """Faiss k-means on one process: returns (centroids, assignments, inertia). `ids` (default: row numbers)
    pick the k-means++ candidates, as in `kmeans_torch`."""
    import faiss

    features = np.ascontiguousarray(features, dtype=np.float32)
    if use_gpu is None:
        use_gpu = hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
    kmeans = faiss.Kmeans(features.shape[1], k, niter=iterations, seed=seed % 2**31, verbose=False,  # C int
                          min_points_per_centroid=1, max_points_per_centroid=10**9)
    if use_gpu:  # this process's own GPU only: Kmeans(gpu=True) would spread over every GPU of the node
        kmeans.gpu_resources = faiss.StandardGpuResources()  # kept alive as long as the index
        config = faiss.GpuIndexFlatConfig()
        config.device = torch.cuda.current_device() if torch.cuda.is_available() else 0
        kmeans.index = faiss.GpuIndexFlatL2(kmeans.gpu_resources, features.shape[1], config)
    ids = torch.arange(len(features)) if ids is None else ids
    seeding = torch.from_numpy(features)  # k-means++ where the k-means runs: on the GPU with faiss-gpu
    seeding = seeding.cuda() if use_gpu and torch.cuda.is_available() else seeding
    with dist.local_only():
        init = initial_centroids(seeding, ids.to(seeding.device), k, seed).cpu()
    kmeans.train(features, init_centroids=init.float().numpy())
    centroids = torch.from_numpy(kmeans.centroids.copy())
    assignment, squared = _assign(torch.from_numpy(features), centroids)
    counts = torch.bincount(assignment, minlength=k)
    if (counts == 0).any():
        centroids = split_empty_clusters(centroids, counts, torch.Generator().manual_seed(seed))
        assignment, squared = _assign(torch.from_numpy(features), centroids)
    return centroids, assignment, float(squared.double().sum())


def match_clusters(true_labels: np.ndarray, clusters: np.ndarray, num_classes: int, k: int) -> np.ndarray:
    """Cluster -> class map maximising agreement: one-to-one (Hungarian) when k <= classes, else many-to-one
    (each cluster to its majority class, the optimum when several clusters may share a class)."""
    table = np.zeros((k, num_classes), dtype=np.int64)
    np.add.at(table, (clusters, true_labels), 1)
    if k > num_classes:
        return table.argmax(axis=1)
    rows, columns = linear_sum_assignment(table, maximize=True)
    mapping = np.zeros(k, dtype=np.int64)
    mapping[rows] = columns
    return mapping


def assign(features: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid and squared distance of each row."""
    return _assign(features.to(centroids.dtype), centroids)


def cluster_accuracy(true_labels: np.ndarray, clusters: np.ndarray, num_classes: int, k: int) -> float:
    mapping = match_clusters(true_labels, clusters, num_classes, k)
    return float((mapping[clusters] == true_labels).mean())
