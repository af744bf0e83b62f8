"""The training engine: FixMatch (or the supervised baseline) under Accelerate, on 1..N processes.

Orchestration lives here (rank-0 work, logging, checkpoints); the loss is a pure function of tensors (ssl.py) and
collectives live in dist.py.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from . import checkpoint, dist
from .config import Config, save_config, to_dict
from .data import ItemMaker, TrainStream, make_loader, shard_paths
from .errors import UserError
from .evaluate import classification_report, format_report, gather_predictions, plot_confusion, plot_curves
from .models import StellarNet
from .pack import load_manifest
from .ssl import fixmatch_loss, supervised_loss
from .tracking import RunTracker, prepare_wandb_environment


def compute_loss(model, labeled: dict, unlabeled: dict | None, config: Config) -> tuple[torch.Tensor, dict]:
    """One forward pass over labeled + weak + strong views (shared batch-norm statistics), then the loss."""
    if unlabeled is None:
        return supervised_loss(model(labeled["image"]), labeled["label"])
    num_labeled, num_unlabeled = labeled["image"].shape[0], unlabeled["weak"].shape[0]
    logits = model(torch.cat([labeled["image"], unlabeled["weak"], unlabeled["strong"]]))
    logits_weak, logits_strong = logits[num_labeled:].split(num_unlabeled)
    return fixmatch_loss(logits[:num_labeled], labeled["label"], logits_weak, logits_strong,
                         config.ssl.threshold, config.ssl.lambda_u)


@torch.no_grad()
def update_ema(ema: AveragedModel, model: torch.nn.Module) -> None:
    """EMA of the parameters; batch-norm statistics copied as they are. Averaging them too would mix in their
    initial values (variance 1) for thousands of steps, while sky images have tiny pixel variance."""
    ema.update_parameters(model)
    for ema_buffer, buffer in zip(ema.module.buffers(), model.buffers()):
        ema_buffer.copy_(buffer)


def warmup_cosine(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class IntervalStats:
    """Sums over a log interval on this rank; `reduce` adds them over ranks."""

    def __init__(self, num_classes: int, device: torch.device):
        self.num_classes, self.device = num_classes, device
        self.scalars = torch.zeros(8, device=device, dtype=torch.float64)
        self.per_class = torch.zeros(2, num_classes, device=device, dtype=torch.float64)

    def add(self, stats: dict, unlabeled: dict | None, labeled_images: int) -> None:
        values = [stats["sup_loss"], stats.get("unsup_loss", torch.zeros(())), 1.0, 0, 0, 0, 0, labeled_images]
        if "mask" in stats:
            mask, pseudo = stats["mask"], stats["pseudo_labels"]
            known = unlabeled["true_label"] >= 0
            correct = (pseudo == unlabeled["true_label"]).double() * mask * known
            values[3:7] = [mask.sum(), mask.numel(), correct.sum(), (mask * known).sum()]
            self.per_class[0].index_add_(0, pseudo, mask.double())
            self.per_class[1].index_add_(0, pseudo, torch.ones_like(mask, dtype=torch.float64))
        self.scalars += torch.tensor([float(value) for value in values], device=self.device, dtype=torch.float64)

    def reduce(self, classes: list[str]) -> dict:
        scalars, per_class = dist.all_reduce_sum(self.scalars), dist.all_reduce_sum(self.per_class)
        steps = max(scalars[2].item(), 1.0) / dist.world_size()
        metrics = {"train/sup_loss": scalars[0].item() / (steps * dist.world_size()),
                   "train/unsup_loss": scalars[1].item() / (steps * dist.world_size())}
        if scalars[4] > 0:
            metrics["train/mask_ratio"] = scalars[3].item() / scalars[4].item()
            metrics["train/pseudo_label_accuracy"] = scalars[5].item() / scalars[6].item() if scalars[6] > 0 else None
            for index, name in enumerate(classes):
                count = per_class[1, index].item()
                metrics[f"train/mask_ratio/{name}"] = per_class[0, index].item() / count if count else None
        images = scalars[7].item() + 2 * scalars[4].item()
        self.scalars.zero_(), self.per_class.zero_()
        return metrics | {"train/images": images}


@dataclass
class Run:
    """Everything a training run holds, built once by `setup`."""

    config: Config
    accelerator: Accelerator
    manifest: dict
    model: torch.nn.Module
    ema: AveragedModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    tracker: RunTracker
    output_dir: Path
    start_step: int = 0


def _mixed_precision(config: Config) -> str:
    if config.train.mixed_precision != "auto":
        return config.train.mixed_precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _build_optimizer(model: torch.nn.Module, config: Config) -> torch.optim.Optimizer:
    # No weight decay on biases and normalisation parameters (as in the FixMatch reference).
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.train.lr, momentum=config.train.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.train.lr)


def _resume_checkpoint(config: Config) -> Path | None:
    if config.resume == "none":
        existing = checkpoint.find_latest(config.output_dir)
        if existing is not None:
            raise UserError(f"output_dir {config.output_dir} already holds a run ({existing.name}): pass resume=auto "
                            "to continue it, or choose another output_dir")
        return None
    if config.resume == "auto":
        return checkpoint.find_latest(config.output_dir)
    return checkpoint.resolve(config.resume)


def setup(config: Config) -> Run:
    output_dir = Path(config.output_dir)
    manifest = load_manifest(config.data.shards)
    if config.tracking == "wandb":
        prepare_wandb_environment(output_dir)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=_mixed_precision(config),
                              log_with="wandb" if config.tracking == "wandb" else None)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, output_dir / "config.yaml")
    accelerator.wait_for_everyone()
    set_seed(config.seed)  # same initial weights on every rank
    model = StellarNet(config.model.arch, len(manifest["classes"]), config.model.weights)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.train.ema_decay), use_buffers=False)
    optimizer = _build_optimizer(model, config)
    # The scheduler is stepped by us once per step (Accelerate would step it once per process).
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config.train.warmup_steps,
                                                                           config.train.steps))
    model, optimizer = accelerator.prepare(model, optimizer)
    ema.to(accelerator.device)
    tracker = RunTracker(accelerator, to_dict(config), output_dir, config.tracking == "wandb", config.wandb_project)
    run = Run(config, accelerator, manifest, model, ema, optimizer, scheduler, tracker, output_dir)
    resume_from = _resume_checkpoint(config)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        state = checkpoint.load_trainer_state(resume_from)
        ema.load_state_dict(state["ema"])
        scheduler.load_state_dict(state["scheduler"])
        run.start_step = int(state["step"])
        accelerator.print(f"resumed from {resume_from} at step {run.start_step}")
    return run


def _loaders(run: Run):
    config, rank = run.config, run.accelerator.process_index
    encoding, pin = run.manifest["encoding"], run.accelerator.device.type == "cuda"

    def loader(split: str, use: str, batch_size: int):
        paths = shard_paths(config.data.shards, split)
        if not paths:
            raise UserError(f"{config.data.shards} has no {split} shards: re-pack with a larger fraction")
        stream = TrainStream(paths, ItemMaker(use, encoding, config.data.grayscale), batch_size, seed=config.seed,
                             rank=rank, stream=split, shuffle_buffer=config.data.shuffle_buffer,
                             start_batch=run.start_step)
        return iter(make_loader(stream, config.data.num_workers, pin_memory=pin))

    labeled = loader("labeled", "labeled", config.train.batch_size)
    if config.ssl.algorithm == "supervised":
        return labeled, None
    return labeled, loader("unlabeled", "unlabeled", config.train.batch_size * config.ssl.mu)


def _to_device(batch: dict | None, device: torch.device) -> dict | None:
    return None if batch is None else {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def _save(run: Run, step: int) -> Path:
    state = {"step": step, "ema": run.ema.state_dict(), "scheduler": run.scheduler.state_dict()}
    return checkpoint.save(run.accelerator, run.output_dir, step, state, run.ema.module.state_dict(),
                           run.config.checkpoint.keep_last)


def _stop_non_finite(run: Run, step: int, loss: torch.Tensor) -> None:
    bad = dist.all_reduce_max(torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=loss.device))
    if bad.item() > 0:
        latest = checkpoint.find_latest(run.output_dir)
        raise UserError(f"loss became non-finite at step {step}; the last good checkpoint is "
                        f"{latest or 'none (no checkpoint yet)'}; lower train.lr or raise train.warmup_steps, "
                        "then resume=auto")


def evaluate_run(run: Run, step: int) -> dict:
    """EMA model on the whole test split (all ranks); metrics and plots written on the main process."""
    config = run.config
    gathered = gather_predictions(run.ema.module, config.data.shards, run.manifest, batch_size=config.eval.batch_size,
                                  num_workers=config.data.num_workers, grayscale=config.data.grayscale,
                                  device=run.accelerator.device)
    run.model.train()  # back to training mode after every evaluation (kekmodel#42)
    report = classification_report(gathered["label"], gathered["prediction"], run.manifest["classes"])
    run.tracker.log({"test/accuracy": report["accuracy"], "test/balanced_accuracy": report["balanced_accuracy"],
                     "test/macro_f1": report["macro_f1"]}, step)
    if run.accelerator.is_main_process:
        image = plot_confusion(report, run.output_dir / "plots" / "confusion_matrix.png")
        run.tracker.log_images({"test/confusion_matrix": image}, step)
    return report


def _write_metrics(run: Run, report: dict, step: int, seconds: float) -> None:
    if not run.accelerator.is_main_process:
        return
    metrics = {"test": report, "steps": step, "world_size": run.accelerator.num_processes,
               "algorithm": run.config.ssl.algorithm, "arch": run.config.model.arch, "train_seconds": seconds}
    temporary = run.output_dir / "metrics.json.tmp"
    temporary.write_text(json.dumps(metrics, indent=2))
    temporary.replace(run.output_dir / "metrics.json")
    curves = plot_curves(run.output_dir / "log.jsonl", run.output_dir / "plots" / "training_curves.png")
    if curves:
        run.tracker.log_images({"train/curves": curves}, step)
    run.tracker.summary({"test/accuracy": report["accuracy"], "test/macro_f1": report["macro_f1"],
                         "test/balanced_accuracy": report["balanced_accuracy"], "steps": step})


def train_loop(run: Run) -> int:
    config, accelerator = run.config, run.accelerator
    labeled_iter, unlabeled_iter = _loaders(run)
    stats = IntervalStats(len(run.manifest["classes"]), accelerator.device)
    progress = tqdm(range(run.start_step, config.train.steps), initial=run.start_step, total=config.train.steps,
                    desc="train", disable=not accelerator.is_main_process, dynamic_ncols=True)
    interval_start = time.perf_counter()
    run.model.train()
    for step in progress:
        labeled = _to_device(next(labeled_iter), accelerator.device)
        unlabeled = _to_device(next(unlabeled_iter), accelerator.device) if unlabeled_iter is not None else None
        loss, step_stats = compute_loss(run.model, labeled, unlabeled, config)
        _stop_non_finite(run, step, loss.detach())
        run.optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        run.optimizer.step()
        run.scheduler.step()
        update_ema(run.ema, accelerator.unwrap_model(run.model))
        stats.add(step_stats, unlabeled, labeled["image"].shape[0])
        done = step + 1
        if done % config.train.log_every_steps == 0 or done == config.train.steps:
            metrics = stats.reduce(run.manifest["classes"])
            elapsed = time.perf_counter() - interval_start
            metrics["train/images_per_second"] = metrics.pop("train/images") / max(elapsed, 1e-9)
            metrics["train/lr"] = run.scheduler.get_last_lr()[0]
            if torch.cuda.is_available():
                metrics["train/gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            run.tracker.log(metrics, done)
            progress.set_postfix(loss=f"{metrics['train/sup_loss']:.3f}", mask=metrics.get("train/mask_ratio"))
            interval_start = time.perf_counter()
        if done % config.eval.every_steps == 0 and done != config.train.steps:
            evaluate_run(run, done)
        if done % config.checkpoint.every_steps == 0 and done != config.train.steps:
            _save(run, done)
    return config.train.steps


def train(config: Config) -> dict:
    """Train, evaluate and checkpoint; returns the final test report (the same on every rank)."""
    started = time.perf_counter()
    run = setup(config)
    try:
        steps = train_loop(run)
        report = evaluate_run(run, steps)
        final = _save(run, steps)
        _write_metrics(run, report, steps, time.perf_counter() - started)
        if run.accelerator.is_main_process:
            print(format_report(report))
            print(f"run files: {run.output_dir} (metrics.json, log.jsonl, plots/, config.yaml); checkpoint {final}")
    finally:
        run.tracker.finish()
    return report
