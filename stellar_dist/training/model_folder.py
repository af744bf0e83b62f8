"""Writing the portable model: one folder with `model.safetensors` (the EMA weights) and `config.json` (everything
needed to rebuild the network, in the run's layout, and to preprocess images as in training). Written into every
checkpoint (`checkpoints/step_*/model/`) by checkpoint.save and, at the end of a run, published to
`OUTPUT_DIR/model/`. Read by inference/model_folder.py (`load_model`), from anywhere it is moved.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

from safetensors.torch import save_file

from ..core.files import atomic_path, write_atomically
from .config import to_dict

FORMAT = "stellar-dist-model/1"
WEIGHTS, DESCRIPTION = "model.safetensors", "config.json"


@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:  # once per process, not at every checkpoint
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def model_tensors(ema_state: dict, cluster_tensors: dict) -> dict:
    """The network's EMA weights, and the cluster head's `portable_tensors` (its clustering's space, if any)."""
    return {key: value for key, value in ema_state.items()
            if key.startswith(("backbone.", "photometry.", "classifier.", "cluster_head."))} | cluster_tensors


def describe(config, manifest: dict, step: int, cluster: dict | None) -> dict:
    """What config.json holds: the architecture, the classes and how an input image must be prepared; `cluster`:
    the cluster head's `portable_description`."""
    try:
        version = metadata.version("stellar-dist")
    except metadata.PackageNotFoundError:
        version = None
    return {
        "format": FORMAT,
        "arch": config.model.arch,
        "photometry": config.model.photometry,  # a photometric branch measures the whole input image
        "centre_crop": config.model.centre_crop,  # the CNN sees the central N px (0: all)
        "classes": list(manifest["classes"]),
        "channels": manifest.get("channels", 3),
        "bands": manifest.get("bands", ["R", "G", "B"]),  # an RGB rendering (e.g. SDSS gri JPEGs)
        "image_size": manifest["image_size"],
        "preprocess": manifest["preprocess"],  # "resize" (whole field, area-averaged) or "crop" (centre, full res.)
        "encoding": manifest["encoding"],  # png / jpg: 8-bit RGB; npy: N-band FITS cutouts, float32
        "grayscale": config.data.grayscale,
        "stretch": manifest.get("stretch"),  # N-band: asinh((pixel - sky) / softening) / scale, per band
        "normalisation": "N-band: the asinh stretch" if manifest["encoding"] == "npy"
        else "pixel / 255 in [0, 1], no mean or std",
        "channels_last": config.train.channels_last,  # the run's layout: evaluation gives its numbers exactly
        "training": {"algorithm": config.ssl.algorithm, "steps": step, "seed": config.seed},
        "run_config": to_dict(config),  # evaluate / cluster read their options here, wherever the folder is moved
        "cluster": cluster,
        "package_version": version,
        "git_commit": _git_commit(),
    }


def write_model(folder: Path, tensors: dict, description: dict) -> None:
    """Write the model folder; files are replaced atomically (and a new checkpoint's folder is a staging one)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().cpu().contiguous() for key, value in tensors.items()}
    with atomic_path(folder / WEIGHTS) as temporary:  # given the umask's modes (safetensors writes 0600)
        save_file(tensors, str(temporary), metadata={"format": FORMAT})
    write_atomically(folder / DESCRIPTION, json.dumps(description, indent=2) + "\n")


def publish(model_folder: Path, output_dir: Path, quiet: bool = False) -> Path:
    """Put a checkpoint's model files in OUTPUT_DIR/model, each replaced atomically: the weights as a hard link to
    the checkpoint's file where the filesystem allows (the run stores them once; neither file is ever written
    again), else a copy. Only the files a model folder consists of are replaced: an export or a note the user
    keeps there stays (and is named, since it was made from earlier weights)."""
    target = output_dir / "model"
    target.mkdir(exist_ok=True)
    for name in (WEIGHTS, DESCRIPTION):
        with atomic_path(target / name) as temporary:
            try:
                if name != WEIGHTS:
                    raise OSError("copied")  # config.json is small: a copy of its own
                os.link(model_folder / name, temporary)
            except OSError:
                shutil.copyfile(model_folder / name, temporary)
    others = sorted(child.name for child in target.iterdir() if child.name not in (WEIGHTS, DESCRIPTION)
                    and not child.name.startswith("."))
    if others and not quiet:
        print(f"note: {target} also holds {', '.join(others)}, kept as they are; an export made from earlier "
              "weights must be made again (stellar-dist export)")
    return target
