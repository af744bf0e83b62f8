"""Test-split evaluation: predictions on every rank, gathered; metrics and plots on the main process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..core import dist
from ..core.errors import UserError
from ..core.files import atomic_path
from ..data.eval_data import forward_precision
from ..data.streams import ItemMaker, OnceStream, make_loader, shard_paths


@torch.no_grad()
def predict_batches(model: torch.nn.Module, loader, device: torch.device,
                    autocast_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """This rank's predictions: ids, labels, predicted classes, class probabilities (on `device`; the forward
    autocast to `autocast_dtype` when given)."""
    was_training = model.training
    model.eval()
    parts: dict[str, list] = {"id": [], "label": [], "prediction": [], "probability": [], "shard": [], "objid": []}
    refused = []  # ids of samples that could not be read: counted and listed, never scored
    for batch in loader:
        valid = batch["valid"]
        refused.append(batch["id"][~valid].to(device))
        if not bool(valid.any()):
            continue
        batch = {key: value[valid] for key, value in batch.items()}
        with forward_precision(device, autocast_dtype):
            logits = model(batch["image"].to(device, non_blocking=True)).float()
        for key in ("id", "shard", "objid", "label"):
            parts[key].append(batch[key].to(device, non_blocking=True))  # from pinned memory on a GPU: no wait
        parts["prediction"].append(logits.argmax(-1))
        parts["probability"].append(logits.softmax(-1))
    model.train(was_training)
    parts["refused"] = refused
    num_classes = getattr(model, "classifier").out_features
    empty = {"id": torch.zeros(0, dtype=torch.long), "label": torch.zeros(0, dtype=torch.long),
             "shard": torch.zeros(0, dtype=torch.long), "objid": torch.zeros(0, dtype=torch.long),
             "prediction": torch.zeros(0, dtype=torch.long), "probability": torch.zeros(0, num_classes),
             "refused": torch.zeros(0, dtype=torch.long)}
    return {key: torch.cat(value) if value else empty[key].to(device) for key, value in parts.items()}


def gather_predictions(model, shards_dir: str, manifest: dict, *, batch_size: int, num_workers: int,
                       grayscale: bool, device: torch.device, autocast_dtype: torch.dtype | None = None
                       ) -> dict[str, np.ndarray]:
    """Predictions for the whole test split on every rank, sorted by id; checks the count against the manifest."""
    stream = OnceStream(shard_paths(shards_dir, "test"), ItemMaker.for_shards("plain", manifest, grayscale),
                        batch_size, rank=dist.rank(), world_size=dist.world_size())
    local = predict_batches(model, make_loader(stream, num_workers, pin_memory=device.type == "cuda"), device,
                            autocast_dtype)
    gathered = {key: dist.gather_variable(value).cpu().numpy() for key, value in local.items()}
    refused = np.sort(gathered.pop("refused"))
    order = np.argsort(gathered["id"])
    gathered = {key: value[order] for key, value in gathered.items()}
    expected = manifest["num_samples"]["test"]
    seen = np.concatenate([gathered["id"], refused])
    if len(seen) != expected or len(np.unique(seen)) != expected:
        raise UserError(f"the test shards produced {len(seen)} samples ({len(np.unique(seen))} unique) for the "
                        f"manifest's {expected} test samples: run `stellar-dist pack --verify {shards_dir}` and "
                        "re-pack")
    if len(refused) == expected:
        raise UserError(f"none of the {expected} test samples of {shards_dir} could be read (first id "
                        f"{refused[0]}): run `stellar-dist pack --verify {shards_dir}` and re-pack")
    if len(refused) and dist.is_main():
        print(f"warning: {len(refused)} test sample(s) could not be read and are left out of the metrics (ids "
              f"{', '.join(map(str, refused[:10].tolist()))}{' ...' if len(refused) > 10 else ''}; listed in "
              "metrics.json under 'refused_ids')")
    return gathered | {"refused": refused}


def write_predictions(gathered: dict[str, np.ndarray], shards_dir: str | Path, classes: list[str], path: Path) -> Path:
    """predictions.csv: one row per test sample, in id order: id, objid (as text), true and predicted class, and
    the probability of each class. Written whole or not at all."""
    import csv

    from ..data.eval_data import objid_texts

    objids = objid_texts(gathered.get("objid"), str(shards_dir), ("test",), gathered["id"])
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "objid", "true_class", "predicted_class", *(f"p_{name}" for name in classes)])
        for index, sample_id in enumerate(gathered["id"].tolist()):
            writer.writerow([sample_id, objids[index], classes[int(gathered["label"][index])],
                             classes[int(gathered["prediction"][index])],
                             *(f"{value:.6g}" for value in gathered["probability"][index].tolist())])
    return path


def read_test_images(shards_dir: str | Path, gathered: dict, indices, manifest: dict) -> dict:
    """{id: (RGB uint8 image, objid)} of the test samples at `indices` of the gathered predictions, reading only
    their shards."""
    from ..data.streams import picture, read_some

    ids = {int(gathered["id"][index]) for index in indices}
    shards = {"test": {int(gathered["shard"][index]) for index in indices}}
    return {sample_id: (picture(raw, manifest), json.loads(raw["json"]).get("meta", {}).get("objid"))
            for sample_id, raw in read_some(shards_dir, shards, ids).items()}


def plot_confusion(report: dict, path: Path, where: str = "test") -> Path:
    """Row-normalised confusion matrix (each row: the recall of a true class), counts and fractions in the cells;
    the title gives accuracy with balanced accuracy and macro-F1 (accuracy alone hides a failing rare class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.array(report["confusion_matrix"], dtype=float)
    normalised = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    figure, axis = plt.subplots(figsize=(5.2, 4.4))
    image = axis.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    for (row, column), count in np.ndenumerate(matrix):
        axis.text(column, row, f"{int(count)}\n{normalised[row, column]:.2f}", ha="center", va="center",
                  color="white" if normalised[row, column] > 0.5 else "black", fontsize=10)
    ticks = range(len(report["classes"]))
    axis.set(xticks=ticks, yticks=ticks, xticklabels=report["classes"], yticklabels=report["classes"],
             xlabel="predicted class", ylabel="true (spectroscopic) class")
    axis.set_title(f"{where} split, {int(matrix.sum())} objects\naccuracy {report['accuracy']:.3f}   balanced "
                   f"{report['balanced_accuracy']:.3f}   macro-F1 {report['macro_f1']:.3f}", fontsize=10)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="fraction of the true class")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=150)
    plt.close(figure)
    return path


