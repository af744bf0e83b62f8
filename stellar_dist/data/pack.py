"""Packing a catalog into WebDataset shards per split, with a manifest; and verifying packed shards.

Shards are written in parallel, one worker per shard, into a hidden staging folder beside `--out` that is renamed
into place only when every shard and the manifest are complete: an interrupted or failed pack leaves nothing.
The format is described in shards/README.md.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..core.errors import UserError, sigterm_as_exit
from ..core.files import discard_private, finish_private, private_folder
from ..core.outputs import OutputLock, inside
from ..core.progress import progress
from . import bands as fits_bands
from .catalog import SPLITS, find_duplicates, read_catalog
from .images import encode, preprocess_image
from .labels import join_labels
from .manifest import FORMAT_VERSION, MANIFEST_NAME, owned_files
from .objids import id_type
from .splits import object_keys, split_rows

ENCODINGS = ("png", "jpg", "u8")
PREPROCESS_MODES = ("resize", "crop")
MAX_IMAGE_SIZE = 1024  # --image-size: a shard sample of 1024 x 1024 x 5 float32 is 20 MB


@dataclass(frozen=True)
class PackOptions:
    # A real catalog (both 0): every row with a class is labeled or test, every row without one unlabeled. The
    # benchmark (either > 0): the classes of a labeled catalog are hidden except for these (data/splits.py).
    labeled_fraction: float = 0.0  # > 0: the fraction of each class whose label training may use
    test_fraction: float = 0.2  # fraction of each class held out for evaluation (0: no test split)
    labeled_count: int = 0  # > 0: this many labels in all (one per class first, then by class share), nested in N
    validation_fraction: float = 0.0  # > 0: the test split is a validation split of this fraction of each class,
    # carved from the training pool; the real test rows are not packed (choose recipes on these shards)
    image_size: int = 64  # output side in pixels
    preprocess: str = "resize"  # "resize": whole field, area-averaged; "crop": centre crop at full resolution
    encoding: str = "png"  # "png" is lossless; "jpg" (quality 95) is ~3x smaller; "u8": raw uint8 arrays (no decode)
    seed: int = 0  # seeds the split and the shard order
    pixel_scale: float = 0.0  # arcsec per pixel of the input images (SDSS: 0.396); 0: a FITS cutout's WCS, else unknown
    labeled_seed: int = -1  # >= 0: which training-pool rows are labeled is drawn with this seed instead (the test
    # and validation rows stay those of `seed`): seeds of a label-efficiency curve that vary the labeled objects
    shard_size: int = 1000  # samples per shard
    workers: int = 0  # 0 = all CPU cores
    strict: bool = False  # an unreadable image aborts the pack instead of being skipped and listed
    bands: str = ""  # FITS input: comma-separated band names in channel order ("": the first file's EXTNAMEs)
    path_column: str = "image_path"  # the catalog's column of image paths
    label_column: str = "Class"  # the catalog's column of classes (SDSS tables: "class")
    id_column: str = "objid"  # the catalog's object id column, carried into the shards (SDSS: "specObjID", ...)
    fold: str = ""  # "I/K": the test split is fold I of K of every class's rows (cross-validation)
    labels: str = ""  # a table of id,class joined onto the catalog by id: new spectra without editing it


def _json_safe(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if np.isnan(value) else float(value)
    if value is pd.NA or value is None:
        return None
    return value


def _sample_record(row: dict, sample_id: int, split: str, class_index: dict[str, int], base: str) -> dict:
    """The JSON part of a sample; the true class of unlabeled rows goes to `true_*` (diagnostics only). Every
    other catalog column, whatever its name, goes to `meta` unchanged."""
    meta = {key: _json_safe(value) for key, value in row.items() if key not in ("image_path", "Class")}
    source = os.path.relpath(row["image_path"], base)  # beside the catalog: relative, so the two move together;
    source = row["image_path"] if source.startswith("..") else source  # elsewhere: the absolute path, as given
    record = {"id": sample_id, "split": split, "source": source, "meta": meta}
    known = row["Class"] != ""
    if split == "unlabeled":
        record["true_label"] = class_index[row["Class"]] if known else -1
        record["true_class"] = row["Class"] if known else None
    else:
        record["label"], record["class"] = class_index[row["Class"]], row["Class"]
    return record


def _pixels(path: str, options: PackOptions, pixels: dict) -> bytes:
    """The shard member of one image: PNG/JPEG bytes, or a FITS cutout's float32 (bands, size, size) array."""
    if pixels["encoding"] != "npy":
        return encode(preprocess_image(path, options.image_size, options.preprocess), pixels["encoding"])
    cube = fits_bands.resize_cutout(fits_bands.read_cutout(path, tuple(pixels["bands"])), options.image_size,
                                    options.preprocess)
    buffer = io.BytesIO()
    np.save(buffer, cube, allow_pickle=False)
    return buffer.getvalue()


