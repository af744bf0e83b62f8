"""A training run's objects, built once: Accelerator, model, EMA, optimizer, scheduler, algorithm, cluster head,
tracker; resuming them from a checkpoint, and `save`, the only writer of checkpoints and of the model folder."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, set_seed
from torch.optim.swa_utils import AveragedModel

from . import dist
from .algorithms import ALGORITHMS, Algorithm
from .clustering.cluster import resolve_backend
from .clustering.cluster_stage import num_clusters
from .clustering.head import ClusterHead, head_size, wanted
from .config import Config, save_config, to_dict
from .data.eval_data import EvalData
from .data.manifest import check_shards, load_manifest
from .errors import UserError, raise_if_any
from .files import discard_private, private_folder, sweep, write_atomically
from .models import build_model
from .optim import build_optimizer, keep_count_on_host, warmup_cosine
from .outputs import OutputLock, check_paths
from .saving import checkpoint
from .saving.model_folder import describe, model_tensors, publish
from .resume import RUN_MARKER, ResumePoint, find_resume_point
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
    if wanted(config) or config.cluster.at_end:
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


def _older_complete(output_dir: Path, than: Path):
    for folder in checkpoint.candidates(output_dir):
        if folder.name < than.name and checkpoint.problem(folder) is None:
            yield folder


def _restore(run: Run, point: ResumePoint) -> None:
    """Load the resume point on every rank; when any part of it cannot be read on any rank (optimizer, RNG
    states, scheduler, ...), every rank falls back to the previous complete checkpoint (resume=auto)."""
    accelerator, skipped, folder = run.accelerator, list(point.skipped), point.folder
    older = _older_complete(run.output_dir, point.folder) if run.config.resume == "auto" else iter(())
    while True:
        reason = _load_checkpoint(run, folder)
        failed = dist.all_reduce_max(torch.tensor([float(reason is not None)], device=accelerator.device))
        if failed.item() == 0:
            break
        skipped.append((folder, reason or "cannot be read on another rank"))
        folder = next(older, None)
        if folder is None:
            raise UserError(f"no checkpoint of {run.output_dir} could be loaded ({skipped[-1][0].name} "
                            f"{skipped[-1][1]}): restore one, or choose another output_dir")
    for bad, reason in skipped:
        accelerator.print(f"warning: checkpoint {bad.name} {reason}; kept as unreadable-{bad.name}, "
                          f"resuming from {folder.name}")
    accelerator.wait_for_everyone()
    if dist.is_main():
        checkpoint.set_aside(skipped)
    for warning in point.warnings:
        accelerator.print(f"warning: {warning}")
    accelerator.print(f"resumed from {folder} at step {run.start_step}")


def _load_checkpoint(run: Run, folder: Path) -> str | None:
    """Restore every part of the run from `folder`; None, or which part could not be read, and why."""
    from accelerate.utils import load as accelerate_load

    part = f"random_states_{run.accelerator.process_index}.pkl"
    try:
        # Accelerate only logs an unreadable RNG file and goes on (the run would silently leave its exact
        # continuation): this rank's file is read first, and must hold the states.
        rng = accelerate_load(folder / part)
        if not isinstance(rng, dict) or "torch_manual_seed" not in rng:
            raise ValueError("it holds no random states")
        part = "model.safetensors / optimizer.bin (Accelerate's state)"
        run.accelerator.load_state(str(folder))
        part = checkpoint.TRAINER_STATE
        state = checkpoint.load_trainer_state(folder)
        if "ema" in state:  # written before the EMA weights were kept once
            run.ema.load_state_dict(state["ema"])
        else:
            part = checkpoint.ema_weights_file(folder).relative_to(folder)
            weights = checkpoint.load_ema_weights(folder)
            if not checkpoint.all_finite(weights):  # completeness is decided without reading weights
                raise ValueError("it holds non-finite weights")
            run.ema.load_state_dict({f"module.{key}": value for key, value in weights.items()}
                                    | {"n_averaged": state["ema_n_averaged"]})
        part = f"{checkpoint.TRAINER_STATE} (scheduler, algorithm or cluster state)"
        run.scheduler.load_state_dict(state["scheduler"])
        run.algorithm.load_state_dict(state.get("algorithm", {}))
        run.start_step, run.resumed_from = int(state["step"]), folder
        run.head.load_state_dict(state.get("cluster"))
    except Exception as error:  # noqa: BLE001  (any unreadable part makes the checkpoint unusable)
        return f"is unreadable ({part}: {type(error).__name__}: {' '.join(str(error).split())[:120]})"
    return None


def _accelerator(config: Config) -> Accelerator:
    # An algorithm that never trains the class head (DeepCluster alone): DDP must expect parameters without a
    # gradient.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=not ALGORITHMS[config.ssl.algorithm].trains_classifier)
    # Every collective gives up after dist.timeout_s: a frozen rank (a hung node, a stuck filesystem) would
    # otherwise hold the others for torch's default 30 minutes.
    group = InitProcessGroupKwargs(timeout=timedelta(seconds=config.dist.timeout_s))
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=_mixed_precision(config),
                       log_with="wandb" if config.tracking == "wandb" else None, kwargs_handlers=[ddp, group])


def setup(config: Config) -> Run:
    output_dir = Path(config.output_dir)
    manifest = load_manifest(config.data.shards)
    point = _check_before_writing(config, manifest, int(os.environ.get("WORLD_SIZE", "1")))
    if config.tracking == "wandb":
        prepare_wandb_environment(output_dir)
    accelerator = _accelerator(config)
    take_run_folder(accelerator, output_dir)
    if accelerator.device.type == "cpu":
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # set by accelerate/torchrun launchers
        torch.set_num_threads(config.train.cpu_threads or max(1, (os.cpu_count() or 1) // local_processes))
    torch.backends.cudnn.benchmark = accelerator.device.type == "cuda"  # fixed shapes: pick the fastest kernels
    set_seed(config.seed)  # same initial weights on every rank
    model = build_model(config.model.arch, len(manifest["classes"]), weights=config.model.weights,
                        num_clusters=head_size(config, len(manifest["classes"])),
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
                       EvalData.from_config(config, manifest, accelerator.device), tracker,
                       trains_classifier=algorithm.trains_classifier, world_size=accelerator.num_processes,
                       unlabeled_samples=sum(manifest["num_samples"].get(split, 0)
                                             for split in algorithm.unlabeled_splits))
    run = Run(config, accelerator, manifest, model, ema, optimizer, scheduler, algorithm, head, tracker, output_dir)
    if point is not None:
        _restore(run, point)
    if dist.is_main():  # the run's record changes only once the resume it describes has succeeded
        save_config(config, output_dir / "config.yaml")
    accelerator.wait_for_everyone()
    return run


def _check_finite(run: Run, step: int) -> None:
    """Never save non-finite weights: the checkpoint named as the last good one must really be good."""
    model = run.accelerator.unwrap_model(run.model)
    tensors = [*model.parameters(), *model.buffers(), *run.ema.module.parameters()]
    bad = torch.stack([~torch.isfinite(t).all() for t in tensors if t.is_floating_point()]).any().float()
    stop_if_non_finite(run, step, bad, "the weights (not saved)")


def stop_if_non_finite(run: Run, step: int, flag: torch.Tensor, what: str) -> None:
    """One line naming the newest complete checkpoint (always finite) when `flag` > 0 on any rank."""
    if dist.all_reduce_max(flag.reshape(1)).item() > 0:
        latest = checkpoint.find_latest(run.output_dir)
        raise UserError(f"{what} became non-finite by step {step}; the last good checkpoint is "
                        f"{latest or 'none (no checkpoint yet)'}; lower train.lr or raise train.warmup_steps, "
                        "then resume=auto")


def trainer_state(run: Run, step: int) -> dict:
    # The EMA weights themselves are the checkpoint's model/ folder: only the count of averaged steps goes here.
    state = {"step": step, "ema_n_averaged": run.ema.n_averaged, "scheduler": run.scheduler.state_dict(),
             "classes": list(run.manifest["classes"]), "world_size": run.accelerator.num_processes,
             "algorithm": run.algorithm.state_dict()}
    if run.head.state is not None:
        state["cluster"] = run.head.state_dict()
    return state


def save(run: Run, step: int, final: bool = False) -> Path:
    """The one writer of the run's weights: a checkpoint with its portable model folder, and, at the end of the
    run (`final`), that model folder published as OUTPUT_DIR/model. Finite weights only."""
    _check_finite(run, step)
    ema_state = run.ema.module.state_dict()
    model_folder = (model_tensors(ema_state, run.head.state),
                    describe(run.config, run.manifest, step, run.head.state))
    folder = checkpoint.save(run.accelerator, run.output_dir, step, trainer_state(run, step),
                             run.config.checkpoint.keep_last, model_folder)
    if final:
        publish_model(run, folder)
    return folder


def publish_model(run: Run, folder: Path) -> None:
    if dist.is_main() and (folder / "model").is_dir():
        publish(folder / "model", run.output_dir)  # OUTPUT_DIR/model: the portable model of the finished run