CURVE_NAMES = {"train/sup_loss": "labeled loss", "train/unsup_loss": "unlabeled loss",
               "train/cluster_loss": "cluster loss", "train/mask_ratio": "pseudo-labels kept",
               "train/pseudo_label_accuracy": "pseudo-label accuracy", "test/accuracy": "accuracy",
               "test/balanced_accuracy": "balanced accuracy", "test/macro_f1": "macro-F1"}


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    points = [(row["step"], row[key]) for row in rows if row.get(key) is not None]
    return ([step for step, _ in points], [value for _, value in points]) if points else ([], [])


def plot_curves(log_path: Path, path: Path, title: str = "") -> Path | None:
    """Training curves from log.jsonl, four titled panels: losses (log scale, so one spike does not flatten the
    rest), pseudo-labels (share kept, their accuracy, each class's share of them), evaluation (accuracy, balanced
    accuracy, macro-F1) and the recall of each class at every evaluation (the rare class is the one that fails).
    A series that is zero throughout (a loss the run does not train) is left out; `title` names the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not log_path.exists():
        return None
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    recalls = sorted({key for row in rows for key in row if key.startswith("test/recall/")})
    shares = sorted({key for row in rows for key in row if key.startswith("train/pseudo_label_share/")})
    panels = [("losses", ("train/sup_loss", "train/unsup_loss", "train/cluster_loss"), "loss (log scale)"),
              ("pseudo-labels", ("train/mask_ratio", "train/pseudo_label_accuracy", *shares), "fraction"),
              ("evaluation", ("test/accuracy", "test/balanced_accuracy", "test/macro_f1"), "score"),
              ("recall per class", tuple(recalls), "recall")]
    figure, axes = plt.subplots(1, len(panels), figsize=(17, 3.8))
    for axis, (panel, keys, ylabel) in zip(axes, panels):
        for key in keys:
            steps, values = _series(rows, key)
            if steps and any(value != 0 for value in values):
                share = key.startswith("train/pseudo_label_share/")
                axis.plot(steps, values, marker="." if key.startswith("test") else None, linestyle=":" if share
                          else "-", label=CURVE_NAMES.get(key, ("share " if share else "") + key.rsplit("/", 1)[-1]))
        axis.set(title=panel, xlabel="optimizer step", ylabel=ylabel)
        if panel == "losses" and any(value > 0 for line in axis.lines for value in line.get_ydata()):
            axis.set_yscale("log")
        elif panel != "losses":
            axis.set_ylim(0, 1.02)
        if axis.lines:  # a supervised run has no pseudo-labels: an empty panel, without a warning
            axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
        else:
            axis.text(0.5, 0.5, "not logged by this run", ha="center", va="center", transform=axis.transAxes)
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=130, bbox_inches="tight")
    plt.close(figure)
    return path
