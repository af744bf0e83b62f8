"""Semi-supervised losses: pure functions of tensors (no devices, no collectives)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fixmatch_loss(logits_labeled: torch.Tensor, labels: torch.Tensor, logits_weak: torch.Tensor,
                  logits_strong: torch.Tensor, threshold: float, lambda_u: float) -> tuple[torch.Tensor, dict]:
    """FixMatch (Sohn et al. 2020): supervised CE + lambda_u * CE(strong, pseudo-label) where the weak view's
    confidence exceeds `threshold`. Pseudo-labels carry no gradient. Returns the loss and detached tensors:
    sup_loss, unsup_loss, mask (per unlabeled sample, float), pseudo_labels, confidence."""
    sup_loss = F.cross_entropy(logits_labeled, labels)
    probabilities = torch.softmax(logits_weak.detach().float(), dim=-1)
    confidence, pseudo_labels = probabilities.max(dim=-1)
    mask = (confidence >= threshold).float()
    unsup_loss = (F.cross_entropy(logits_strong, pseudo_labels, reduction="none") * mask).mean()
    loss = sup_loss + lambda_u * unsup_loss
    stats = {"sup_loss": sup_loss.detach(), "unsup_loss": unsup_loss.detach(), "mask": mask,
             "pseudo_labels": pseudo_labels, "confidence": confidence}
    return loss, stats


def supervised_loss(logits_labeled: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
    loss = F.cross_entropy(logits_labeled, labels)
    return loss, {"sup_loss": loss.detach()}


def deepcluster_loss(cluster_logits: torch.Tensor, targets: torch.Tensor, cluster_weights: torch.Tensor
                     ) -> tuple[torch.Tensor, dict]:
    """DeepCluster (Caron et al. 2018): CE against the current cluster assignments, weighted uniformly over clusters
    (each cluster's weight is inversely proportional to its size) so that big clusters do not dominate."""
    loss = F.cross_entropy(cluster_logits, targets, weight=cluster_weights.to(cluster_logits.dtype))
    return loss, {"cluster_loss": loss.detach()}
