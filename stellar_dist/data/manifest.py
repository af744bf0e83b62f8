"""A packed shard folder's manifest: reading it safely, checking shards against it, recognising pack's output.

Shard names come from data, so they are checked against the names pack writes (`labeled-000000.tar`, ...) before
any path is built from them, and shards are only ever opened as local files: WebDataset's URL opener would run a
`pipe:...` name as a shell command.
"""

from __future__ import annotations

import hashlib
import math
import re
import tarfile
from pathlib import Path

from ..core.errors import UserError
from ..core.files import read_json

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
SPLITS = ("labeled", "unlabeled", "test")
SHARD_NAME = re.compile(r"(labeled|unlabeled|test)-[0-9]{6}\.tar")


def _invalid(path: Path, what: str) -> UserError:
    return UserError(f"{path} is not a manifest written by `stellar-dist pack` ({what}): re-pack the catalog")


def _check_entries(path: Path, manifest: dict) -> None:
    shards = manifest.get("shards")
    if not isinstance(shards, dict) or set(shards) != set(SPLITS):
        raise _invalid(path, f"'shards' must map {', '.join(SPLITS)} to lists")
    for split, entries in shards.items():
        if not isinstance(entries, list):
            raise _invalid(path, f"shards.{split} is not a list")
        for entry in entries:
            name = entry.get("name") if isinstance(entry, dict) else None
            if not isinstance(name, str) or not SHARD_NAME.fullmatch(name) or not name.startswith(split + "-"):
                raise _invalid(path, f"shard name {name!r} in split {split} is not of the form {split}-NNNNNN.tar")
            for key in ("num_samples", "bytes"):
                if not isinstance(entry.get(key), int) or isinstance(entry.get(key), bool) or entry[key] < 0:
                    raise _invalid(path, f"shard {name} has no valid {key}")


def _check_bands(path: Path, manifest: dict) -> None:
    """N-band shards: the bands, and a stretch with one finite number per band for each parameter."""
    bands, stretch = manifest.get("bands"), manifest.get("stretch")
    if not isinstance(bands, list) or not bands or manifest.get("channels") != len(bands):
        raise _invalid(path, "'bands' must list one name per channel")
    if not isinstance(stretch, dict) or stretch.get("kind") != "asinh":
        raise _invalid(path, "'stretch' must be an asinh stretch")
    for key in ("sky", "softening", "scale"):
        values = stretch.get(key)
        if not isinstance(values, list) or len(values) != len(bands) or not all(
                isinstance(value, (int, float)) and math.isfinite(value) for value in values):
            raise _invalid(path, f"stretch.{key} must give one finite number per band")
    if min(stretch["softening"]) <= 0 or min(stretch["scale"]) <= 0:
        raise _invalid(path, "stretch.softening and stretch.scale must be positive")


def validate_manifest(path: Path, manifest) -> dict:
    if not isinstance(manifest, dict):
        raise _invalid(path, "not a JSON object")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise _invalid(path, f"format_version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}")
    classes = manifest.get("classes")
    # no classes: a catalog without any spectrum, packed for `stellar-dist select` (training refuses it)
    if not isinstance(classes, list) or not all(isinstance(name, str) for name in classes):
        raise _invalid(path, "'classes' must be a list of names")
    if manifest.get("encoding") not in ("png", "jpg", "u8", "npy"):
        raise _invalid(path, f"encoding {manifest.get('encoding')!r}")
    if manifest["encoding"] == "npy":
        _check_bands(path, manifest)
    _check_entries(path, manifest)
    counts = manifest.get("num_samples")
    if not isinstance(counts, dict) or not all(isinstance(counts.get(split), int) for split in SPLITS):
        raise _invalid(path, "'num_samples' must give an integer per split")
    if not isinstance(manifest.get("num_input"), int):
        raise _invalid(path, "'num_input' must be an integer")
    return manifest


def load_manifest(shards_dir: str | Path) -> dict:
    path = Path(shards_dir) / MANIFEST_NAME
    if not path.exists():
        raise UserError(f"{shards_dir} has no {MANIFEST_NAME}: pack a catalog first with `stellar-dist pack`")
    try:
        return validate_manifest(path, read_json(path))
    except UserError:  # a refusal of ours keeps its own message
        raise
    except ValueError as error:
        raise UserError(f"{path} is not a manifest stellar-dist can read ({error}): re-pack the shards") from None
    except OSError as error:
        raise UserError(f"cannot read {path} ({error.strerror}): check the folder's permissions") from None