def _write_shard(task: dict) -> dict:
    """Write one shard; returns its manifest entry plus the rows it skipped."""
    options = PackOptions(**task["options"])
    path = Path(task["staging"]) / task["name"]
    skipped, labels, num_written = [], Counter(), 0
    encoding = task["pixels"]["encoding"]
    with tarfile.open(path, "w") as tar:
        for sample_id, row in task["rows"]:
            try:
                pixels = _pixels(row["image_path"], options, task["pixels"])
            except UserError:  # a refusal of ours keeps its own message
                raise
            except (OSError, ValueError, TypeError, EOFError, SyntaxError, Image.DecompressionBombError) as error:
                skipped.append({"image_path": row["image_path"], "reason": str(error).splitlines()[0][:200]})
                continue
            record = _sample_record(row, sample_id, task["split"], task["class_index"], task["base"])
            key = f"{record['id']:09d}"
            for suffix, payload in ((encoding, pixels), ("json", json.dumps(record).encode())):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size, info.mtime = len(payload), 0
                tar.addfile(info, io.BytesIO(payload))
            labels[row["Class"] or "?"] += 1
            num_written += 1
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    entry = {"name": task["name"], "num_samples": num_written, "sha256": digest, "bytes": path.stat().st_size}
    return {"split": task["split"], "entry": entry, "skipped": skipped, "classes": dict(labels),
            "input": len(task["rows"])}


def check_out_dir(out: Path, overwrite: bool, catalog: Path) -> None:
    """Refuse an --out that holds anything pack did not write, or that holds the input itself."""
    real = out.resolve()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: choose a folder path")
    if inside(catalog.resolve(), real) or inside(real, catalog.resolve()):
        raise UserError(f"--out {out} would hold or overlap the catalog {catalog}: choose a folder outside it")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if owned_files(out) is None:
        raise UserError(f"output folder {out} already holds files that `stellar-dist pack` did not write: "
                        "choose a new or empty --out (nothing was changed)")
    if not overwrite:
        raise UserError(f"output folder {out} already holds shards: choose a new --out, "
                        "or pass --overwrite to replace them")


def _check_images_outside(frame: pd.DataFrame, out: Path) -> None:
    real = out.resolve()
    within = [path for path in frame["image_path"] if inside(Path(path).resolve(), real)]
    if within:
        raise UserError(f"{len(within)} catalog image(s) lie inside --out {out}, first {within[0]}: "
                        "choose an --out outside the images")


def _shard_tasks(frame: pd.DataFrame, splits: np.ndarray, options: PackOptions, common: dict) -> list[dict]:
    rng = np.random.default_rng(options.seed + 1)
    tasks = []
    for split in SPLITS:
        # Shuffle within the split so that every shard mixes the classes (streams read shards in order).
        rows = rng.permutation(np.flatnonzero(splits == split))
        for shard_index, start in enumerate(range(0, len(rows), options.shard_size)):
            chunk = rows[start : start + options.shard_size]  # sample id = catalog row number
            tasks.append({**common, "split": split, "name": f"{split}-{shard_index:06d}.tar",
                          "rows": list(zip(chunk.tolist(), frame.iloc[chunk].to_dict("records")))})
    return tasks


def _catalog_base(catalog) -> str:
    """The folder a catalog's relative image paths start from."""
    return str(Path(catalog).parent if Path(catalog).is_file() else Path(catalog))


def _object_names(frame: pd.DataFrame, catalog) -> list[str]:
    """What names an object for the split rule: its id, else its image path relative to the catalog's folder:
    unchanged when rows are added or the catalog moves."""
    base = _catalog_base(catalog)
    ids = frame["objid"].fillna("").astype(str).tolist() if "objid" in frame.columns else [""] * len(frame)
    return [f"id:{objid}" if objid.strip() else f"path:{os.path.relpath(path, base)}"
            for objid, path in zip(ids, frame["image_path"])]


