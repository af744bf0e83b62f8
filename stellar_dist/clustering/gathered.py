"""What the cluster report and assignments.csv receive from every rank (collectives; all ranks call these).

Rank 0 receives rows bounded by the labeled + test splits and by k, never the unlabeled split: the labeled and test
samples, each rank's nearest samples per cluster (the grid's candidates), all-reduced cluster sizes, the probe's
features; `assignments.csv` reaches it one id range at a time.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from ..core import dist
from ..core.files import discard_private, private_folder
from ..core.outputs import follow_umask
from ..data.eval_data import objid_text_maker
from .features import SPLIT_CODES, Assigned, LocalFeatures

GRID_PER_CLUSTER = 8  # objects shown per cluster in the grid (the nearest to its centroid)


def _to_main(parts: dict[str, torch.Tensor]) -> dict[str, np.ndarray] | None:
    """Every rank's rows on rank 0 (None elsewhere), as numpy arrays sorted by sample id."""
    gathered = {key: dist.gather_to_main(value) for key, value in parts.items()}
    if not dist.is_main():
        return None
    gathered = {key: value.cpu().numpy() for key, value in gathered.items()}
    order = np.argsort(gathered["ids"], kind="stable")
    return {key: value[order] for key, value in gathered.items()}


def _nearest_rows(assigned: Assigned, per_cluster: int) -> torch.Tensor:
    """This rank's `per_cluster` fit samples nearest each centroid (a mask): the grid's candidates."""
    fit = torch.nonzero(assigned.fit).flatten()
    by_distance = fit[torch.argsort(assigned.distance[fit], stable=True)]
    grouped = by_distance[torch.argsort(assigned.assignment[by_distance], stable=True)]
    clusters = assigned.assignment[grouped].long()
    first = torch.searchsorted(clusters, clusters, right=False)  # each row's cluster starts here
    chosen = torch.zeros(len(assigned.ids), dtype=torch.bool, device=assigned.ids.device)
    chosen[grouped[torch.arange(len(grouped), device=grouped.device) - first < per_cluster]] = True
    return chosen


def gather_report(assigned: Assigned, local: LocalFeatures, k: int,
                  per_cluster: int = GRID_PER_CLUSTER) -> dict | None:
    """What the report needs, on rank 0 (None elsewhere), bounded by the labeled + test splits and never by the
    unlabeled one: the labeled and test samples (id, class, split, cluster, distance, shard, objid; sorted by id),
    the grid's candidates (`nearest`), the cluster sizes (all-reduced counts) and the probe's backbone features
    (pass 1's labeled and test rows, at most cluster.probe_samples of each)."""
    fields = ("ids", "labels", "splits", "assignment", "distance", "shards", "objids")
    scored = assigned.splits != SPLIT_CODES["unlabeled"]
    samples = _to_main({key: getattr(assigned, key)[scored] for key in fields})
    nearest = _to_main({key: getattr(assigned, key)[_nearest_rows(assigned, per_cluster)] for key in fields})
    sizes = dist.all_reduce_sum(torch.bincount(assigned.assignment[assigned.fit].long(), minlength=k).double())
    probe = local.splits != SPLIT_CODES["unlabeled"]
    probe_parts = _to_main({"ids": local.ids[probe], "features": local.features[probe]})
    if samples is None:
        return None
    return samples | {"nearest": nearest, "cluster_sizes": sizes.long().tolist(),
                      "probe_ids": probe_parts["ids"], "probe_features": probe_parts["features"]}


IDS_PER_ROUND = 2**16  # sample ids whose rows rank 0 receives and writes at a time (its memory stays flat in N)


def write_assignments(assigned: Assigned, shards_dir: str, path: Path, num_ids: int) -> Path | None:
    """assignments.csv: every clustered sample (id order): id, objid (as text), split, cluster, distance to its
    centroid (in the whitened PCA space the clusters were fit in). Every rank takes part: rank 0 receives the rows
    of ids [0, num_ids) one range at a time and writes them; the file is written whole or not at all."""
    import csv

    order = torch.argsort(assigned.ids)
    fields = {key: getattr(assigned, key)[order] for key in ("ids", "objids", "splits", "assignment", "distance")}
    main = dist.is_main()
    texts = objid_text_maker(shards_dir, tuple(SPLIT_CODES)) if main else None
    names = {code: name for name, code in SPLIT_CODES.items()}
    staging = private_folder(path.parent, path.name) if main else None  # see core/files.py
    temporary = staging / path.name if main else None
    try:
        with open(temporary, "w", newline="") if main else contextlib.nullcontext() as handle:
            writer = csv.writer(handle) if main else None
            if main:
                writer.writerow(["id", "objid", "split", "cluster", "distance"])
            for start in range(0, max(num_ids, 1), IDS_PER_ROUND):
                bounds = torch.searchsorted(fields["ids"], torch.tensor([start, start + IDS_PER_ROUND],
                                                                        device=fields["ids"].device)).tolist()
                rows = _to_main({key: value[bounds[0] : bounds[1]] for key, value in fields.items()})
                if rows is not None:
                    writer.writerows([sample_id, objid, names[split], cluster, f"{distance:.6g}"]
                                     for sample_id, objid, split, cluster, distance in zip(
                                         rows["ids"].tolist(), texts(rows["objids"], rows["ids"]),
                                         rows["splits"].tolist(), rows["assignment"].tolist(),
                                         rows["distance"].tolist()))
        if main:
            follow_umask(temporary)
            temporary.replace(path)
    finally:
        if main:
            discard_private(staging)
    return path if main else None
