"""Pseudo-Label (Lee 2013): the model's own confident predictions on the unlabeled images (one weak view, no
second view) become their targets; the unsupervised weight ramps up linearly, since early predictions are noise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .fixmatch import FixMatch


@dataclass(frozen=True)
class PseudoLabelOptions:
    """The `ssl.pseudolabel` config section."""

    rampup_fraction: float = 0.4  # ssl.lambda_u ramps up linearly over this fraction of train.steps
    RANGES: ClassVar[dict] = {"rampup_fraction": "[0, 1]"}


class PseudoLabel(FixMatch):
    Options = PseudoLabelOptions
    unlabeled_views = ("weak",)  # the prediction and its target come from the same view

    def unsup_weight(self, step: int) -> float:
        return self.ssl.lambda_u * self.ramp(self.options.rampup_fraction, step)
