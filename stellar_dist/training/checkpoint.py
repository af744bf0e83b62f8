"""Checkpoints: `accelerator.save_state` plus our own trainer state, written atomically, with a `latest` pointer.

    OUTPUT_DIR/checkpoints/step_0000200/   model.safetensors, optimizer.bin, random_states_*.pkl (Accelerate)
                                           trainer_state.pt (step, EMA count, scheduler, algorithm and cluster
                                           state, classes), model/ (the portable model: the EMA weights, stored
                                           once; resuming reads them there), complete.json (written last: every
                                           file's size)
    OUTPUT_DIR/checkpoints/latest          the name of the newest complete checkpoint

A checkpoint is built in a hidden `.step_*.tmp` folder and renamed when complete; `latest` is replaced atomically
after that. Completeness is decided from `complete.json` alone (every file it lists present with its size): no
weights are read to find a checkpoint. Only finite weights are ever saved (checked when written), and the weights
are checked again when a checkpoint is actually loaded. A checkpoint that later turns out missing or unreadable is skipped
(newest complete one first) and, on resume, renamed `unreadable-step_*` so that it is neither pruned nor
overwritten. Our own files are read with `torch.load(weights_only=True)`: no pickled code runs.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..core import dist
from ..core.errors import UserError, storage_failure
from ..core.files import (
    ALIVE,
    discard_private,
    finish_private,
    open_regular,
    private_folder,
    read_json,
    sweep,
    write_atomically,
)
from .model_folder import write_model

TRAINER_STATE = "trainer_state.pt"
EMA_WEIGHTS = "ema.pt"  # only in checkpoints written before the EMA weights were kept once, in model/
PORTABLE_WEIGHTS = "model/model.safetensors"  # the EMA weights (and the clustering's space, cluster.*)
MODEL_WEIGHTS = "model.safetensors"
OPTIMIZER_STATE = "optimizer.bin"  # Accelerate's; with random_states_*.pkl, read when a run resumes
COMPLETE = "complete.json"  # written last: {"step", "files": {relative path: bytes}}


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def save(accelerator, output_dir: str | Path, step: int, trainer_state: dict, keep_last: int,
         model_folder: tuple[dict, dict]) -> Path:
    """`model_folder`: (tensors, description) of the portable model written into the checkpoint's model/; its
    tensors are the EMA weights, which resuming reads back from there (no second copy)."""
    root = checkpoint_root(output_dir)
    final, staging = root / f"step_{step:07d}", _staging(root, step)
    try:
        accelerator.save_state(str(staging))
        accelerator.wait_for_everyone()
        if dist.is_main():
            torch.save(trainer_state, staging / TRAINER_STATE)
            write_model(staging / "model", *model_folder)
            _write_complete(staging, step)
            finish_private(staging)
            _delete(final)
            staging.rename(final)
            write_atomically(root / "latest", final.name + "\n")
            for old in sorted(root.glob("step_*"))[:-keep_last] if keep_last > 0 else []:
                _delete(old)
    except BaseException as error:
        storage = storage_failure(error, root) if isinstance(error, Exception) else None
        if dist.is_main():  # a full disk or a signal: no half-written checkpoint stays behind
            discard_private(staging)
        if storage is not None:
            raise storage from None
        raise
    accelerator.wait_for_everyone()
    return final


def _staging(root: Path, step: int) -> Path:
    """The checkpoint's private staging folder (files.private_folder: a killed save's is removed by the next
    run), made by the main process and named to every rank (each writes its own random states into it)."""
    made, refusal = None, None
    if dist.is_main():
        try:
            root.mkdir(parents=True, exist_ok=True)
            sweep(root, quiet=True)
            for legacy in [*root.glob(".step_*.tmp"), *root.glob(".step_*.deleting")]:  # older versions' leftovers
                shutil.rmtree(legacy, ignore_errors=True)
            made = str(private_folder(root, f"step_{step:07d}"))
        except OSError as error:
            refusal = storage_failure(error, root) or UserError(f"cannot write in {root}: {error}")
    made, refusal = dist.broadcast_object((made, None if refusal is None else str(refusal)))
    if refusal is not None:
        raise UserError(refusal)
    return Path(made)


def _delete(folder: Path) -> None:
    """Moved out of sight first (into a private folder: removed by a later run if a kill interrupts), then
    deleted: a kill in the middle never leaves a half-deleted step_* folder that looks like a checkpoint."""
    if folder.exists():
        trash = private_folder(folder.parent, f"deleting-{folder.name}")
        folder.rename(trash / folder.name)
        discard_private(trash)


def _write_complete(staging: Path, step: int) -> None:
    """The record that makes a checkpoint complete, written after every other file (and atomically)."""
    files = {str(path.relative_to(staging)): path.stat().st_size for path in sorted(staging.rglob("*"))
             if path.is_file() and path.name != ALIVE}
    write_atomically(staging / COMPLETE, json.dumps({"step": step, "files": files}, indent=1))


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(value).all() for value in state.values()
               if torch.is_tensor(value) and value.is_floating_point())


def problem(folder: Path) -> str | None:
    """Why `folder` is not a complete checkpoint; None when it is. From complete.json alone: every file it lists
    is there with the size it was written with (a truncated or replaced file is caught; a checkpoint whose bytes
    changed in place fails when it is loaded, and resuming then falls back to the previous one)."""
    if not folder.is_dir():
        return "is missing"
    if not (folder / COMPLETE).is_file():
        return _legacy_problem(folder) if (folder / TRAINER_STATE).is_file() else f"lacks {COMPLETE}"
    try:
        files = read_json(folder / COMPLETE, 16 << 20)["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"is unreadable ({COMPLETE}: {type(error).__name__})"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"lacks {name}"
        if path.stat().st_size != size:
            return f"is unreadable ({name} has {path.stat().st_size} bytes, it was written with {size})"
    return None


def _legacy_problem(folder: Path) -> str | None:
    """A checkpoint written before complete.json existed: its files are read and checked."""
    missing = [name for name in (TRAINER_STATE, EMA_WEIGHTS, MODEL_WEIGHTS, OPTIMIZER_STATE)
               if not (folder / name).is_file()]
    if not list(folder.glob("random_states_*.pkl")):
        missing.append("random_states_*.pkl")
    if missing:
        return f"lacks {', '.join(missing)}"
    try:
        torch.load(folder / TRAINER_STATE, map_location="cpu", weights_only=True)
        ema, model = load_ema_weights(folder), load_file(folder / MODEL_WEIGHTS)
    except (UserError, SafetensorError, OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        return f"is unreadable ({' '.join(str(error).split())[:160]})"
    if not (all_finite(ema) and all_finite(model)):
        return "holds non-finite weights"
    return None


def candidates(output_dir: str | Path) -> list[Path]:
    """The checkpoints of a run, newest first: `latest`'s target, then every step_* folder by step."""
    root = checkpoint_root(output_dir)
    found = sorted(path for path in root.glob("step_*") if path.is_dir())[::-1] if root.is_dir() else []
    pointer = root / "latest"
    if pointer.is_file():  # a pointer to a folder that is gone (a kill between two renames) points nowhere
        try:
            with open_regular(pointer, 4096) as handle:
                name = handle.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            name = ""
        if name.startswith("step_") and "/" not in name and (root / name).is_dir():
            found = [root / name] + [path for path in found if path.name != name]
    return found


