"""Single-process end-to-end runs through the user's command (launch/train.py), resume, evaluate, W&B offline."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO_ROOT, TINY, run_cli, train
from wandb_records import config_and_summary, read_records

def test_run_files_metrics_and_wandb_offline(sim_shards, trained_run):
    out, stdout = trained_run
    assert "accuracy" in stdout and str(out) in stdout
    # what the user watches: a summary before the first step, evaluations and progress with the time left
    run_id = (out / "wandb_run_id").read_text().strip()
    assert "run: fixmatch on 1 process(es), device cpu" in stdout and "labeled 40 (GALAXY" in stdout
    assert f"W&B offline, run id {run_id}" in stdout and "evaluation at step 3 on the test split" in stdout
    assert "s left" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["test"]
    assert metrics["steps"] == 6 and metrics["world_size"] == 1
    phases = metrics["phase_seconds"]  # wall time per phase and peak memory per rank (bench/scale.py reads them)
    assert set(phases) == {"setup", "train", "final_evaluation", "final_clustering", "final_save"}
    # each phase is rounded to the millisecond: five of them may add up to 2.5 ms over the total
    assert all(value > 0 for value in phases.values()) and sum(phases.values()) <= metrics["train_seconds"] + 5e-3
    assert len(metrics["peak_rss_mb"]) == 1 and 100 < metrics["peak_rss_mb"][0] < 24_000
    assert sum(row["support"] for row in test["per_class"].values()) == 40 == sum(map(sum, test["confusion_matrix"]))
    assert set(test) >= {"accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion_matrix", "classes"}
    assert (out / "plots" / "confusion_matrix.png").stat().st_size > 0
    from PIL import Image

    # the figures at their slide sizes: four titled panels (losses, pseudo-labels, evaluation, recall per class),
    # the confusion matrix with its colour bar
    width, height = Image.open(out / "plots" / "training_curves.png").size
    assert width > 3.5 * height  # four panels side by side, the legends under them
    assert Image.open(out / "plots" / "confusion_matrix.png").size == (780, 660)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train_rows = [row for row in log if "train/sup_loss" in row]
    assert [row["step"] for row in train_rows] == [2, 4, 6]
    for key in ("train/unsup_loss", "train/mask_ratio", "train/lr", "train/images_per_second",
                "train/mask_ratio/GALAXY", "train/pseudo_label_accuracy"):
        assert key in train_rows[-1]
    shares = [value for key, value in train_rows[-1].items() if key.startswith("train/pseudo_label_share/")]
    assert len(shares) == 3 and (all(value is None for value in shares) or abs(sum(shares) - 1) < 1e-9)
    assert [row["step"] for row in log if "test/accuracy" in row] == [3, 6]
    final = [row for row in log if "test/accuracy" in row][-1]  # per-class metrics at every evaluation
    assert final["test/f1/QSO"] == test["per_class"]["QSO"]["f1"] and "test/recall/STAR" in final
    # not a terminal: one plain line per log interval, no progress-bar redraws
    assert "train step 6/6: sup=" in stdout and "it/s]" not in stdout  # (stdout + stderr)
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_0000006"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_0000003", "step_0000006"]
    # Weights stored once per checkpoint: the training weights, the optimizer's, the EMA's (in model/, which
    # OUTPUT_DIR/model links to); nothing else of weight size.
    weights = (out / "model" / "model.safetensors").stat().st_size
    big = sorted(str(path.relative_to(out)) for path in out.rglob("*") if path.is_file()
                 and path.stat().st_size > weights / 2 and "step_0000006" in str(path))
    assert big == [f"checkpoints/step_0000006/{name}" for name in ("model.safetensors", "model/model.safetensors",
                                                                    "optimizer.bin")]
    assert (out / "model" / "model.safetensors").samefile(out / "checkpoints" / "step_0000006" / "model" /
                                                          "model.safetensors")
    run_files = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 1
    config, summary = config_and_summary(run_files[0])
    assert json.loads(config["ssl"])["threshold"] == 0.5 and json.loads(config["train"])["steps"] == 6
    assert abs(float(summary["test/accuracy"]) - test["accuracy"]) < 1e-9
    assert list((out / "wandb").glob("offline-run-*/files/media/images/test/confusion_matrix_*.png"))
    # the interactive confusion matrix, the worst-classified table with images, the model and manifest artifacts
    artifacts = {record.artifact.type: record.artifact for record in read_records(run_files[0])
                 if record.WhichOneof("record_type") == "artifact"}
    assert {"model", "dataset", "run_table"} <= set(artifacts)
    assert (out / "wandb" / "staging").is_dir()  # W&B's artifact staging lives in the run, not in the home folder
    assert {item.path for item in artifacts["model"].manifest.contents} == {"model.safetensors", "config.json"}
    assert {item.path for item in artifacts["dataset"].manifest.contents} == {"manifest.json"}
    worst = json.loads(next((out / "wandb").glob("offline-run-*/files/media/table/test/worst_classified_*.json"))
                       .read_text())
    assert len(worst["data"]) == 24 and worst["columns"][-1] == "image"
    assert list((out / "wandb").glob("offline-run-*/files/media/table/test/confusion_matrix_interactive_*.json"))
    evaluated = run_cli("evaluate", "--checkpoint", str(out), "--shards", str(sim_shards))
    assert f"accuracy {test['accuracy']:.4f}" in evaluated.stdout
    assert json.loads((out / "eval_step_0000006" / "metrics.json").read_text())["test"] == test
    # per-object predictions of the test split: the same from training's final evaluation and from `evaluate`
    import pandas as pd

    during, after = (pd.read_csv(folder / "predictions.csv", dtype={"objid": str})
                     for folder in (out, out / "eval_step_0000006"))
    assert len(during) == 40 and during["id"].is_monotonic_increasing and during["objid"].str.len().min() == 19
    assert during.equals(after)
    assert (during["true_class"] == during["predicted_class"]).mean() == test["accuracy"]
    # the same command again: nothing to do, said in one line; no duplicate log rows, no second W&B run
    log_before, wandb_before = (out / "log.jsonl").read_text(), sorted((out / "wandb").glob("offline-run-*"))
    again = train(f"data.shards={sim_shards}", f"output_dir={out}", "tracking=wandb", "resume=auto")
    assert "already finished its 6 steps" in again.stdout
    assert (out / "log.jsonl").read_text() == log_before
    assert sorted((out / "wandb").glob("offline-run-*")) == wandb_before


@pytest.mark.parametrize("augment_on", ["workers", "device"])
def test_resume_from_mid_run_checkpoint_reaches_the_same_weights(sim_shards, tmp_path, augment_on, trained_run):
    """Views made per sample in the workers, or batched on the device from each sample's seed: both resume
    exactly."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    if augment_on == "workers":  # the default on CPU: the uninterrupted run is the shared one
        full = trained_run[0]
    else:
        train(f"data.shards={sim_shards}", f"output_dir={full}", f"data.augment_on={augment_on}")
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step_0000003", resumed / "checkpoints" / "step_0000003")
    (resumed / "checkpoints" / "latest").write_text("step_0000003\n")
    if augment_on == "workers":
        refused = train(f"data.shards={sim_shards}", f"output_dir={resumed}", check=False)
        assert refused.returncode == 2 and "already holds a run (step_0000003)" in refused.stderr
    result = train(f"data.shards={sim_shards}", f"output_dir={resumed}", "resume=auto", f"data.augment_on={augment_on}")
    assert "resumed from" in result.stdout and "at step 3" in result.stdout
    final_full = load_file(full / "checkpoints" / "step_0000006" / "model.safetensors")
    final_resumed = load_file(resumed / "checkpoints" / "step_0000006" / "model.safetensors")
    for key, value in final_full.items():
        assert torch.equal(value, final_resumed[key]), key
    ema_full = load_file(full / "checkpoints" / "step_0000006" / "model" / "model.safetensors")
    ema_resumed = load_file(resumed / "checkpoints" / "step_0000006" / "model" / "model.safetensors")
    assert all(torch.equal(value, ema_resumed[key]) for key, value in ema_full.items())