def prepare(catalog: str | Path, out: str | Path, options: PackOptions, overwrite: bool = False):
    """Validate the options, --out and the catalog (before anything is written); returns the catalog frame, the
    class names, each row's split and what the shards will hold (`pixels`: encoding, channels, FITS bands and
    stretch): the same for a whole pack and for every part of a job array."""
    if options.encoding not in ENCODINGS or options.preprocess not in PREPROCESS_MODES:
        raise UserError(f"--encoding must be one of {ENCODINGS} and --preprocess one of {PREPROCESS_MODES}")
    if not (8 <= options.image_size <= MAX_IMAGE_SIZE and 1 <= options.shard_size <= 10**6
            and 0 <= options.workers <= 1024):
        raise UserError(f"--image-size must lie in [8, {MAX_IMAGE_SIZE}], --shard-size in [1, 1000000] and --workers "
                        f"in [0, 1024] (got {options.image_size}, {options.shard_size}, {options.workers})")
    if not 0 <= options.pixel_scale <= 3600:
        raise UserError(f"--pixel-scale {options.pixel_scale} must be arcseconds per input pixel in [0, 3600] (SDSS "
                        "images: 0.396; 0: unknown)")
    out = Path(out)
    check_out_dir(out, overwrite, Path(catalog))
    columns = {"image_path": options.path_column, "Class": options.label_column, "objid": options.id_column}
    frame = read_catalog(catalog, columns)
    if options.labels:
        frame = join_labels(frame, options.labels, columns)
    _check_images_outside(frame, out)
    class_names = sorted(set(frame["Class"]) - {""})
    if len(class_names) == 1 or (not class_names and (options.labeled_fraction or options.labeled_count)):
        raise UserError(f"catalog {catalog} has {len(class_names) or 'no'} class{'es' if not class_names else ''} "
                        f"{', '.join(class_names)}: a classifier needs labelled rows of at least two classes "
                        f"(column {options.label_column!r}; name another with --label-column)")
    exclude, duplicates = find_duplicates(frame)
    splits = split_rows(frame["Class"], options, exclude, object_keys(_object_names(frame, catalog), options.seed))
    pixels = fits_bands.input_pixels(frame, splits, options, catalog)
    ids = id_type(frame["objid"]) if "objid" in frame.columns else None  # predict types its objid column by it
    scale = fits_bands.packed_pixel_scale(frame["image_path"].iloc[0], options)  # figures' scale bars
    return frame, class_names, splits, pixels | {"objid_type": ids, "pixel_scale_arcsec": scale,
                                                 "duplicates": duplicates}


def write_shards(catalog, frame, splits, class_names, pixels: dict, options: PackOptions, staging: Path,
                 select=None) -> list:
    """Write the shards (all, or those whose task index `select` accepts) into `staging`; their results."""
    base = _catalog_base(catalog)
    pixels = {key: value for key, value in pixels.items() if key != "duplicates"}  # the manifest's, not a task's
    common = {"staging": str(staging), "options": asdict(options), "base": base, "pixels": pixels,
              "class_index": {name: index for index, name in enumerate(class_names)}}
    tasks = [task for index, task in enumerate(_shard_tasks(frame, splits, options, common))
             if select is None or select(index)]
    results = []
    # Never more processes than shards to write or cores to run them (--workers 40 on 8 shards starts 8).
    processes = max(1, min(options.workers or os.cpu_count() or 1, len(tasks), os.cpu_count() or 1))
    with get_context("spawn").Pool(processes, initializer=ignore_interrupts) as pool, \
            progress(sum(len(task["rows"]) for task in tasks), "pack", "img") as bar:
        for result in pool.imap_unordered(_write_shard, tasks):
            results.append(result)
            bar.update(result["input"])
    return results


