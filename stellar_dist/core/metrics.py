"""The classification report of labels against predictions (scikit-learn), and its console form: shared by a
run's evaluation, the cluster report's linear probe, cross-validation and the baselines."""

from __future__ import annotations

import json

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)


def classification_report(labels: np.ndarray, predictions: np.ndarray, classes: list[str]) -> dict:
    indices = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=indices, zero_division=0)
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, labels=indices, average="macro", zero_division=0)),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(classes)},
        "confusion_matrix": confusion_matrix(labels, predictions, labels=indices).tolist(),
        "classes": list(classes),
    }


def format_report(report: dict) -> str:
    lines = [f"accuracy {report['accuracy']:.4f}  balanced accuracy {report['balanced_accuracy']:.4f}  "
             f"macro-F1 {report['macro_f1']:.4f}", f"{'class':>10} {'precision':>9} {'recall':>7} {'f1':>6} {'n':>6}"]
    for name, row in report["per_class"].items():
        lines.append(f"{name:>10} {row['precision']:9.3f} {row['recall']:7.3f} {row['f1']:6.3f} {row['support']:6d}")
    lines.append("confusion matrix (rows: true, columns: predicted): " + json.dumps(report["confusion_matrix"]))
    return "\n".join(lines)