def test_non_finite_loss_stops_with_a_clear_message(sim_shards, tmp_path):
    result = train(f"data.shards={sim_shards}", f"output_dir={tmp_path / 'run'}", "train.lr=1e12",
                   "ssl.algorithm=supervised", "train.warmup_steps=1", "checkpoint.every_steps=1", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "non-finite" in error[0] and "last good checkpoint is" in error[0]


def test_missing_shards_and_bad_weights_are_one_line_errors(tmp_path, sim_shards):
    result = train(f"data.shards={tmp_path / 'nope'}", check=False)
    assert result.returncode == 2 and "has no manifest.json" in result.stderr and "Traceback" not in result.stderr
    result = train(f"data.shards={sim_shards}", f"output_dir={tmp_path / 'r'}", "model.weights=imagenet",
                   check=False)
    assert result.returncode == 2 and "ImageNet weights" in result.stderr and "Traceback" not in result.stderr


def test_training_without_a_checkout(sim_shards, tmp_path):
    """`stellar-dist train` and `accelerate launch -m stellar_dist train` from any folder (a pip install)."""
    args = [*TINY, f"data.shards={sim_shards}", "train.steps=2", "eval.every_steps=0", "checkpoint.every_steps=0",
            "cluster.at_end=false"]
    cli = subprocess.run([sys.executable, "-m", "stellar_dist", "train", *args, f"output_dir={tmp_path / 'a'}"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    launched = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                               str(REPO_ROOT / "accelerate_configs" / "cpu.yaml"), "-m", "stellar_dist", "train", *args,
                               f"output_dir={tmp_path / 'b'}"], capture_output=True, text=True, timeout=300,
                              cwd=tmp_path)
    for result, folder in ((cli, "a"), (launched, "b")):
        assert result.returncode == 0, result.stderr[-3000:]
        assert json.loads((tmp_path / folder / "metrics.json").read_text())["steps"] == 2
    assert "cluster=" not in cli.stderr  # no cluster head: no cluster loss on the progress bar


def test_a_gpu_launch_on_a_cpu_machine_says_so(sim_shards, tmp_path, monkeypatch):
    """accelerate_configs/multi_gpu.yaml (bf16) where there is no GPU: the run trains on the CPU and says so in one
    warning line (accelerate launch passes the config's mixed_precision as ACCELERATE_MIXED_PRECISION)."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    result = train(f"data.shards={sim_shards}", f"output_dir={tmp_path / 'run'}", "train.steps=2",
                   "cluster.at_end=false", "eval.every_steps=0", "checkpoint.every_steps=0")
    assert "warning: this launch asks for GPUs" in result.stdout and "accelerate_configs/cpu.yaml" in result.stdout
