"""FreeMatch (Wang et al. 2023): self-adaptive thresholds and a self-adaptive fairness term.

The global threshold tau is an EMA of the mean weak-view confidence (it rises as the model learns); each class's
threshold is tau x p_c / max(p), with p an EMA of the mean predicted class distribution, so rarely predicted
classes get lower thresholds. The fairness term pushes the (histogram-normalised) mean prediction on the masked
strong views towards the (histogram-normalised) EMA prediction. All batch statistics are all-reduced over ranks
before they update the EMAs, so every rank holds the same state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core import dist
from .base import class_indicator
from .fixmatch import FixMatch


@dataclass(frozen=True)
class FreeMatchOptions:
    """The `ssl.freematch` config section."""

    ema_momentum: float = 0.999  # EMA of the global confidence and class distribution (paper: 0.999)
    lambda_fairness: float = 0.01  # weight of the self-adaptive fairness term (0: off)
    RANGES: ClassVar[dict] = {"ema_momentum": "[0, 1)", "lambda_fairness": "[0, inf)"}


def sum_normalise(values: torch.Tensor) -> torch.Tensor:
    return values / values.sum().clamp(min=1e-12)


def fairness_loss(logits_strong: torch.Tensor, mask: torch.Tensor, p_model: torch.Tensor,
                  histogram: torch.Tensor) -> torch.Tensor:
    """sum_c a_c log b_c with a = SumNorm(p / h) from the EMA statistics (no gradient) and b = SumNorm(mean
    softmax / histogram) over the masked strong views of this rank; 0 without masked samples. The mask weights
    every row instead of selecting rows: selecting (and bincount) would make the host wait for the device."""
    weights = mask.float()[:, None]
    count = weights.sum()
    probabilities = logits_strong.float().softmax(-1)
    predicted = class_indicator(probabilities.argmax(-1), p_model.numel())
    batch_histogram = sum_normalise((predicted * weights).sum(0))
    target = sum_normalise(torch.nan_to_num(p_model / histogram, posinf=0.0)).detach()
    mean_probabilities = (probabilities * weights).sum(0) / count.clamp(min=1)
    mean = sum_normalise(mean_probabilities * torch.nan_to_num(1.0 / batch_histogram, posinf=0.0))
    return torch.where(count > 0, (target * torch.log(mean + 1e-12)).sum(), logits_strong.sum() * 0.0)


class FreeMatch(FixMatch):
    Options = FreeMatchOptions

    def __init__(self, config, manifest, device):
        super().__init__(config, manifest, device)
        uniform = torch.full((self.num_classes,), 1.0 / self.num_classes, device=device)
        self.tau, self.p_model, self.histogram = uniform.mean().clone(), uniform.clone(), uniform.clone()

    def threshold_mask(self, probabilities, ids):
        m = self.options.ema_momentum
        confidence, pseudo_labels = probabilities.max(-1)
        counts = class_indicator(pseudo_labels, self.num_classes).sum(0)
        total = dist.all_reduce_sum(torch.cat([confidence.sum().reshape(1), probabilities.sum(0), counts,
                                               confidence.new_full((1,), float(len(confidence)))]))
        n = total[-1].clamp(min=1)
        c = self.num_classes
        self.tau = m * self.tau + (1 - m) * total[0] / n
        self.p_model = m * self.p_model + (1 - m) * total[1 : 1 + c] / n
        self.histogram = m * self.histogram + (1 - m) * total[1 + c : 1 + 2 * c] / n
        class_threshold = self.tau * self.p_model / self.p_model.max()
        return (confidence >= class_threshold[pseudo_labels]).float()

    def extra_loss(self, logits_strong, mask):
        weight = self.options.lambda_fairness
        if weight == 0:
            return 0.0, {}
        loss = fairness_loss(logits_strong, mask, self.p_model, self.histogram)
        return weight * loss, {"fairness_loss": loss.detach(), "threshold": self.tau.detach()}

    def state_dict(self) -> dict:
        return super().state_dict() | {"tau": self.tau, "p_model": self.p_model, "histogram": self.histogram}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.tau, self.p_model, self.histogram = (state[key].to(self.device) for key in ("tau", "p_model",
                                                                                             "histogram"))
