"""Which unlabeled objects to label next, from features alone: pure functions of arrays (no files, no ranks).

- `typical`: TypiClust (Hacohen et al., ICML 2022, "Active learning on a budget"): k-means into (labels held +
  budget) clusters; the clusters holding no label yet, largest first, each give their most typical object (the
  inverse mean distance to its nearest neighbours within the cluster). Few labels bind hardest: every label then
  stands for a dense, distinct region of the catalog, not an outlier.
- `uncertain`: for a trained model at larger budgets: k-means into `budget` clusters; in each, the object the
  model is least sure of (smallest margin between its two most probable classes), so that the picks are both
  informative and spread out.
- `at_random`: the reference.

Each returns a `Choice`: row numbers in pick order, the cluster each came from and the score that chose it (higher
is chosen first within a cluster). Rows in `labeled` are never chosen; `eligible` (default: every row not labeled)
limits the candidates, e.g. to the unlabeled split, while every row still shapes the clusters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

NEIGHBOURS = 20  # TypiClust's k for typicality
MIN_CLUSTER = 5  # clusters smaller than this are outliers, not regions (TypiClust skips them)
TYPICALITY_SAMPLE = 2000  # typicality of a cluster's members measured among at most this many of them
FIT_SAMPLE = 200_000  # k-means fits on at most this many rows (a seeded random sample), then assigns every row
MAX_CLUSTERS = 500  # TypiClust's k = labels held + budget, capped here (but never below the budget): a catalog with
# 10^5 spectra would otherwise ask k-means for 10^5 clusters; past the cap, picks go to the clusters with fewest labels


@dataclass(frozen=True)
class Choice:
    rows: np.ndarray  # int64, pick order
    cluster: np.ndarray  # int64, the cluster each pick came from (-1: none)
    score: np.ndarray  # float64, what chose it: typicality, coverage gain, 1 - margin, or 0 for random


def _candidates(labeled: np.ndarray, eligible: np.ndarray | None) -> np.ndarray:
    return ~labeled if eligible is None else (eligible & ~labeled)


def _check_budget(budget: int, candidates: np.ndarray) -> None:
    if budget < 1:
        raise ValueError(f"budget {budget} must be 1 or more")
    if budget > int(candidates.sum()):
        raise ValueError(f"budget {budget} exceeds the {int(candidates.sum())} objects that can be chosen")


def cluster(features: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Every row's k-means cluster: Faiss k-means (seeded; empty clusters split) on a bounded random sample."""
    from ..clustering.cluster import assign, kmeans_faiss

    features = np.ascontiguousarray(features, dtype=np.float32)
    k = max(1, min(k, len(features)))
    rng = np.random.default_rng(seed)
    fit = features if len(features) <= FIT_SAMPLE else features[rng.choice(len(features), FIT_SAMPLE, replace=False)]
    centroids, _, _ = kmeans_faiss(fit, k, seed)
    assignment, _ = assign(torch.from_numpy(features), centroids)
    return assignment.numpy().astype(np.int64)


def typicality(points: np.ndarray, neighbours: int = NEIGHBOURS) -> np.ndarray:
    """1 / mean distance to the `neighbours` nearest other points (points: n x d)."""
    if len(points) < 2:
        return np.ones(len(points))
    tensor = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
    distances = torch.cdist(tensor, tensor)
    distances.fill_diagonal_(float("inf"))
    nearest = distances.topk(min(neighbours, len(points) - 1), largest=False).values
    return (1.0 / (nearest.mean(dim=1).double() + 1e-8)).numpy()


def _ranked_members(features, members, candidates, rng) -> tuple[np.ndarray, np.ndarray]:
    """A cluster's candidate rows, most typical first, with their typicality (measured on a bounded sample)."""
    sample = members if len(members) <= TYPICALITY_SAMPLE else rng.choice(members, TYPICALITY_SAMPLE, replace=False)
    sample = np.sort(sample)
    scores = typicality(features[sample])
    keep = candidates[sample]
    order = np.argsort(-scores[keep], kind="stable")
    return sample[keep][order], scores[keep][order]