def has_checkpoints(output_dir: str | Path) -> bool:
    return bool(candidates(output_dir))


def is_checkpoint(folder: Path) -> bool:
    """A folder stellar-dist wrote as a checkpoint (complete or not): it holds our trainer state."""
    return folder.is_dir() and (folder / TRAINER_STATE).is_file()


def newest_complete(output_dir: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint of a run (None if none is) and the newer ones skipped, with the reason."""
    skipped = []
    for folder in candidates(output_dir):
        reason = problem(folder)
        if reason is None:
            return folder, skipped
        skipped.append((folder, reason))
    return None, skipped


def set_aside(skipped: list[tuple[Path, str]]) -> None:
    """Rename unreadable checkpoints so that resuming neither overwrites nor prunes them (the user decides)."""
    for folder, _ in skipped:
        if folder.is_dir():
            folder.rename(folder.with_name(f"unreadable-{folder.name}"))


def resolve(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder / checkpoints folder meaning its newest complete checkpoint."""
    path = Path(path)
    if (path / TRAINER_STATE).exists():
        reason = problem(path)
        if reason:
            raise UserError(f"checkpoint {path} {reason}: pass another checkpoints/step_* folder")
        return path
    run_dir = path.parent if path.name == "checkpoints" else path
    folder, skipped = newest_complete(run_dir)
    if folder is None:
        detail = f" ({skipped[0][0].name} {skipped[0][1]})" if skipped else ""
        raise UserError(f"no complete checkpoint at {path}{detail}: pass a checkpoints/step_* folder or a run "
                        "folder that has one")
    for bad, reason in skipped:
        print(f"warning: checkpoint {bad} {reason}; using {folder}")
    return folder


def find_latest(output_dir: str | Path) -> Path | None:
    folder, _ = newest_complete(output_dir)
    return folder


def _load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise UserError(f"{path} is unreadable ({' '.join(str(error).split())[:160]}): use another checkpoint "
                        "(checkpoints/step_*)") from None


def load_trainer_state(checkpoint: Path) -> dict:
    return _load(checkpoint / TRAINER_STATE)


def ema_weights_file(checkpoint: Path) -> Path:
    """Where a checkpoint keeps its EMA weights: model/model.safetensors (ema.pt in older checkpoints)."""
    return checkpoint / EMA_WEIGHTS if (checkpoint / EMA_WEIGHTS).is_file() else checkpoint / PORTABLE_WEIGHTS


def load_ema_weights(checkpoint: Path) -> dict:
    """The network's EMA weights (without the clustering's space that the model folder also holds)."""
    path = ema_weights_file(checkpoint)
    if path.name == EMA_WEIGHTS:
        return _load(path)
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise UserError(f"{path} is unreadable ({' '.join(str(error).split())[:160]}): use another checkpoint "
                        "(checkpoints/step_*)") from None
    return {key: value for key, value in tensors.items() if not key.startswith("cluster.")}
