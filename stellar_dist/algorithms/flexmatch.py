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
    # counted by index_add of 0/1 (exact in float32 below 2^24, in any order), not bincount of the selected
    # entries: a boolean index and a GPU bincount both make the host wait for the device
    counts = torch.zeros(num_classes, device=selected.device).index_add_(0, selected.clamp(min=0).long(),
                                                                          (selected >= 0).float())
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
        # every rank's ids and confident classes (-1: not confident), gathered at one fixed size: no host read
        update = torch.where(confidence >= self.ssl.threshold, pseudo_labels, -1)
        all_ids, all_updates = dist.gather_equal(ids.long()), dist.gather_equal(update)
        # one value per id even when two ranks drew the same sample (the larger class: the same in any order)
        latest = torch.full(self.selected.shape, -1, dtype=torch.long, device=self.selected.device)
        latest.scatter_reduce_(0, all_ids, all_updates, reduce="amax")
        self.selected = torch.where(latest >= 0, latest, self.selected.long()).to(self.selected.dtype)
        return mask

    def state_dict(self) -> dict:
        return super().state_dict() | {"selected": self.selected}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.selected = state["selected"].to(self.selected.device)
