"""FlexMatch (Zhang et al. 2021): curriculum pseudo-labelling with class-wise thresholds.

A class's learning effect is the number of unlabeled samples whose latest confident (>= ssl.threshold)
prediction is that class, normalised by the largest class count (with warm-up: by the number of samples never
yet confidently predicted, while it is larger). The threshold of class c is ssl.threshold x M(effect_c), with the
convex M(x) = x / (2 - x): classes the model rarely predicts confidently (QSOs) get lower thresholds, so they are
not starved of pseudo-labels. The per-sample table is updated from all ranks' samples (all-gathered), so every
rank holds the same statistics (per-rank tables are a known bug of other implementations).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core import dist
from .fixmatch import FixMatch


@dataclass(frozen=True)
class FlexMatchOptions:
    """The `ssl.flexmatch` config section."""

    warmup: bool = True  # threshold warm-up: never-confident samples count in the normaliser while they dominate
    RANGES: ClassVar[dict] = {}


def learning_effect(selected: torch.Tensor, num_classes: int, num_unlabeled: int, warmup: bool) -> torch.Tensor:
    """Per class: selected samples / normaliser. `selected` holds a class or -1 (never confident) per sample id
    (entries of ids outside the unlabeled split stay -1 and are not counted)."""
    counts = torch.bincount(selected[selected >= 0].long(), minlength=num_classes).float()
    unused = num_unlabeled - counts.sum()
    normaliser = torch.maximum(counts.max(), unused) if warmup else counts.max()
    return counts / normaliser.clamp(min=1)


def class_thresholds(effect: torch.Tensor, threshold: float) -> torch.Tensor:
    return threshold * effect / (2.0 - effect)


class FlexMatch(FixMatch):
    Options = FlexMatchOptions

    def __init__(self, config, manifest, device):
        super().__init__(config, manifest, device)
        self.num_unlabeled = manifest["num_samples"]["unlabeled"]
        self.selected = torch.full((manifest["num_input"],), -1, dtype=torch.int16, device=device)

    def threshold_mask(self, probabilities, ids):
        confidence, pseudo_labels = probabilities.max(-1)
        effect = learning_effect(self.selected, self.num_classes, self.num_unlabeled, self.options.warmup)
        mask = (confidence >= class_thresholds(effect, self.ssl.threshold)[pseudo_labels]).float()
        confident = confidence >= self.ssl.threshold
        all_ids, all_labels = dist.gather_variable(ids[confident]), dist.gather_variable(pseudo_labels[confident])
        self.selected[all_ids] = all_labels.to(self.selected.dtype)
        return mask

    def state_dict(self) -> dict:
        return super().state_dict() | {"selected": self.selected}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.selected = state["selected"].to(self.selected.device)
