"""Reading a portable model folder (written by training/model_folder.py): the one loader every command uses (predict,
export, evaluate, cluster), from a model folder, a checkpoint or a run folder, moved anywhere.

    model, description = load_model("runs/demo/model")      # or a run folder, or a checkpoints/step_* folder
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from ..core.errors import PathNotFound, UserError
from ..core.files import read_json
from ..training import checkpoint
from ..training.model_folder import DESCRIPTION, FORMAT, WEIGHTS


def find_model_folder(path: str | Path) -> Path:
    """A model folder itself; a checkpoint folder's model/ (the checkpoint must be complete); a run folder's
    published model/, else its newest complete checkpoint's."""
    path = Path(path)
    if not path.exists():
        raise PathNotFound(f"model {path} does not exist: pass a run folder, its model/ folder or a "
                           "checkpoints/step_* folder")
    if checkpoint.is_checkpoint(path):
        path = checkpoint.resolve(path)  # one line if it is incomplete
    for candidate in (path, path / "model"):
        if (candidate / DESCRIPTION).is_file() and (candidate / WEIGHTS).is_file():
            return candidate
    if path.is_dir() and (path / "checkpoints").is_dir():
        latest = checkpoint.find_latest(path)
        if latest is not None and (latest / "model" / DESCRIPTION).is_file():
            return latest / "model"
    raise UserError(f"{path} holds no model (model.safetensors + config.json): pass a run folder, its model/ "
                    "folder or a checkpoints/step_* folder written by this version of stellar-dist")


# What a config.json may say: anything outside these bounds would build an unusable or enormous network.
LIMITS = {"image_size": (8, 1024), "channels": (1, 64)}


def check_description(folder: Path, description: dict) -> None:
    """config.json's fields, type and range, before anything is built from them."""
    for key, (low, high) in LIMITS.items():
        value = description.get(key, 3 if key == "channels" else None)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise UserError(f"model folder {folder}: config.json's {key} is {value!r}, not an integer in "
                            f"[{low}, {high}]: copy the folder again from the run")
    crop = description.get("centre_crop", 0)
    if not isinstance(crop, int) or isinstance(crop, bool) or not 0 <= crop <= description["image_size"]:
        raise UserError(f"model folder {folder}: config.json's centre_crop is {crop!r}, not an integer in [0, "
                        f"image_size]: copy the folder again from the run")
    classes = description.get("classes")
    if not isinstance(classes, list) or not 2 <= len(classes) <= 10000 or \
            not all(isinstance(name, str) for name in classes):
        raise UserError(f"model folder {folder}: config.json's classes must list 2 or more names")
    if description.get("encoding") not in ("png", "jpg", "u8", "npy") or \
            description.get("preprocess") not in ("resize", "crop") or not isinstance(description.get("arch"), str):
        raise UserError(f"model folder {folder}: config.json's encoding, preprocess or arch is not one this version "
                        "knows: copy the folder again from the run")


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """(the EMA network in eval mode, in the run's layout, its description) from a model, checkpoint or run
    folder; description["folder"] is the model folder it came from."""
    from ..model.network import build_model

    folder = find_model_folder(path)
    try:
        description = read_json(folder / DESCRIPTION, 16 << 20)
        tensors = load_file(str(folder / WEIGHTS), device="cpu")
    except Exception as error:  # noqa: BLE001  (safetensors' SafetensorError is not an OSError)
        raise UserError(f"model folder {folder} cannot be read ({type(error).__name__}: {error}): copy it "
                        "again") from None
    found = description.get("format") if isinstance(description, dict) else None
    if found != FORMAT:
        raise UserError(f"model folder {folder} has format {found!r}, this version reads {FORMAT}")
    check_description(folder, description)
    bad = [key for key, value in tensors.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise UserError(f"model folder {folder} holds non-finite weights ({bad[0]}{' ...' if len(bad) > 1 else ''}): "
                        "the training diverged; use an earlier checkpoint's model/ folder (checkpoints/step_*)")
    num_clusters = tensors["cluster_head.weight"].shape[0] if "cluster_head.weight" in tensors else 0
    try:
        model = build_model(description["arch"], len(description["classes"]), num_clusters=num_clusters,
                            in_channels=description.get("channels", 3),
                            channels_last=bool(description.get("channels_last", False)),
                            photometry=description.get("photometry") is True,
                            centre_crop=description.get("centre_crop", 0))
        model.load_state_dict({key: value for key, value in tensors.items() if not key.startswith("cluster.")})
    except UserError:  # a refusal of ours keeps its own message
        raise
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"model folder {folder}: its config.json does not match its weights ("
                        f"{' '.join(str(error).split())[:200]}): copy the folder again from the run") from None
    description["cluster_tensors"] = {key.removeprefix("cluster."): value.to(device) for key, value in tensors.items()
                                      if key.startswith("cluster.")}
    description["folder"] = str(folder)
    return model.to(device).eval(), description
