"""MixMatch (Berthelot et al. 2019): guess each unlabeled image's label from K weak views (mean softmax,
sharpened), MixUp labeled and unlabeled images with their (guessed) labels, then cross-entropy on the mixed
labeled part and L2 on the mixed unlabeled part (weight ramped up).

The MixUp draw (lambda and partner permutation) is seeded by (seed, step, rank): a resumed run mixes alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..core import dist
from .base import Algorithm, class_indicator


@dataclass(frozen=True)
class MixMatchOptions:
    """The `ssl.mixmatch` config section."""

    views: int = 2  # K weak views per unlabeled image for the label guess (paper: 2)
    temperature: float = 0.5  # sharpening of the guessed distribution
    alpha: float = 0.75  # MixUp Beta(alpha, alpha)
    lambda_u: float = 75.0  # weight of the L2 loss on mixed unlabeled images (paper: 75 on CIFAR-10)
    rampup_fraction: float = 0.4  # lambda_u ramps up linearly over this fraction of train.steps
    RANGES: ClassVar[dict] = {"views": "[1, 8]", "temperature": "(0, 1]", "alpha": "(0, inf)",
                              "lambda_u": "[0, inf)", "rampup_fraction": "[0, 1]"}


def sharpen(probabilities: torch.Tensor, temperature: float) -> torch.Tensor:
    powered = probabilities ** (1.0 / temperature)
    return powered / powered.sum(-1, keepdim=True)


def mixup(inputs: torch.Tensor, targets: torch.Tensor, lam: float, permutation: torch.Tensor):
    """Convex combination with a permuted partner; lam >= 0.5 keeps each mixed sample closer to its own."""
    lam = max(lam, 1.0 - lam)
    return lam * inputs + (1 - lam) * inputs[permutation], lam * targets + (1 - lam) * targets[permutation]


def mixmatch_loss(logits_labeled: torch.Tensor, targets_labeled: torch.Tensor, logits_unlabeled: torch.Tensor,
                  targets_unlabeled: torch.Tensor, lambda_u: float) -> tuple[torch.Tensor, dict]:
    """Soft cross-entropy on the labeled part + lambda_u x mean squared error of the unlabeled probabilities."""
    sup_loss = -(targets_labeled * F.log_softmax(logits_labeled.float(), -1)).sum(-1).mean()
    unsup_loss = F.mse_loss(logits_unlabeled.float().softmax(-1), targets_unlabeled)
    return sup_loss + lambda_u * unsup_loss, {"sup_loss": sup_loss.detach(), "unsup_loss": unsup_loss.detach()}


class MixMatch(Algorithm):
    Options = MixMatchOptions
    cluster_head = "never"  # mixed images have no single cluster

    def __init__(self, config, manifest, device):
        super().__init__(config, manifest, device)
        self.unlabeled_views = tuple(f"weak{k}" for k in range(self.options.views))

    def _guess(self, model, views: list[torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            probabilities = torch.stack([model(view).float().softmax(-1) for view in views]).mean(0)
        return sharpen(probabilities, self.options.temperature)

    def loss(self, model, labeled, unlabeled, step, cluster=None):
        options = self.options
        views = [unlabeled[view] for view in self.unlabeled_views]
        guess = self._guess(model, views)
        num_labeled = labeled["image"].shape[0]
        inputs = torch.cat([labeled["image"], *views])
        targets = torch.cat([class_indicator(labeled["label"], self.num_classes), *([guess] * len(views))])
        rng = np.random.default_rng([self.config.seed, step, dist.rank()])
        # the partner permutation drawn on the device from a seed of the host's draw: no copy from host memory
        generator = torch.Generator(device=inputs.device)
        generator.manual_seed(int(rng.integers(2**62)))
        permutation = torch.randperm(len(inputs), generator=generator, device=inputs.device)
        mixed, mixed_targets = mixup(inputs, targets, float(rng.beta(options.alpha, options.alpha)), permutation)
        logits = model(mixed)
        tau = self.config.train.logit_adjustment
        logits_labeled = logits[:num_labeled] + tau * self.log_prior if tau else logits[:num_labeled]
        weight = options.lambda_u * self.ramp(options.rampup_fraction, step)
        loss, stats = mixmatch_loss(logits_labeled, mixed_targets[:num_labeled], logits[num_labeled:],
                                    mixed_targets[num_labeled:], weight)
        confidence, pseudo_labels = guess.max(-1)
        return loss, stats | {"mask": torch.ones_like(confidence), "pseudo_labels": pseudo_labels,
                              "confidence": confidence}

    def images_forwarded(self, labeled, unlabeled) -> int:
        return super().images_forwarded(labeled, unlabeled) * 2 - labeled["image"].shape[0]  # guess + mixed pass