def owned_files(folder: Path) -> list[Path] | None:
    """The files of `folder` if it is exactly a pack output (a valid manifest and the shards it lists, nothing
    else); None if the folder holds anything pack did not write."""
    try:
        manifest = load_manifest(folder)
    except UserError:
        return None
    names = {entry["name"] for entries in manifest["shards"].values() for entry in entries} | {MANIFEST_NAME}
    present = list(folder.iterdir())
    if any(child.name not in names or child.is_symlink() or not child.is_file() for child in present):
        return None
    return present


def _shard_keys(path: Path) -> set[str]:
    """Sample keys of a shard: distinct member names before the first dot (reads tar headers only)."""
    with tarfile.open(path) as tar:
        return {member.name.split(".", 1)[0] for member in tar.getmembers()}


def count_members(path: Path) -> int:
    return len(_shard_keys(path))


def evaluated_on(manifest: dict) -> str:
    """What the shards' test split is: the test split, a validation split carved from the training pool, or
    "none" (packed with --test-fraction 0: every spectrum trains; evaluate elsewhere)."""
    if not manifest["num_samples"]["test"]:
        return "none"
    return "validation" if manifest.get("arguments", {}).get("validation_fraction") else "test"


COUNTED_SHARDS = 32  # per split, evenly spaced: the start-up check costs the same at 10^4 and 10^9 samples


def check_shards(shards_dir: str | Path, manifest: dict) -> None:
    """Cheap check before training: every listed shard exists with the manifest's size (a stat per shard), and
    the sample count of up to COUNTED_SHARDS shards per split (reading tar headers costs ~40 us per sample: minutes
    per rank at survey scale). `pack --verify` checks every hash and count; a shard that breaks mid-run is a
    one-line error from the stream."""
    for entries in manifest["shards"].values():
        step = max(1, -(-len(entries) // COUNTED_SHARDS))
        for position, entry in enumerate(entries):
            path = Path(shards_dir) / entry["name"]
            problem = None
            if not path.is_file():
                problem = "is missing"
            elif path.stat().st_size != entry["bytes"]:
                problem = f"has {path.stat().st_size} bytes, the manifest says {entry['bytes']} (truncated or altered)"
            elif position % step == 0:
                try:
                    count = count_members(path)
                except (tarfile.TarError, OSError) as error:
                    count, problem = None, f"is not a readable tar ({error})"
                if count is not None and count != entry["num_samples"]:
                    problem = f"holds {count} samples, the manifest says {entry['num_samples']}"
            if problem:
                raise UserError(f"shard {path} {problem}: run `stellar-dist pack --verify {shards_dir}`, then "
                                "restore the shards or re-pack")


def verify(shards_dir: str | Path) -> dict:
    """Re-check every shard's hash and sample count against the manifest; returns a summary."""
    shards_dir = Path(shards_dir)
    manifest = load_manifest(shards_dir)
    seen_ids: set[int] = set()
    num_shards = 0
    for split, entries in manifest["shards"].items():
        for entry in entries:
            path = shards_dir / entry["name"]
            if not path.is_file():
                raise UserError(f"shard {path} listed in the manifest is missing: re-pack or restore it")
            if hashlib.sha256(path.read_bytes()).hexdigest() != entry.get("sha256"):
                raise UserError(f"shard {path} does not match its sha256 in the manifest: it is corrupt; re-pack")
            ids = _shard_ids(path)
            if len(ids) != entry["num_samples"]:
                raise UserError(f"shard {path} holds {len(ids)} samples, manifest says {entry['num_samples']}: re-pack")
            if seen_ids & set(ids):
                raise UserError(f"shard {path} repeats sample ids found in other shards: re-pack")
            seen_ids.update(ids)
            num_shards += 1
        if sum(entry["num_samples"] for entry in entries) != manifest["num_samples"][split]:
            raise UserError(f"split {split}: shard counts do not add up to the manifest total; re-pack")
    return {"shards": num_shards, "samples": len(seen_ids)}


def _shard_ids(path: Path) -> list[int]:
    try:
        return sorted(int(key) for key in _shard_keys(path))
    except (tarfile.TarError, ValueError) as error:
        raise UserError(f"shard {path} is not a shard written by pack ({error}): re-pack") from None
