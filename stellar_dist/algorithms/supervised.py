"""The labeled-only baseline: cross-entropy on the labeled stream (logit-adjusted when asked)."""

from __future__ import annotations

from .base import Algorithm


class Supervised(Algorithm):
    cluster_head = "never"  # no unlabeled batch to train a cluster head on

    def loss(self, model, labeled, unlabeled, step, cluster=None):
        loss = self.supervised(model(labeled["image"]), labeled["label"])
        return loss, {"sup_loss": loss.detach()}
