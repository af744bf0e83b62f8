"""`stellar-dist evaluate` and `stellar-dist cluster`: the test report and the cluster analysis of any trained model
(a checkpoint, a run folder meaning its newest checkpoint, or a model folder moved anywhere), on one process.

    stellar-dist evaluate --checkpoint runs/demo --shards data/sim-shards
    stellar-dist cluster --checkpoint runs/demo --shards data/sim-shards --k 15
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from ..clustering.cluster_stage import num_clusters, run_clustering
from ..core.errors import UserError
from ..core.files import write_atomically
from ..core.metrics import classification_report
from ..core.outputs import claim_all, take_folder
from ..data.eval_data import EvalData
from ..data.manifest import evaluated_on, load_manifest
from ..training import checkpoint
from ..training.config import config_from_dict, load_config
from ..training.evaluation import gather_predictions, plot_confusion, write_predictions
from .model_folder import load_model


def load_trained_model(path: str | Path, manifest: dict):
    """(the EMA model in its run's layout, the run's config, the folder outputs are named after) from a checkpoint,
    a run folder (its newest complete checkpoint) or a model folder, wherever it was moved; refuses shards whose
    classes are not the ones the model was trained on."""
    path = Path(path)
    if not (path / "config.json").is_file() and not checkpoint.is_checkpoint(path):
        path = checkpoint.resolve(path)  # a run or checkpoints folder: its newest complete checkpoint
    model, description = load_model(path)
    folder = Path(description["folder"])
    named = folder.parent if checkpoint.is_checkpoint(folder.parent) else folder
    if description.get("run_config") is not None:
        config = config_from_dict(description["run_config"])
    elif (named.parent.parent / "config.yaml").is_file():  # a model folder written before run_config existed
        config = load_config(named.parent.parent / "config.yaml")
    else:
        raise UserError(f"{folder} does not say how its run was configured: pass the checkpoint inside its run "
                        "folder (RUN/checkpoints/step_*)")
    if list(description["classes"]) != list(manifest["classes"]):
        raise UserError(f"checkpoint {named} was trained on classes {list(description['classes'])}, the "
                        f"shards have {manifest['classes']}: pass the shards the model was trained on")
    return model, config, named


def evaluate_checkpoint(checkpoint_path: str | Path, shards_dir: str | Path, out_dir: str | Path | None = None,
                        num_workers: int = 2) -> dict:
    """Evaluate a checkpoint's EMA model on a test split; writes metrics.json and the confusion matrix."""
    manifest = load_manifest(shards_dir)
    model, config, folder = load_trained_model(checkpoint_path, manifest)
    out_dir = Path(out_dir) if out_dir else default_out(folder, "eval")
    lock = take_folder(out_dir, EVALUATE_FILES, "evaluate", {"--checkpoint": folder, "--shards": shards_dir})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gathered = gather_predictions(model.to(device), str(shards_dir), manifest, batch_size=config.eval.batch_size,
                                  num_workers=num_workers, grayscale=config.data.grayscale, device=device)
    report = classification_report(gathered["label"], gathered["prediction"], manifest["classes"])
    report["refused_ids"] = gathered["refused"].tolist()  # unreadable test samples, left out
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(out_dir / "metrics.json", json.dumps({"test": report, "checkpoint": str(folder),
                                                           "shards": str(shards_dir)}, indent=2))
    plot_confusion(report, out_dir / "confusion_matrix.png", evaluated_on(manifest))
    write_predictions(gathered, shards_dir, manifest["classes"], out_dir / "predictions.csv")
    claim_all(out_dir, EVALUATE_FILES, "evaluate")
    lock.release()
    return report | {"out_dir": str(out_dir)}


def default_out(folder: Path, command: str) -> Path:
    """RUN/eval_step_* for a checkpoint in its run, else eval_NAME beside the folder."""
    if checkpoint.is_checkpoint(folder) and folder.parent.name == "checkpoints":
        return folder.parent.parent / f"{command}_{folder.name}"
    return folder.parent / f"{command}_{folder.name}"


EVALUATE_FILES = ("metrics.json", "confusion_matrix.png", "predictions.csv")


def cluster_checkpoint(checkpoint_path: str, shards_dir: str, k: int | None, backend: str | None,
                       out_dir: str | None, num_workers: int = 2) -> dict:
    """`stellar-dist cluster`: the analysis for any trained checkpoint, on one process."""
    manifest = load_manifest(shards_dir)
    model, config, folder = load_trained_model(checkpoint_path, manifest)
    cluster = replace(config.cluster, **{key: value for key, value in (("k", k), ("backend", backend))
                                         if value is not None})
    fit = manifest["num_samples"]["labeled"] + manifest["num_samples"]["unlabeled"]
    if not 2 <= num_clusters(cluster, len(manifest["classes"])) <= fit:
        raise UserError(f"--k {num_clusters(cluster, len(manifest['classes']))} is not between 2 and the {fit} "
                        "labeled + unlabeled samples of the shards: choose a k in that range")
    out = Path(out_dir) if out_dir else default_out(folder, "cluster")
    lock = take_folder(out, CLUSTER_FILES, "cluster", {"--checkpoint": folder, "--shards": shards_dir})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = EvalData(str(shards_dir), manifest, config.eval.batch_size, num_workers, config.data.grayscale, device)
    _, metrics = run_clustering(model.to(device), cluster, data, seed=config.seed, plots_dir=out,
                                assignments=out / "assignments.csv")
    write_atomically(out / "metrics.json", json.dumps({"cluster": metrics, "checkpoint": str(folder)}, indent=2))
    claim_all(out, CLUSTER_FILES, "cluster")
    lock.release()
    return metrics | {"out_dir": str(out)}


CLUSTER_FILES = ("metrics.json", "cluster_grid.png", "cluster_table.png", "assignments.csv")
