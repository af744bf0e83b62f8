"""Pseudo-Label (Lee 2013): the model's own confident predictions on the unlabeled images (one weak view, no
second view) become their targets; the unsupervised weight ramps up linearly, since early predictions are noise."""

from __future__ import annotations

from .fixmatch import FixMatch


class PseudoLabel(FixMatch):
    unlabeled_views = ("weak",)  # the prediction and its target come from the same view

    def unsup_weight(self, step: int) -> float:
        return self.ssl.lambda_u * self.ramp(self.ssl.pseudolabel.rampup_fraction, step)
