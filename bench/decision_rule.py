"""How far a run's decision rule is from its macro-F1 optimum: predictions.csv re-scored with the class log-prior
shifted by t (p_c * prior_c^t, renormalised) for a few t, t = 0 being the run's own rule.

    python bench/decision_rule.py runs/label_efficiency/runs/labeled_0.69_validation_sets/ROW/seed*

A training run with `train.logit_adjustment=tau` learns logits that already subtract tau x log prior; t > 0 gives
part of it back (towards the plain maximum-likelihood rule), t < 0 pushes further towards rare classes. Read it on
validation runs only (it chooses a setting); the priors are the labeled split's class shares from the manifest.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.metrics import f1_score

SHIFTS = (-0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0)


def scores(run: Path) -> dict[float, tuple[float, float]]:
    """{t: (macro-F1, F1 of the rarest class)} of one run's predictions.csv."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    manifest = json.loads((Path(config["data"]["shards"]) / "manifest.json").read_text())
    classes = manifest["classes"]
    counts = np.array([manifest["counts"]["labeled"][name] for name in classes], dtype=float)
    frame = pd.read_csv(run / "predictions.csv", dtype={"objid": str})
    probabilities = frame[[f"p_{name}" for name in classes]].to_numpy()
    truth = frame["true_class"].map({name: index for index, name in enumerate(classes)}).to_numpy()
    rare = int(np.argmin(counts))
    result = {}
    for shift in SHIFTS:
        predicted = (np.log(probabilities + 1e-12) + shift * np.log(counts / counts.sum())).argmax(1)
        per_class = f1_score(truth, predicted, average=None, labels=range(len(classes)))
        result[shift] = (float(per_class.mean()), float(per_class[rare]))
    return result


def main() -> None:
    runs = [Path(path) for path in sys.argv[1:]]
    if not runs:
        raise SystemExit(__doc__)
    table = [scores(run) for run in runs]
    print("| prior shift t | macro-F1 (mean ± std over runs) | rarest class F1 |\n|---|---|---|")
    for shift in SHIFTS:
        macro = [row[shift][0] for row in table]
        rare = [row[shift][1] for row in table]
        print(f"| {shift:+.2f}{' (the run)' if shift == 0 else ''} | {np.mean(macro):.3f} ± {np.std(macro):.3f} | "
              f"{np.mean(rare):.3f} ± {np.std(rare):.3f} |")


if __name__ == "__main__":
    main()