def ignore_interrupts() -> None:
    """Pool workers leave Ctrl-C to the parent, which cleans up and says so in one line (no traceback each)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def check_strict(manifest: dict, options: PackOptions) -> None:
    """Refuse a pack that would be unusable or wrong, before its manifest is written: skipped images under
    --strict, or no image at all packed in the labeled or test split (nothing to train or score on)."""
    wanted = ("labeled", "test") if options.test_fraction or options.fold else ("labeled",)
    empty = [split for split in wanted if manifest["classes"] and not manifest["num_samples"][split]]
    if empty:
        first = manifest["skipped"][0] if manifest["skipped"] else None
        reason = f"; first unreadable: {first['image_path']}: {first['reason']}" if first else ""
        raise UserError(f"no image could be packed into the {' and '.join(empty)} split(s) ({len(manifest['skipped'])} "
                        f"of {manifest['num_input']} unreadable{reason}): fix the images or the catalog; nothing was "
                        "written")
    if options.strict and manifest["skipped"]:
        first = manifest["skipped"][0]
        raise UserError(f"{len(manifest['skipped'])} unreadable image(s) with --strict, first "
                        f"{first['image_path']}: {first['reason']}; fix or remove them, "
                        "or drop --strict to skip and list them")


def pack(catalog: str | Path, out: str | Path, options: PackOptions = PackOptions(), overwrite: bool = False) -> dict:
    """Pack `catalog` into WebDataset shards under `out`; returns the manifest."""
    started = time.perf_counter()
    with OutputLock(out, "stellar-dist pack"):  # one writer per --out: a second pack exits at once
        return _pack(catalog, Path(out), options, overwrite, started)


def _pack(catalog, out: Path, options: PackOptions, overwrite: bool, started: float) -> dict:
    frame, class_names, splits, pixels = prepare(catalog, out, options, overwrite)
    real_out = out.resolve()  # a symlinked --out keeps pointing where it did: its target is replaced
    with sigterm_as_exit():
        staging = make_staging(real_out, out)
        try:
            results = write_shards(catalog, frame, splits, class_names, pixels, options, staging)
            elapsed = time.perf_counter() - started
            manifest = build_manifest(results, class_names, pixels, options, catalog, len(frame), elapsed)
            check_strict(manifest, options)
            (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
            finish_private(staging)  # the umask's permissions once finished: the cluster group can read the shards
            replace_dir(staging, real_out)
        except BaseException:
            discard_private(staging)
            raise
    return manifest


def make_staging(real_out: Path, out: Path) -> Path:
    try:
        real_out.parent.mkdir(parents=True, exist_ok=True)
        return private_folder(real_out.parent, real_out.name)  # 0700 while written; a killed pack's is swept
    except OSError as error:
        raise UserError(f"cannot write beside --out {out} ({error.strerror}): choose a writable folder") from None


def replace_dir(staging: Path, out: Path) -> None:
    """Move the finished staging folder to `out`. An old `out` (checked to hold only pack's own files) is set
    aside first and emptied file by file afterwards: anything that appeared in it meanwhile is kept."""
    old = None
    if out.exists():
        previous = owned_files(out) if any(out.iterdir()) else []
        if previous is None:
            raise UserError(f"output folder {out} changed while packing and now holds other files: nothing replaced; "
                            f"the new shards were discarded")
        old = private_folder(out.parent, f"old-{out.name}") / out.name
        out.rename(old)
    staging.rename(out)
    if old is not None:
        for child in old.iterdir():
            if child.name == MANIFEST_NAME or child.suffix == ".tar":
                child.unlink()
        try:
            old.rmdir()
            discard_private(old.parent)
        except OSError:
            kept = out.with_name(f".{out.name}.old-{os.getpid()}")
            old.rename(kept)
            discard_private(old.parent)
            print(f"warning: kept {kept}: it holds files pack did not write")


def build_manifest(results: list[dict], class_names: list[str], pixels: dict, options: PackOptions, catalog,
                   num_input: int, elapsed_s: float) -> dict:
    counts = {split: {name: 0 for name in class_names} for split in SPLITS}
    shards = {split: [] for split in SPLITS}
    skipped = []
    for result in sorted(results, key=lambda item: item["entry"]["name"]):
        shards[result["split"]].append(result["entry"])
        skipped.extend(result["skipped"])
        for name, count in result["classes"].items():
            counts[result["split"]][name] = counts[result["split"]].get(name, 0) + count
    return {
        "format_version": FORMAT_VERSION,
        "classes": class_names,
        "class_to_index": {name: index for index, name in enumerate(class_names)},
        "image_size": options.image_size,
        **{key: value for key, value in pixels.items() if key != "duplicates"},  # encoding, channels; FITS: bands
        # and the asinh stretch

        "preprocess": options.preprocess,
        "num_input": num_input,
        "num_samples": {split: sum(entry["num_samples"] for entry in shards[split]) for split in SPLITS},
        "counts": counts,
        "shards": shards,
        "skipped": sorted(skipped, key=lambda item: item["image_path"]),
        "duplicates": pixels.get("duplicates", []),  # rows repeating an image of an earlier row: not packed
        "arguments": {"catalog": str(catalog), **asdict(options)},
        "pack_seconds": round(elapsed_s, 3),
    }
