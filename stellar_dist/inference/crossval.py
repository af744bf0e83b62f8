"""A cross-validated report over every spectrum: the K runs of `pack --fold I/K` pooled.

    for i in 1 2 3 4 5; do
        stellar-dist pack --catalog cat.csv --out shards-$i --fold $i/5
        stellar-dist train --config configs/sdss_cpu.yaml data.shards=shards-$i output_dir=runs/fold-$i
    done
    stellar-dist evaluate --folds runs/fold-1 runs/fold-2 runs/fold-3 runs/fold-4 runs/fold-5

Each run's predictions.csv holds its test fold; the folds are disjoint and together hold every spectrum once, so
the pooled report scores every object by a model that never trained on it (per-class F1 over all of a class's
spectra, not over the few of one test split), and the spread of macro-F1 over the folds is its error bar.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.errors import UserError
from ..core.files import check_regular, write_atomically
from ..core.metrics import classification_report, format_report


def _predictions(run: Path) -> pd.DataFrame:
    path = run / "predictions.csv"
    try:
        check_regular(path)
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise UserError(f"--folds: {run} has no readable predictions.csv ({error}): pass finished runs trained on "
                        "`pack --fold I/K` shards") from None


def pooled_report(runs: list[str], out: str | None = None) -> dict:
    """Per-fold macro-F1 (mean, std) and the report of all folds' predictions pooled."""
    if len(runs) < 2:
        raise UserError("--folds needs the runs of two or more folds")
    frames = [_predictions(Path(run)) for run in runs]
    pooled = pd.concat(frames, ignore_index=True)
    repeated = pooled["id"][pooled["id"].duplicated()]
    if not repeated.empty:
        raise UserError(f"--folds: object id {repeated.iloc[0]} is in the test split of two runs: pass the runs of "
                        "one `--fold I/K` series (the same K and seed), each fold once")
    classes = sorted(set(pooled["true_class"]) | set(pooled["predicted_class"]))
    index = {name: position for position, name in enumerate(classes)}

    def report(frame: pd.DataFrame) -> dict:
        return classification_report(frame["true_class"].map(index).to_numpy(),
                                     frame["predicted_class"].map(index).to_numpy(), classes)

    folds = [report(frame)["macro_f1"] for frame in frames]
    result = report(pooled) | {"folds": len(runs), "fold_macro_f1": folds,
                               "fold_macro_f1_mean": float(np.mean(folds)), "fold_macro_f1_std": float(np.std(folds)),
                               "runs": [str(run) for run in runs]}
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        write_atomically(Path(out) / "metrics.json", json.dumps(result, indent=2))
    return result


def format_pooled(result: dict) -> str:
    return (f"{result['folds']} folds, every spectrum tested once: macro-F1 per fold {result['fold_macro_f1_mean']:.4f}"
            f" +/- {result['fold_macro_f1_std']:.4f}; pooled:\n" + format_report(result))
