"""A portable model: one folder with `model.safetensors` (the EMA weights) and `config.json` (everything needed to
rebuild the network and to preprocess images as in training), loadable without the run folder or the shards.

Written into every checkpoint (`checkpoints/step_*/model/`) and, at the end of a run, to `OUTPUT_DIR/model/`.

    model, description = load_model("runs/demo/model")      # or a run folder, or a checkpoints/step_* folder
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import UserError
from ..outputs import follow_umask

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


def model_tensors(ema_state: dict, cluster_state=None) -> dict:
    """The network's EMA weights, and the latest clustering's space (PCA mean and projection, centroids) when the
    run has one, so that predict can name each object's cluster."""
    tensors = {key: value for key, value in ema_state.items()
               if key.startswith(("backbone.", "classifier.", "cluster_head."))}
    if cluster_state is not None:
        tensors["cluster.centroids"] = cluster_state.centroids
        if cluster_state.pca_projection is not None:
            tensors["cluster.pca_mean"] = cluster_state.pca_mean
            tensors["cluster.pca_projection"] = cluster_state.pca_projection
    return tensors


def describe(config, manifest: dict, step: int, cluster_state=None) -> dict:
    """What config.json holds: the architecture, the classes and how an input image must be prepared."""
    try:
        version = metadata.version("stellar-dist")
    except metadata.PackageNotFoundError:
        version = None
    return {
        "format": FORMAT,
        "arch": config.model.arch,
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
        "training": {"algorithm": config.ssl.algorithm, "steps": step, "seed": config.seed},
        "cluster": None if cluster_state is None else {
            "k": int(cluster_state.centroids.shape[0]), "far_distance": cluster_state.far_distance,
            "space": "L2-normalised whitened PCA of the backbone features" if cluster_state.pca_projection is not None
            else "L2-normalised backbone features"},
        "package_version": version,
        "git_commit": _git_commit(),
    }


def write_model(folder: Path, tensors: dict, description: dict) -> None:
    """Write the model folder; files are replaced atomically (and a new checkpoint's folder is a staging one)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().cpu().contiguous() for key, value in tensors.items()}
    save_file(tensors, str(folder / f".{WEIGHTS}.tmp"), metadata={"format": FORMAT})
    (folder / f".{DESCRIPTION}.tmp").write_text(json.dumps(description, indent=2) + "\n")
    for name in (WEIGHTS, DESCRIPTION):
        follow_umask(folder / f".{name}.tmp")  # safetensors writes 0600 whatever the umask
        os.replace(folder / f".{name}.tmp", folder / name)


def publish(model_folder: Path, output_dir: Path, quiet: bool = False) -> Path:
    """Copy a checkpoint's model files to OUTPUT_DIR/model, each replaced atomically. Only the files a model
    folder consists of are replaced: an export or a note the user keeps there stays (and is named, since it was
    made from earlier weights)."""
    target = output_dir / "model"
    target.mkdir(exist_ok=True)
    for name in (WEIGHTS, DESCRIPTION):
        temporary = target / f".{name}.tmp-{os.getpid()}"
        shutil.copyfile(model_folder / name, temporary)
        follow_umask(temporary)
        os.replace(temporary, target / name)
    others = sorted(child.name for child in target.iterdir() if child.name not in (WEIGHTS, DESCRIPTION)
                    and not child.name.startswith("."))
    if others and not quiet:
        print(f"note: {target} also holds {', '.join(others)}, kept as they are; an export made from earlier "
              "weights must be made again (stellar-dist export)")
    return target


def find_model_folder(path: str | Path) -> Path:
    """A model folder, a checkpoint folder (its model/) or a run folder (its model/, else its latest checkpoint's)."""
    from .. import checkpoint

    path = Path(path)
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
    classes = description.get("classes")
    if not isinstance(classes, list) or not 2 <= len(classes) <= 10000 or \
            not all(isinstance(name, str) for name in classes):
        raise UserError(f"model folder {folder}: config.json's classes must list 2 or more names")
    if description.get("encoding") not in ("png", "jpg", "u8", "npy") or \
            description.get("preprocess") not in ("resize", "crop") or not isinstance(description.get("arch"), str):
        raise UserError(f"model folder {folder}: config.json's encoding, preprocess or arch is not one this version "
                        "knows: copy the folder again from the run")


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """(the EMA network in eval mode, its description) from a model, checkpoint or run folder."""
    from ..models import StellarNet

    folder = find_model_folder(path)
    try:
        description = json.loads((folder / DESCRIPTION).read_text())
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
        model = StellarNet(description["arch"], len(description["classes"]), "none", num_clusters=num_clusters,
                           in_channels=description.get("channels", 3))
        model.load_state_dict({key: value for key, value in tensors.items() if not key.startswith("cluster.")})
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"model folder {folder}: its config.json does not match its weights ("
                        f"{' '.join(str(error).split())[:200]}): copy the folder again from the run") from None
    description["cluster_tensors"] = {key.removeprefix("cluster."): value.to(device) for key, value in tensors.items()
                                      if key.startswith("cluster.")}
    return model.to(device).eval(), description
