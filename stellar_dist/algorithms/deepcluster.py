"""DeepCluster alone (Caron et al. 2018): no labels; the cluster head learns the k-means assignments of the
weak views of every training image (labeled ones too, their labels unread), re-clustered once per
epoch-equivalent. Judged by cluster accuracy and a linear probe."""

from __future__ import annotations

from .base import Algorithm, deepcluster_loss


class DeepCluster(Algorithm):
    needs_labeled = False
    unlabeled_views = ("weak",)
    unlabeled_splits = ("labeled", "unlabeled")  # it reads no label: every training image is an unlabeled one
    trains_classifier = False
    cluster_head = "always"

    def loss(self, model, labeled, unlabeled, step, cluster=None):
        _, cluster_logits = model(unlabeled["weak"], with_clusters=True)
        return deepcluster_loss(cluster_logits, *cluster)
