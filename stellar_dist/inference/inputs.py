"""What predict reads: rows of a CSV, a folder of images or shards, each image prepared as the model saw it in
training (from the model's config.json), and a model/input mismatch named before any row is read."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.bands import Stretch, is_fits, read_cutout, resize_cutout
from ..data.catalog import IMAGE_SUFFIXES
from ..data.streams import rgb_array
from ..errors import UserError


def check_input_matches(source: Path, description: dict) -> None:
    """A model/input mismatch is one line before any row is read: shards of another size, bands or kind, or
    8-bit images for a FITS model (and FITS cutouts for an 8-bit one)."""
    from ..data.manifest import load_manifest

    fits_model = description["encoding"] == "npy"
    if (source / "manifest.json").is_file():
        manifest = load_manifest(source)

        def kind(fits: bool, size: int, channels: int, bands) -> str:
            return f"{'FITS' if fits else '8-bit'} cutouts of {size} px in {channels} band(s)" + \
                (f" ({','.join(bands)})" if bands else "")

        theirs = kind(manifest["encoding"] == "npy", manifest["image_size"], manifest.get("channels", 3),
                      manifest.get("bands") if manifest["encoding"] == "npy" else None)
        mine = kind(fits_model, description["image_size"], description.get("channels", 3),
                    description.get("bands") if fits_model else None)
        if theirs != mine:
            raise UserError(f"--input {source} holds {theirs}; the model takes {mine}: use shards packed like the "
                            "model's training shards, or the catalog itself")


def input_rows(source: Path, fits: bool = False):
    """(number of rows, generator of (objid or None, image path or shard member name, payload or None), the image
    paths read (outputs must not be one of them)).
    A folder is searched for the files the model reads: FITS cutouts (`fits`) or 8-bit images. A shard member's
    payload is its bytes (N-band) or (encoding, bytes) for 8-bit shards."""
    if (source / "manifest.json").is_file():
        from ..data.streams import iter_samples, shard_paths
        from ..data.manifest import load_manifest

        manifest = load_manifest(source)
        paths = [path for split in ("labeled", "unlabeled", "test") for path in shard_paths(source, split)]
        encoding = manifest["encoding"]

        def from_shards():
            import json

            for raw in iter_samples(paths):
                record = json.loads(raw["json"])
                objid = record.get("meta", {}).get("objid")
                payload = raw.get(encoding) if encoding == "npy" else (encoding, raw.get(encoding))
                yield (None if objid is None else str(objid)), record.get("source", raw["__key__"]), payload

        return sum(manifest["num_samples"].values()), from_shards(), []
    if source.is_dir():
        wanted = is_fits if fits else (lambda path: path.suffix.lower() in IMAGE_SUFFIXES)
        images = sorted(path for path in source.rglob("*") if wanted(path)
                        and not any(part.startswith(".") for part in path.relative_to(source).parts))
        if not images:
            kind = "FITS cutouts" if fits else f"8-bit images ({', '.join(sorted(IMAGE_SUFFIXES))})"
            raise UserError(f"--input {source} holds no {kind}, the kind of image this model reads: pass a folder "
                            "of them, a CSV or shards")
        return len(images), ((None, str(path), None) for path in images), [str(path) for path in images]
    if source.suffix.lower() != ".csv":
        raise UserError(f"--input {source} is neither a CSV, a folder of images nor a shards folder")
    from ..data.catalog import _read_csv

    frame = _read_csv(source)  # every cell as text: an empty, malformed or non-UTF-8 file is one line
    if "image_path" not in frame.columns:
        raise UserError(f"--input {source} has no image_path column (has: {', '.join(frame.columns)})")
    if frame.empty:
        raise UserError(f"--input {source} has no rows: add the objects to classify")
    ids = frame["objid"] if "objid" in frame.columns else [None] * len(frame)
    paths = [str(Path(path) if Path(path).is_absolute() else source.parent / path) for path in frame["image_path"]]
    first = paths[0]
    if is_fits(first) != fits:
        raise UserError(f"--input {source} lists {'FITS cutouts' if is_fits(first) else '8-bit images'} "
                        f"(first {first}), but the model was trained on {'FITS cutouts' if fits else '8-bit images'}"
                        ": classify them with a model trained on the same kind of image")
    return len(frame), ((objid or None, path, None) for objid, path in zip(ids, paths)), paths


def prepare(row: tuple, description: dict, stretch: Stretch | None = None) -> tuple[torch.Tensor | None, str | None]:
    """The image as the model saw it in training, or (None, the reason it cannot be read)."""
    from ..data.images import encode, preprocess_image

    _, path, payload = row
    if description["encoding"] == "npy":
        return _prepare_bands(path, payload, description, stretch or Stretch(description["stretch"]))
    try:
        if payload is None:
            image = preprocess_image(path, description["image_size"], description["preprocess"])
            if description["encoding"] == "jpg":  # the shards held JPEGs: the same compression
                image = Image.open(io.BytesIO(encode(image, "jpg")))
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        else:  # a shard member, in the shards' own 8-bit encoding (png, jpg or u8: any of them reads alike)
            encoding, payload = payload
            array = rgb_array({encoding: payload}, encoding, description["image_size"])
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, UserError) as error:
        return None, f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)
    if description.get("grayscale"):
        tensor = tensor.mean(0, keepdim=True).expand(3, -1, -1).contiguous()
    return tensor, None


def _prepare_bands(path: str, payload: bytes | None, description: dict, stretch: Stretch):
    """An N-band cutout (a FITS file, or an array from N-band shards) stretched as in training."""
    size, channels = description["image_size"], description["channels"]
    try:
        if payload is None:
            cube = resize_cutout(read_cutout(path, tuple(description["bands"])), size, description["preprocess"])
        else:
            cube = np.load(io.BytesIO(payload), allow_pickle=False)
        if cube.shape != (channels, size, size):
            raise ValueError(f"cutout has shape {cube.shape}, the model takes {(channels, size, size)}")
    except (OSError, ValueError, TypeError, EOFError) as error:
        return None, f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return stretch.apply_asinh(stretch.to_noise_units(cube)), None
