"""The cluster-head loss shared by DeepCluster and the cluster head beside any algorithm: a pure function of
tensors (no devices, no collectives). Each algorithm's own loss lives in its file under algorithms/."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def deepcluster_loss(cluster_logits: torch.Tensor, targets: torch.Tensor, cluster_weights: torch.Tensor
                     ) -> tuple[torch.Tensor, dict]:
    """DeepCluster (Caron et al. 2018): CE against the current cluster assignments, weighted uniformly over clusters
    (each cluster's weight is inversely proportional to its size) so that big clusters do not dominate."""
    loss = F.cross_entropy(cluster_logits, targets, weight=cluster_weights.to(cluster_logits.dtype))
    return loss, {"cluster_loss": loss.detach()}
