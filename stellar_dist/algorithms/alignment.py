"""Distribution alignment (ReMixMatch, Berthelot et al. 2020) for the pseudo-labelling algorithms.

Weak-view class probabilities are multiplied by target / running mean of the model's predictions and
renormalised, so that pseudo-labels follow the labeled class mix instead of the classes the model already
favours (the rare QSOs otherwise never clear a high threshold). The running mean is an EMA of the global batch
mean (all-reduced), identical on every rank.
"""

from __future__ import annotations

import torch

from ..core import dist


def align(probabilities: torch.Tensor, target: torch.Tensor, running_mean: torch.Tensor) -> torch.Tensor:
    aligned = probabilities * (target / running_mean.clamp(min=1e-6))
    return aligned / aligned.sum(-1, keepdim=True)


class DistributionAlignment:
    def __init__(self, target: torch.Tensor, momentum: float = 0.999):
        self.target, self.momentum = target.float(), momentum
        self.running_mean = target.float().clone()  # starts as a no-op

    def __call__(self, probabilities: torch.Tensor) -> torch.Tensor:
        # the count made on the device (new_full), not copied from the host: no wait for the GPU
        total = dist.all_reduce_sum(torch.cat([probabilities.sum(0), probabilities.new_full((1,), len(probabilities))]))
        batch_mean = total[:-1] / total[-1].clamp(min=1)
        self.running_mean = self.momentum * self.running_mean + (1 - self.momentum) * batch_mean
        return align(probabilities, self.target, self.running_mean)

    def state_dict(self) -> dict:
        return {"running_mean": self.running_mean}

    def load_state_dict(self, state: dict) -> None:
        self.running_mean = state["running_mean"].to(self.running_mean.device)
