"""The training loop under Accelerate, on 1..N processes; it names no algorithm.

    train(config)   = setup (session.py) -> train_loop -> final reports -> one final save -> metrics.json

Each step reads: batches (batches.py) -> the cluster head's targets (clustering/head.py) -> the algorithm's loss
(algorithms/) -> optimizer and EMA step -> cadences (log, evaluate, re-cluster, save, stop). Orchestration lives
here (what the main process writes and prints); losses are in the algorithms, collectives in core/dist.py, the
saved state in state.py (`save`, the only writer of checkpoints and of the model folder).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..clustering.cluster_stage import format_cluster_report
from ..core import dist
from ..core.errors import UserError, peer_failure, user_message
from ..core.files import write_atomically
from ..core.metrics import classification_report, format_report
from ..data.eval_data import AUTOCAST_DTYPES
from ..data.manifest import evaluated_on
from . import checkpoint
from .batches import TrainingBatches
from .config import Config
from .diagnostics import IntervalStats, peak_rss_mb_of_this_process, phase
from .evaluation import (
    gather_predictions,
    plot_confusion,
    plot_curves,
    write_predictions,
)
from .optim import update_ema
from .preemption import Stopped, StopRequest, resume_command
from .resume import finished_report
from .session import Run, setup
from .state import publish_model, save, stop_if_non_finite


def _stop_non_finite(run: Run, step: int, non_finite_steps: torch.Tensor) -> None:
    """Checked at log / evaluation / checkpoint boundaries, not every step: one host sync per interval, and no
    weights are saved or evaluated in between."""
    stop_if_non_finite(run, step, non_finite_steps, "the loss")


def evaluate_run(run: Run, step: int, final: bool = False) -> dict:
    """EMA model on the whole test split (all ranks); metrics and plots written on the main process (and, at the
    end, predictions.csv: every test object's predicted class and probabilities). Evaluations during training run
    in the run's precision (bf16 on GPUs); the final one in full precision, as `stellar-dist evaluate` repeats it."""
    config = run.config
    precision = None if final else AUTOCAST_DTYPES.get(run.accelerator.mixed_precision)
    gathered = gather_predictions(run.ema.module, config.data.shards, run.manifest, batch_size=config.eval.batch_size,
                                  num_workers=config.data.num_workers, grayscale=config.data.grayscale,
                                  device=run.accelerator.device, autocast_dtype=precision)
    run.model.train()  # back to training mode after every evaluation (kekmodel#42)
    report = classification_report(gathered["label"], gathered["prediction"], run.manifest["classes"])
    report["refused_ids"] = gathered["refused"].tolist()  # unreadable test samples, left out
    per_class = {f"test/{measure}/{name}": values[measure] for name, values in report["per_class"].items()
                 for measure in ("f1", "recall", "precision")}  # QSO is the class that fails: follow it
    run.tracker.log({"test/accuracy": report["accuracy"], "test/balanced_accuracy": report["balanced_accuracy"],
                     "test/macro_f1": report["macro_f1"]} | per_class, step)
    if dist.is_main():
        image = plot_confusion(report, run.output_dir / "plots" / "confusion_matrix.png", evaluated_on(run.manifest))
        run.tracker.log_images({"test/confusion_matrix": image}, step)
        if final:
            write_predictions(gathered, config.data.shards, run.manifest["classes"], run.output_dir / "predictions.csv")
            run.tracker.log_evaluation(gathered, run.manifest, config.data.shards, step)
    if dist.is_main() and not final:  # during training: one line on the console too
        print(f"evaluation at step {step} on the {evaluated_on(run.manifest)} split: accuracy "
              f"{report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f}", flush=True)
    return report


def _write_metrics(run: Run, report: dict | None, step: int, seconds: float, clusters: dict | None,
                   peak_rss_mb: list[float]) -> None:
    if not dist.is_main():
        return
    # Without a class head (DeepCluster alone) there is no test report: its linear probe is under "cluster".
    # phase_seconds and peak_rss_mb (per rank) are what bench/scale.py compares across catalog sizes.
    metrics = {"steps": step, "world_size": run.accelerator.num_processes, "algorithm": run.config.ssl.algorithm,
               "arch": run.config.model.arch, "train_seconds": seconds, "evaluated_on": evaluated_on(run.manifest),
               "phase_seconds": {name: round(value, 3) for name, value in run.phase_seconds.items()},
               "peak_rss_mb": [round(value, 1) for value in peak_rss_mb]} | ({"test": report} if report else {})
    if clusters is not None:
        metrics["cluster"] = clusters
    write_atomically(run.output_dir / "metrics.json", json.dumps(metrics, indent=2))
    labels = run.manifest["num_samples"].get("labeled", 0)
    curves = plot_curves(run.output_dir / "log.jsonl", run.output_dir / "plots" / "training_curves.png",
                         f"{run.output_dir.name}: {run.config.ssl.algorithm}, {labels:,} labeled objects, "
                         f"{step:,} steps")
    if curves:
        run.tracker.log_images({"train/curves": curves}, step)
    run.tracker.log_artifacts(run.output_dir / "model", Path(run.config.data.shards) / "manifest.json")
    if report:
        run.tracker.summary({"test/accuracy": report["accuracy"], "test/macro_f1": report["macro_f1"],
                             "test/balanced_accuracy": report["balanced_accuracy"], "steps": step})


def _log_interval(run: Run, stats: IntervalStats, progress, done: int, elapsed_s: float, data_wait_s: float,
                  loop_started: float, view_s: float = 0.0) -> None:
    """The interval's metrics (all-reduced) to the tracker, the progress bar, and a plain line in a log file."""
    metrics = stats.reduce(run.manifest["classes"])
    metrics["train/images_per_second"] = metrics.pop("train/images") / max(elapsed_s, 1e-9)
    # the share of wall time the loop was blocked on the loaders; and the device's time making views (its work)
    metrics["train/data_wait_share"] = data_wait_s / max(elapsed_s, 1e-9)
    if view_s:
        metrics["train/device_views_share"] = view_s / max(elapsed_s, 1e-9)
    metrics["train/lr"] = run.scheduler.get_last_lr()[0]
    if torch.cuda.is_available():
        metrics["train/gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    run.tracker.log(metrics, done)
    postfix = {"sup": f"{metrics['train/sup_loss']:.3f}"}
    if "train/mask_ratio" in metrics:
        postfix["mask"] = f"{metrics['train/mask_ratio']:.2f}"
    if run.head.active:
        postfix["cluster"] = f"{metrics['train/cluster_loss']:.3f}"
    progress.set_postfix(postfix)
    if progress.disable and dist.is_main():
        running_s = time.perf_counter() - loop_started
        left_s = running_s / max(done - run.start_step, 1) * (run.config.train.steps - done)
        print(f"train step {done}/{run.config.train.steps}: " + " ".join(f"{k}={v}" for k, v in postfix.items())
              + f" {metrics['train/images_per_second']:.0f} images/s, {running_s:.0f} s, {left_s:.0f} s left",
              flush=True)


def train_loop(run: Run) -> int:
    config, accelerator = run.config, run.accelerator
    batches = TrainingBatches(config, run.manifest, run.algorithm, accelerator.device, accelerator.process_index,
                              accelerator.num_processes, run.start_step)
    run.head.start(run.start_step)
    stats = IntervalStats(len(run.manifest["classes"]), accelerator.device)
    # A bar on a terminal; in a log file (SLURM output, nohup) one plain line per log interval instead
    progress = tqdm(range(run.start_step, config.train.steps), initial=run.start_step, total=config.train.steps,
                    desc="train", disable=not (dist.is_main() and sys.stderr.isatty()), dynamic_ncols=True)
    interval_start = loop_started = time.perf_counter()
    non_finite_steps = torch.zeros((), device=accelerator.device)
    stop_requested = StopRequest(accelerator.device, every=config.train.log_every_steps)
    run.model.train()
    for step in progress:
        run.step = step + 1
        labeled, unlabeled = batches.next()
        cluster = run.head.targets(unlabeled)
        loss, step_stats = run.algorithm.loss(run.model, labeled, unlabeled, step, cluster)
        non_finite_steps += (~torch.isfinite(loss.detach())).float()
        run.optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        run.optimizer.step()
        run.scheduler.step()
        update_ema(run.ema, accelerator.unwrap_model(run.model), config.train.ema_decay)
        stats.add(step_stats, unlabeled, run.algorithm.images_forwarded(labeled, unlabeled))
        done = step + 1
        evaluate_now = (config.eval.every_steps and done % config.eval.every_steps == 0
                        and run.algorithm.trains_classifier and evaluated_on(run.manifest) != "none")
        log_now = done % config.train.log_every_steps == 0 or done == config.train.steps
        recluster_now = run.head.due(done, config.train.steps)
        save_now = (config.checkpoint.every_steps and done % config.checkpoint.every_steps == 0
                    and done != config.train.steps)
        if log_now or evaluate_now or recluster_now or save_now:
            _stop_non_finite(run, done, non_finite_steps)
        if log_now:
            _log_interval(run, stats, progress, done, time.perf_counter() - interval_start,
                          batches.pop_loader_wait_s(), loop_started, batches.pop_view_s())
            interval_start = time.perf_counter()
        if evaluate_now and done != config.train.steps:
            evaluate_run(run, done)
        if recluster_now:
            run.head.recluster(done)
        saved = save(run, done) if save_now else None
        if done != config.train.steps and stop_requested(done):
            _stop_non_finite(run, done, non_finite_steps)
            saved = saved or save(run, done)
            if dist.is_main():
                stop_requested.confirm(done, saved)
            raise Stopped(done, saved, by_user=stop_requested.interrupted)
    stop_requested.close()
    return config.train.steps


def _finish(run: Run, steps: int) -> tuple[dict | None, dict | None, Path]:
    """Final evaluation and clustering, then the one final save, which carries that clustering (predict's
    clusters). If a report fails, the training is saved first, so that nothing trained is lost. A finished run
    run again keeps its checkpoint unless the reports gave it a clustering it did not have."""
    config, classifier = run.config, run.algorithm.trains_classifier
    had_clustering = run.head.has_clustering
    resumed_at_end = run.resumed_from is not None and run.start_step == steps
    try:
        with phase(run.phase_seconds, "final_evaluation"):  # with predictions.csv
            report = evaluate_run(run, steps, final=True) if classifier and evaluated_on(run.manifest) != "none" \
                else None
        with phase(run.phase_seconds, "final_clustering"):  # with assignments.csv and the plots
            clusters = run.head.final_report(steps, run.output_dir) if config.cluster.at_end or not classifier \
                else None
    except Exception as error:
        if peer_failure(error) is not None:  # another rank is gone: a save would wait for it in a collective
            raise
        final = run.resumed_from if resumed_at_end else save(run, steps, final=True)
        if isinstance(error, UserError):
            raise UserError(f"{user_message(error)} (the trained model is saved in {final}; after the fix, "
                            f"`stellar-dist evaluate --checkpoint {run.output_dir}` or resume=auto re-reports)"
                            ) from None
        run.accelerator.print(f"the trained model is saved in {final}", file=sys.stderr)
        raise
    keep = resumed_at_end and (had_clustering or not run.head.has_clustering)
    with phase(run.phase_seconds, "final_save"):
        final = run.resumed_from if keep else save(run, steps, final=True)
    if keep:
        publish_model(run, final)
    return report, clusters, final


def train(config: Config) -> dict | None:
    """Train, checkpoint, evaluate and cluster; returns the final test report (on the main process; None for an
    algorithm without a class head, whose linear probe is in the cluster report)."""
    started = time.perf_counter()
    finished = finished_report(config)
    if finished is not None:
        if dist.is_main():
            print(f"{config.output_dir} already finished its {config.train.steps} steps with this config: nothing was "
                  "run again (its report is in metrics.json; a larger train.steps continues it)")
        return finished.get("test")
    run = setup(config)
    run.phase_seconds["setup"] = time.perf_counter() - started  # the shard checks, the model, a resume
    try:
        try:
            with phase(run.phase_seconds, "train"):
                steps = train_loop(run)
            report, clusters, final = _finish(run, steps)
        except Stopped as stopped:
            if stopped.by_user:
                raise UserError(f"{stopped}; continue with: {resume_command()}") from None
            run.accelerator.print(f"{stopped}: resume=auto continues from it (the batch script requeues the job)")
            return None
        except KeyboardInterrupt:
            latest = checkpoint.find_latest(run.output_dir)
            raise UserError(f"interrupted during step {run.step}; the last complete checkpoint is "
                            f"{latest or 'none (no checkpoint yet)'}; continue with: {resume_command()}") from None
        except Exception as error:
            lost = peer_failure(error)
            if lost is None:
                raise
            latest = checkpoint.find_latest(run.output_dir)
            raise UserError(f"another rank {lost} during step {run.step} (a dead or frozen node; collectives wait "
                            f"dist.timeout_s={config.dist.timeout_s:g} s); the last good checkpoint is "
                            f"{latest or 'none (no checkpoint yet)'}: run the same command with resume=auto to "
                            "continue from it") from None
        peak_rss_mb = dist.gather_objects([peak_rss_mb_of_this_process()])  # every rank takes part
        _write_metrics(run, report, steps, time.perf_counter() - started, clusters, peak_rss_mb)
        if dist.is_main():
            if report:
                if evaluated_on(run.manifest) == "validation":
                    print("on the validation split (pack --validation-fraction): for choosing, not for reporting")
                print(format_report(report))
            elif run.algorithm.trains_classifier and evaluated_on(run.manifest) == "none":
                print(f"no test split ({config.data.shards} was packed with --test-fraction 0): every spectrum "
                      "trained; measure the model with `stellar-dist predict` on objects it never saw")
            if clusters is not None:
                print(format_cluster_report(clusters))
            print(f"run files: {run.output_dir} (metrics.json, log.jsonl, plots/, config.yaml); checkpoint {final}")
    finally:
        run.tracker.finish()
    return report
