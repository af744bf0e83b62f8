"""Checkpoints: `accelerator.save_state` plus our own trainer state, written atomically, with a `latest` pointer.

    OUTPUT_DIR/checkpoints/step_0000200/   model.safetensors, optimizer.bin, random_states_*.pkl (Accelerate)
                                           trainer_state.pt (step, EMA, scheduler, cluster state), ema.pt
    OUTPUT_DIR/checkpoints/latest          the name of the newest complete checkpoint

A checkpoint is built in a hidden `.step_*.tmp` folder and renamed when complete; `latest` is replaced atomically
after that. Our own files are read with `torch.load(weights_only=True)`: no pickled code runs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from .errors import UserError

TRAINER_STATE = "trainer_state.pt"
EMA_WEIGHTS = "ema.pt"


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def save(accelerator, output_dir: str | Path, step: int, trainer_state: dict, ema_state: dict, keep_last: int) -> Path:
    root = checkpoint_root(output_dir)
    final, staging = root / f"step_{step:07d}", root / f".step_{step:07d}.tmp"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        torch.save(trainer_state, staging / TRAINER_STATE)
        torch.save(ema_state, staging / EMA_WEIGHTS)
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        pointer = root / ".latest.tmp"
        pointer.write_text(final.name + "\n")
        os.replace(pointer, root / "latest")
        for old in sorted(root.glob("step_*"))[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resolve(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder / checkpoints folder meaning its latest checkpoint."""
    path = Path(path)
    if (path / TRAINER_STATE).exists():
        return path
    for root in (checkpoint_root(path), path):
        pointer = root / "latest"
        if pointer.exists():
            candidate = root / pointer.read_text().strip()
            if (candidate / TRAINER_STATE).exists():
                return candidate
    raise UserError(f"no checkpoint at {path}: pass a checkpoints/step_* folder or a run folder that has one")


def find_latest(output_dir: str | Path) -> Path | None:
    try:
        return resolve(output_dir)
    except UserError:
        return None


def load_trainer_state(checkpoint: Path) -> dict:
    return torch.load(checkpoint / TRAINER_STATE, map_location="cpu", weights_only=True)


def load_ema_weights(checkpoint: Path) -> dict:
    return torch.load(checkpoint / EMA_WEIGHTS, map_location="cpu", weights_only=True)
