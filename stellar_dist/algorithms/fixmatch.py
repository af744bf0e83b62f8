"""FixMatch (Sohn et al. 2020): pseudo-labels from the weak view above a confidence threshold train the strong
view. Labeled, weak and strong images go through the model in one forward pass (shared batch-norm statistics).

Also the shared flow of the thresholded pseudo-labelling family: FlexMatch, FreeMatch and Pseudo-Label change
only `threshold_mask` (which pseudo-labels count), the unsupervised weight or an extra term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .alignment import DistributionAlignment
from .base import Algorithm


def masked_cross_entropy(logits: torch.Tensor, pseudo_labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over all unlabeled samples of mask x CE (masked samples count in the denominator, as in FixMatch)."""
    return (F.cross_entropy(logits, pseudo_labels, reduction="none") * mask).mean()


class FixMatch(Algorithm):
    unlabeled_views = ("weak", "strong")
    aligns_distribution = True

    def __init__(self, config, manifest, device):
        super().__init__(config, manifest, device)
        self.alignment = DistributionAlignment(self.labeled_prior) if self.ssl.distribution_alignment else None

    def threshold_mask(self, probabilities: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Which pseudo-labels count (float mask); subclasses may also update their class statistics here."""
        return (probabilities.max(-1).values >= self.ssl.threshold).float()

    def unsup_weight(self, step: int) -> float:
        return self.ssl.lambda_u

    def extra_loss(self, logits_strong: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor | float, dict]:
        return 0.0, {}

    def loss(self, model, labeled, unlabeled, step, cluster=None):
        parts = [labeled["image"], *(unlabeled[view] for view in self.unlabeled_views)]
        logits, cluster_logits = self.forward(model, parts, with_clusters=cluster is not None)
        probabilities = logits[1].detach().float().softmax(-1)
        if self.alignment is not None:
            probabilities = self.alignment(probabilities)
        confidence, pseudo_labels = probabilities.max(-1)
        mask = self.threshold_mask(probabilities, unlabeled["id"])
        sup_loss = self.supervised(logits[0], labeled["label"])
        unsup_loss = masked_cross_entropy(logits[-1], pseudo_labels, mask)
        extra, extra_stats = self.extra_loss(logits[-1], mask)
        loss = sup_loss + self.unsup_weight(step) * unsup_loss + extra
        stats = {"sup_loss": sup_loss.detach(), "unsup_loss": unsup_loss.detach(), "mask": mask,
                 "pseudo_labels": pseudo_labels, "confidence": confidence} | extra_stats
        return self.with_cluster_loss(loss, stats, cluster_logits[1] if cluster_logits else None, cluster)

    def state_dict(self) -> dict:
        return {"alignment": self.alignment.state_dict()} if self.alignment is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.alignment is not None and "alignment" in state:
            self.alignment.load_state_dict(state["alignment"])
