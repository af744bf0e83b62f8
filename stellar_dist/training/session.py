"""A training run's objects, built once: Accelerator, model, EMA, optimizer, scheduler, algorithm, cluster head,
tracker. Everything that can refuse the run is checked before anything is written; a resume point found by
resume.py is handed to state.py, which restores every component (and is the only writer of checkpoints)."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import (
    DistributedDataParallelKwargs,
    InitProcessGroupKwargs,
    set_seed,
)
from torch.optim.swa_utils import AveragedModel

from ..algorithms import ALGORITHMS, Algorithm
from ..clustering.cluster import resolve_backend
from ..clustering.cluster_stage import num_clusters
from ..clustering.head import ClusterHead, head_size, wanted
from ..core import dist
from ..core.errors import UserError, raise_if_any
from ..core.files import discard_private, private_folder, sweep, write_atomically
from ..core.outputs import OutputLock, check_paths
from ..data.eval_data import AUTOCAST_DTYPES, EvalData
from ..data.manifest import check_shards, load_manifest
from ..model.network import build_model
from .config import Config, save_config, to_dict
from .optim import build_optimizer, keep_count_on_host, warmup_cosine
from .resume import RUN_MARKER, ResumePoint, find_resume_point
from .state import restore
from .tracking import RunTracker, prepare_wandb_environment


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
    algorithm: Algorithm
    head: ClusterHead
    tracker: RunTracker
    output_dir: Path
    start_step: int = 0
    step: int = 0  # the step being trained now (named when another rank is lost)
    resumed_from: Path | None = None
    phase_seconds: dict = field(default_factory=dict)  # wall time of setup, training and the final reports


def _mixed_precision(config: Config) -> str:
    if config.train.mixed_precision != "auto":
        return config.train.mixed_precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _check_before_writing(config: Config, manifest: dict, world_size: int) -> ResumePoint | None:
    """Everything that can refuse the run, checked on every rank before anything is written."""
    check_shards(config.data.shards, manifest)
    check_paths({"output_dir": config.output_dir}, {"data.shards": config.data.shards})
    if not manifest["classes"]:
        raise UserError(f"{config.data.shards} holds no object with a class (packed from a catalog without spectra): "
                        f"choose targets with `stellar-dist select --shards {config.data.shards} --budget N --out "
                        "targets.csv`, then pack again with their classes (--labels FILE)")
    if len(manifest["classes"]) < 2:
        raise UserError(f"{config.data.shards} holds one class only ({manifest['classes'][0]}): a classifier needs "
                        "at least two; pack a catalog with two or more classes")
    if config.data.grayscale and manifest["encoding"] == "npy":
        raise UserError(f"data.grayscale=true applies to RGB images, but {config.data.shards} holds "
                        f"{manifest['channels']}-band FITS cutouts: drop data.grayscale")
    if config.model.centre_crop > manifest["image_size"]:
        raise UserError(f"model.centre_crop={config.model.centre_crop} is larger than the {manifest['image_size']} "
                        f"px images of {config.data.shards}: set it to at most {manifest['image_size']} (0: all)")
    if config.train.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise UserError("train.mixed_precision=fp16 needs a GPU and none is visible here: use auto (bf16 on GPUs, "
                        "none on CPU), no, or bf16")
    if config.tracking == "wandb" and importlib.util.find_spec("wandb") is None:
        raise UserError("tracking=wandb but wandb is not installed here: pip install wandb, or set tracking=none "
                        "(log.jsonl and metrics.json record every metric either way)")
    if wanted(ALGORITHMS[config.ssl.algorithm].cluster_head, config.cluster) or config.cluster.at_end:
        resolve_backend(config.cluster.backend)
        fit = manifest["num_samples"]["labeled"] + manifest["num_samples"]["unlabeled"]
        k = num_clusters(config.cluster, len(manifest["classes"]))
        if k > fit:
            raise UserError(f"cluster.k={k} clusters but the shards hold only {fit} labeled + unlabeled samples: "
                            f"set cluster.k to at most {fit}")
    point = find_resume_point(config, manifest, world_size)
    output_dir = Path(config.output_dir)
    log = output_dir / "log.jsonl"  # appended to: a planted link or hard link would write through to its target
    if log.is_symlink() or (log.exists() and (not log.is_file() or log.stat().st_nlink != 1)):
        raise UserError(f"{log} is a link or not a plain file: a run appends to it; remove it if it is not the "
                        "run's own log, or choose another output_dir (nothing was changed)")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        discard_private(private_folder(output_dir, "write-test"))
    except OSError as error:
        raise UserError(f"output_dir {output_dir} is not writable ({error.strerror}): choose another output_dir "
                        "or fix its permissions") from None
    return point


def take_run_folder(accelerator: Accelerator, output_dir: Path) -> None:
    """One run per folder: the main process locks it for the life of the run (the kernel releases the lock when
    the run ends, is killed or its job requeued) and marks it as a run; every rank refuses alike otherwise."""
    refusal = None
    if dist.is_main():
        try:
            OutputLock(output_dir, "stellar-dist train")  # sweeps the folder of killed commands' leftovers
            for inner in ("model", "plots"):
                sweep(output_dir / inner)
            marker = output_dir / RUN_MARKER
            if not marker.exists():
                write_atomically(marker, "a stellar-dist run: it owns checkpoints/, model/, plots/ and the files it "
                                 "wrote here; anything else in this folder is yours and is never touched\n")
        except UserError as error:
            refusal = str(error)
    raise_if_any(refusal)


def _accelerator(config: Config) -> Accelerator:
    # An algorithm that never trains the class head (DeepCluster alone): DDP must expect parameters without a
    # gradient.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=not ALGORITHMS[config.ssl.algorithm].trains_classifier)
    # Every collective gives up after dist.timeout_s: a frozen rank (a hung node, a stuck filesystem) would
    # otherwise hold the others for torch's default 30 minutes.
    group = InitProcessGroupKwargs(timeout=timedelta(seconds=config.dist.timeout_s))
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=_mixed_precision(config),
                       log_with="wandb" if config.tracking == "wandb" else None, kwargs_handlers=[ddp, group])


def _warn_gpu_launch_on_cpu(accelerator: Accelerator) -> None:
    """A launch made for GPUs (accelerate_configs/multi_gpu.yaml: bf16) on a machine without one trains on the CPU:
    say so once, rather than let a user believe the GPUs work."""
    asked = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if asked in ("bf16", "fp16") and dist.is_main():
        print(f"warning: this launch asks for GPUs (accelerate config with mixed_precision {asked}) but none is "
              f"visible here: training on the CPU in {accelerator.num_processes} process(es) without mixed "
              "precision; on a CPU machine use accelerate_configs/cpu.yaml or cpu_ddp.yaml", flush=True)


def setup(config: Config) -> Run:
    output_dir = Path(config.output_dir)
    manifest = load_manifest(config.data.shards)
    point = _check_before_writing(config, manifest, int(os.environ.get("WORLD_SIZE", "1")))
    if config.tracking == "wandb":
        prepare_wandb_environment(output_dir)
    accelerator = _accelerator(config)
    take_run_folder(accelerator, output_dir)
    if accelerator.device.type == "cpu":
        _warn_gpu_launch_on_cpu(accelerator)
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # set by accelerate/torchrun launchers
        torch.set_num_threads(config.train.cpu_threads or max(1, (os.cpu_count() or 1) // local_processes))
    torch.backends.cudnn.benchmark = accelerator.device.type == "cuda"  # fixed shapes: pick the fastest kernels
    set_seed(config.seed)  # same initial weights on every rank
    model = build_model(config.model.arch, len(manifest["classes"]), weights=config.model.weights,
                        num_clusters=head_size(ALGORITHMS[config.ssl.algorithm].cluster_head, config.cluster,
                                                       len(manifest["classes"])),
                        in_channels=manifest.get("channels", 3), channels_last=config.train.channels_last,
                        photometry=config.model.photometry, centre_crop=config.model.centre_crop,
                        photometry_dropout=config.model.photometry_dropout)
    ema = AveragedModel(model, use_buffers=False)  # updated by optim.update_ema, never by update_parameters
    optimizer = build_optimizer(model, config)
    # The scheduler is stepped by us once per step (Accelerate would step it once per process).
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config.train.warmup_steps,
                                                                           config.train.steps))
    model, optimizer = accelerator.prepare(model, optimizer)
    keep_count_on_host(ema.to(accelerator.device))
    algorithm = ALGORITHMS[config.ssl.algorithm](config, manifest, accelerator.device)
    tracker = RunTracker(accelerator, to_dict(config), output_dir, config.tracking == "wandb", config.wandb_project)
    head = ClusterHead(accelerator.unwrap_model(model), ema, optimizer, config,
                       EvalData.from_config(config, manifest, accelerator.device,
                                            autocast_dtype=AUTOCAST_DTYPES.get(accelerator.mixed_precision)), tracker,
                       trains_classifier=algorithm.trains_classifier, world_size=accelerator.num_processes,
                       unlabeled_samples=sum(manifest["num_samples"].get(split, 0)
                                             for split in algorithm.unlabeled_splits))
    run = Run(config, accelerator, manifest, model, ema, optimizer, scheduler, algorithm, head, tracker, output_dir)
    if point is not None:
        restore(run, point)
    if dist.is_main():  # the run's record changes only once the resume it describes has succeeded
        save_config(config, output_dir / "config.yaml")
        print(summary(run), flush=True)
    accelerator.wait_for_everyone()
    return run


def summary(run: Run) -> str:
    """What a run is about to do, before its first step: where it runs, on what, for how long, and where it writes."""
    config, accelerator, manifest = run.config, run.accelerator, run.manifest
    def per_class(split: str) -> str:  # as pack prints it: classes with objects, "?" (no class) said in words
        return ", ".join(f"{'without a class' if name == '?' else name} {count}"
                         for name, count in manifest["counts"].get(split, {}).items() if count)

    counts = "; ".join(f"{split} {manifest['num_samples'].get(split, 0)} ({per_class(split)})"
                       for split in ("labeled", "unlabeled", "test") if manifest["num_samples"].get(split))
    tracking = "none (log.jsonl and metrics.json only)"
    if config.tracking == "wandb":
        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        run_id = (run.output_dir / "wandb_run_id").read_text().strip() if (run.output_dir / "wandb_run_id").is_file() \
            else "?"
        tracking = f"W&B {mode}, run id {run_id} (project {config.wandb_project})"
    start = f"resuming at step {run.start_step} of" if run.start_step else "steps:"
    return "\n".join([
        f"run: {config.ssl.algorithm} on {accelerator.num_processes} process(es), device {accelerator.device.type}, "
        f"mixed precision {accelerator.mixed_precision}; {start} {config.train.steps}",
        f"data: {config.data.shards}: {counts}",
        f"writes: {run.output_dir} (metrics.json, log.jsonl, plots/, checkpoints/, model/); tracking: {tracking}"])


