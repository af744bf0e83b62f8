"""SoftMatch (Chen et al. 2023): every pseudo-label counts, weighted by a truncated Gaussian of its confidence.

A weak view whose confidence reaches the running mean confidence mu gets weight 1; below it, the weight is
exp(-(confidence - mu)^2 / (2 sigma^2 / n_sigma^2)), with mu and sigma^2 EMAs of the batch mean and variance of
the confidence. Low-confidence classes (QSOs, early in training) keep contributing, softly, instead of being cut
off by a hard threshold. Uniform alignment (UA) first rescales the weak-view probabilities so that their running
mean is uniform over classes: the weights are not dominated by the classes the model already favours.
`alignment=labeled` aligns to the labeled split's class shares instead (SDSS is ~57/32/11, not balanced: uniform
alignment pushes a third of the pseudo-labels towards QSO once the model finds them). Batch
statistics are all-reduced over ranks before they update the EMAs, so every rank holds the same state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core import dist
from .alignment import DistributionAlignment
from .fixmatch import FixMatch


@dataclass(frozen=True)
class SoftMatchOptions:
    """The `ssl.softmatch` config section."""

    ema_momentum: float = 0.999  # EMA of the confidence's mean and variance, and of UA's class mean (paper: 0.999)
    n_sigma: float = 2.0  # the Gaussian's width is sigma / n_sigma (paper and USB: 2)
    alignment: str = "uniform"  # the class mean weak-view probabilities are aligned to: "uniform" (paper),
    #                             "labeled" (the labeled split's class shares) or "none"
    RANGES: ClassVar[dict] = {"ema_momentum": "[0, 1)", "n_sigma": "(0, 100]"}
    CHOICES: ClassVar[dict] = {"alignment": ("uniform", "labeled", "none")}


def truncated_gaussian_weight(confidence: torch.Tensor, mean: torch.Tensor, variance: torch.Tensor,
                              n_sigma: float) -> torch.Tensor:
    """1 at or above `mean`; exp(-(c - mean)^2 / (2 variance / n_sigma^2)) below it."""
    below = (confidence - mean).clamp(max=0.0)
    return torch.exp(-below**2 / (2 * variance.clamp(min=1e-12) / n_sigma**2))


class SoftMatch(FixMatch):
    Options = SoftMatchOptions
    aligns_distribution = False  # its own alignment (ssl.softmatch.alignment), not ssl.distribution_alignment

    def __init__(self, config, manifest, device):
        super().__init__(config, manifest, device)
        uniform = torch.full((self.num_classes,), 1.0 / self.num_classes, device=device)
        target = {"uniform": uniform, "labeled": self.labeled_prior}.get(self.options.alignment)
        if target is not None:
            self.alignment = DistributionAlignment(target, momentum=self.options.ema_momentum)
        self.mean = uniform.mean().clone()  # running mean confidence: starts at chance
        self.variance = torch.ones((), device=device)

    def threshold_mask(self, probabilities, ids):
        """The weight of each pseudo-label (a soft mask), after updating the confidence statistics."""
        confidence = probabilities.max(-1).values
        total = dist.all_reduce_sum(torch.stack([confidence.sum(), (confidence**2).sum(),
                                                 confidence.new_full((), float(len(confidence)))]))
        count = total[2].clamp(min=1)
        batch_mean = total[0] / count
        batch_variance = (total[1] / count - batch_mean**2).clamp(min=0) * count / (count - 1).clamp(min=1)
        m = self.options.ema_momentum
        self.mean = m * self.mean + (1 - m) * batch_mean
        self.variance = m * self.variance + (1 - m) * batch_variance
        return truncated_gaussian_weight(confidence, self.mean, self.variance, self.options.n_sigma)

    def state_dict(self) -> dict:
        return super().state_dict() | {"mean": self.mean, "variance": self.variance}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.mean, self.variance = state["mean"].to(self.device), state["variance"].to(self.device)
