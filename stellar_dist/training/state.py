"""A run's saved state, collected and restored in one place (torchtitan's pattern): each stateful component
owns its state (`state_dict` / `load_state_dict`: the scheduler, the algorithm, the cluster head; the model and
optimizer through Accelerate's `save_state`, with every rank's RNG states; the EMA weights once, as the portable
model folder), and only this file gathers them into a checkpoint or hands them back.

    save(run, step)                 # finite weights only; checkpoint.py writes the files atomically
    restore(run, point)             # every rank, falling back to an older complete checkpoint (resume=auto)

Checkpoints' file format (names, completeness, `latest`) is checkpoint.py's; which checkpoint continues a run and
whether it fits the config is resume.py's. `run` is session.Run (built by session.setup, which calls restore).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..core import dist
from ..core.errors import UserError
from . import checkpoint
from .model_folder import describe, model_tensors, publish


def components(run) -> dict:
    """The run's stateful parts that keep their own state in trainer_state.pt, under these names."""
    return {"scheduler": run.scheduler, "algorithm": run.algorithm, "cluster": run.head}


def collect(run, step: int) -> dict:
    """trainer_state.pt: the step, what the run was trained on, and every component's own state. The EMA weights
    themselves are the checkpoint's model/ folder: only the count of averaged steps goes here."""
    state = {"step": step, "ema_n_averaged": run.ema.n_averaged, "classes": list(run.manifest["classes"]),
             "world_size": run.accelerator.num_processes}
    for name, component in components(run).items():
        own = component.state_dict()
        if own is not None:  # a head without a clustering yet has none
            state[name] = own
    return state


def _hand_back(run, state: dict) -> None:
    for name, component in components(run).items():
        if name == "scheduler":
            component.load_state_dict(state[name])
        else:  # written before the component had a state: its fresh one
            component.load_state_dict(state.get(name, {} if name == "algorithm" else None))


def _older_complete(output_dir: Path, than: Path):
    for folder in checkpoint.candidates(output_dir):
        if folder.name < than.name and checkpoint.problem(folder) is None:
            yield folder


def restore(run, point) -> None:
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


def _load_checkpoint(run, folder: Path) -> str | None:
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
        part = f"{checkpoint.TRAINER_STATE} ({', '.join(components(run))} state)"
        _hand_back(run, state)
        run.start_step, run.resumed_from = int(state["step"]), folder
    except Exception as error:  # noqa: BLE001  (any unreadable part makes the checkpoint unusable)
        return f"is unreadable ({part}: {type(error).__name__}: {' '.join(str(error).split())[:120]})"
    return None




def _check_finite(run, step: int) -> None:
    """Never save non-finite weights: the checkpoint named as the last good one must really be good."""
    model = run.accelerator.unwrap_model(run.model)
    tensors = [*model.parameters(), *model.buffers(), *run.ema.module.parameters()]
    bad = torch.stack([~torch.isfinite(t).all() for t in tensors if t.is_floating_point()]).any().float()
    stop_if_non_finite(run, step, bad, "the weights (not saved)")


def stop_if_non_finite(run, step: int, flag: torch.Tensor, what: str) -> None:
    """One line naming the newest complete checkpoint (always finite) when `flag` > 0 on any rank."""
    if dist.all_reduce_max(flag.reshape(1)).item() > 0:
        latest = checkpoint.find_latest(run.output_dir)
        raise UserError(f"{what} became non-finite by step {step}; the last good checkpoint is "
                        f"{latest or 'none (no checkpoint yet)'}; lower train.lr or raise train.warmup_steps, "
                        "then resume=auto")


def save(run, step: int, final: bool = False) -> Path:
    """The one writer of the run's weights: a checkpoint with its portable model folder, and, at the end of the
    run (`final`), that model folder published as OUTPUT_DIR/model. Finite weights only."""
    _check_finite(run, step)
    ema_state = run.ema.module.state_dict()
    model_folder = (model_tensors(ema_state, run.head.portable_tensors()),
                    describe(run.config, run.manifest, step, run.head.portable_description()))
    folder = checkpoint.save(run.accelerator, run.output_dir, step, collect(run, step),
                             run.config.checkpoint.keep_last, model_folder)
    if final:
        publish_model(run, folder)
    return folder


def publish_model(run, folder: Path) -> None:
    if dist.is_main() and (folder / "model").is_dir():
        publish(folder / "model", run.output_dir)  # OUTPUT_DIR/model: the portable model of the finished run