def typical(features: np.ndarray, labeled: np.ndarray, budget: int, seed: int,
            eligible: np.ndarray | None = None) -> Choice:
    """TypiClust: see the module docstring."""
    candidates = _candidates(labeled, eligible)
    _check_budget(budget, candidates)
    assignment = cluster(features, max(budget, min(int(labeled.sum()) + budget, MAX_CLUSTERS)), seed)
    k = int(assignment.max()) + 1
    sizes = np.bincount(assignment, minlength=k)
    held = np.bincount(assignment[labeled], minlength=k).astype(np.int64)
    rng = np.random.default_rng(seed + 1)
    ranked: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    rows, clusters, scores = [], [], []
    big = sizes >= MIN_CLUSTER if (sizes >= MIN_CLUSTER).sum() * 2 >= k else sizes > 0
    while len(rows) < budget:
        # fewest labels first, then the largest: every region gets its first label before any gets a second
        open_clusters = [c for c in range(k) if big[c] and (c not in ranked or len(ranked[c][0]))]
        if not open_clusters:
            big = sizes > 0
            open_clusters = [c for c in range(k) if c not in ranked or len(ranked[c][0])]
        chosen_cluster = min(open_clusters, key=lambda c: (held[c], -sizes[c], c))
        if chosen_cluster not in ranked:
            members = np.flatnonzero(assignment == chosen_cluster)
            ranked[chosen_cluster] = _ranked_members(features, members, candidates, rng)
        members, member_scores = ranked[chosen_cluster]
        held[chosen_cluster] += 1
        if not len(members):
            continue
        rows.append(members[0])
        clusters.append(chosen_cluster)
        scores.append(member_scores[0])
        ranked[chosen_cluster] = (members[1:], member_scores[1:])
    return Choice(np.array(rows, dtype=np.int64), np.array(clusters, dtype=np.int64), np.array(scores))


def uncertain(features: np.ndarray, probabilities: np.ndarray, labeled: np.ndarray, budget: int, seed: int,
              eligible: np.ndarray | None = None) -> Choice:
    """Smallest margin per cluster, `budget` clusters, largest first: see the module docstring. Picks are ordered
    by their doubt rank within their cluster, then by cluster size: every cluster gives its most doubtful object
    before any gives a second (one sort, no pass over the rows per cluster)."""
    candidates = _candidates(labeled, eligible)
    _check_budget(budget, candidates)
    top = np.sort(probabilities, axis=1)[:, -2:]
    doubt = 1.0 - (top[:, 1] - top[:, 0])  # 1: a coin toss between two classes
    assignment = cluster(features, budget, seed)
    sizes = np.bincount(assignment)
    size_rank = np.empty(len(sizes), dtype=np.int64)
    size_rank[np.argsort(-sizes, kind="stable")] = np.arange(len(sizes))  # 0: the largest cluster
    rows = np.flatnonzero(candidates)
    rows = rows[np.lexsort((-doubt[rows], assignment[rows]))]  # by cluster, most doubtful first (ties: row order)
    clusters = assignment[rows]
    within = np.arange(len(rows)) - np.searchsorted(clusters, clusters)  # 0: the cluster's most doubtful
    picked = rows[np.lexsort((size_rank[clusters], within))[:budget]]
    return Choice(picked.astype(np.int64), assignment[picked].astype(np.int64), doubt[picked])


def at_random(num_rows: int, labeled: np.ndarray, budget: int, seed: int,
              eligible: np.ndarray | None = None) -> Choice:
    candidates = _candidates(labeled, eligible)
    _check_budget(budget, candidates)
    rows = np.random.default_rng(seed).choice(np.flatnonzero(candidates), budget, replace=False)
    return Choice(rows.astype(np.int64), np.full(budget, -1, dtype=np.int64), np.zeros(budget))
