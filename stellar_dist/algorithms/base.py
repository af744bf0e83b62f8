"""What every algorithm shares: its declaration of streams and views, one forward pass, the supervised term.

An algorithm declares what it needs as data (`needs_labeled`, `unlabeled_views`), so the data code computes no
view that is never used, and its own options (`Options`: a frozen dataclass in its file, the `ssl.<name>` config
section, with its `RANGES`); `loss(model, labeled, unlabeled, step, cluster)` does its forward pass and returns the
loss and detached diagnostics; its state (class statistics, running means) is a plain dict of tensors,
identical on every rank (all statistics are all-reduced before they update it), saved with every checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def labeled_prior(manifest: dict) -> torch.Tensor:
    """Class frequencies of the labeled split (what the labels tell of the class mix)."""
    counts = torch.tensor([float(manifest["counts"]["labeled"].get(name, 0)) for name in manifest["classes"]])
    return counts / counts.sum().clamp(min=1)


def class_indicator(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One-hot float rows. F.one_hot checks the labels' range with a host read on CPUs (and without num_classes
    on GPUs); a comparison with arange never reads anything back."""
    return (labels[:, None] == torch.arange(num_classes, device=labels.device)).float()


def deepcluster_loss(cluster_logits: torch.Tensor, targets: torch.Tensor, cluster_weights: torch.Tensor
                     ) -> tuple[torch.Tensor, dict]:
    """DeepCluster (Caron et al. 2018): CE against the current cluster assignments, weighted uniformly over clusters
    (each cluster's weight is inversely proportional to its size) so that big clusters do not dominate. Shared by
    DeepCluster and the cluster head beside any algorithm (cluster.lambda_c)."""
    loss = F.cross_entropy(cluster_logits, targets, weight=cluster_weights.to(cluster_logits.dtype))
    return loss, {"cluster_loss": loss.detach()}


class Algorithm:
    Options: type | None = None  # a frozen dataclass: the `ssl.<name>` section (ClassVar RANGES: its numeric ranges)
    needs_labeled: bool = True  # reads the labeled stream
    unlabeled_views: tuple[str, ...] = ()  # views of each unlabeled image: "weak", "strong", "weak1", ...
    unlabeled_splits: tuple[str, ...] = ("unlabeled",)  # the splits whose images the unlabeled stream reads
    trains_classifier: bool = True  # False: judged by its clusters and a linear probe, never by the class head
    cluster_head: str = "optional"  # "never", "optional" (cluster.lambda_c > 0 adds one) or "always"
    aligns_distribution: bool = False  # ssl.distribution_alignment applies (thresholded pseudo-labels)

    def __init__(self, config, manifest: dict, device: torch.device):
        self.config, self.ssl, self.device = config, config.ssl, device
        self.options = config.ssl.sections.get(config.ssl.algorithm)  # this algorithm's own section, if it has one
        self.total_steps, self.num_classes = config.train.steps, len(manifest["classes"])
        self.labeled_prior = labeled_prior(manifest).to(device)
        self.log_prior = self.labeled_prior.clamp(min=1e-12).log()

    # -- what subclasses implement --------------------------------------------------------------------------
    def loss(self, model, labeled: dict | None, unlabeled: dict | None, step: int,
             cluster: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    # -- shared helpers -------------------------------------------------------------------------------------
    def images_forwarded(self, labeled: dict | None, unlabeled: dict | None) -> int:
        count = labeled["image"].shape[0] if labeled else 0
        return count + sum(unlabeled[view].shape[0] for view in self.unlabeled_views) if unlabeled else count

    @staticmethod
    def forward(model, parts: list[torch.Tensor], with_clusters: bool = False):
        """One forward pass over all parts (shared batch-norm statistics); logits split back per part, and the
        cluster logits too when asked."""
        sizes = [part.shape[0] for part in parts]
        if with_clusters:
            logits, cluster_logits = model(torch.cat(parts), with_clusters=True)
            return list(logits.split(sizes)), list(cluster_logits.split(sizes))
        return list(model(torch.cat(parts)).split(sizes)), None

    def supervised(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy, logit-adjusted by train.logit_adjustment x log(class prior) (Menon et al. 2021): the
        rare classes' margins grow; predictions use the raw logits."""
        tau = self.config.train.logit_adjustment
        return F.cross_entropy(logits + tau * self.log_prior.to(logits.dtype) if tau else logits, labels)

    def ramp(self, fraction: float, step: int) -> float:
        """Linear ramp-up from 0 to 1 over `fraction` of the run (1 at once when fraction is 0)."""
        return 1.0 if fraction <= 0 else min(1.0, step / (fraction * self.total_steps))

    def with_cluster_loss(self, loss, stats: dict, cluster_logits, cluster) -> tuple[torch.Tensor, dict]:
        """Add the DeepCluster head's loss on the unlabeled weak view (cluster.lambda_c > 0)."""
        if cluster is None:
            return loss, stats
        cluster_loss, cluster_stats = deepcluster_loss(cluster_logits, *cluster)
        return loss + self.config.cluster.lambda_c * cluster_loss, stats | cluster_stats
