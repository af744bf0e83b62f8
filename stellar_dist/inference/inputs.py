"""What predict reads: rows of a CSV, a folder of images or shards, each image prepared as the model saw it in
training (from the model's config.json), and a model/input mismatch named before any row is read."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..core.errors import UserError
from ..data.bands import is_fits, read_cutout, resize_cutout
from ..data.catalog import IMAGE_SUFFIXES
from ..data.streams import ItemMaker


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


@dataclass
class Inputs:
    """What predict reads: the number of rows; a generator of (objid or None, image path or shard member name,
    payload or None); the image paths read (outputs must not be one of them); the objid column's type in FITS and
    parquet outputs ("int64", "string" or None; data/objids.py); a table's other columns (as text, one row per
    input row; None for folders and shards), carried into the output."""

    total: int
    rows: Iterator
    image_paths: list[str]
    objid_type: str | None
    extra: pd.DataFrame | None = None


def input_rows(source: Path, fits: bool = False, needed=None, path_column: str = "image_path",
               id_column: str = "objid") -> Inputs:
    """The rows of `source` (see Inputs). A folder is searched for the files the model reads: FITS cutouts
    (`fits`) or 8-bit images. A shard member's payload is its bytes (N-band) or (encoding, bytes) for 8-bit
    shards. `needed(start, stop)`: whether this process needs any of the rows [start, stop); a shard none of whose
    rows is needed is not read (its rows come as None): ranks sharing a partitioned predict each read only the
    shards of their own parts. A table's image and id columns are `path_column` and `id_column` (matched without
    regard to case when the exact name is absent: SDSS's objID is an objid)."""
    if (source / "manifest.json").is_file():
        from ..data.manifest import load_manifest

        manifest = load_manifest(source)
        entries = [entry for split in ("labeled", "unlabeled", "test") for entry in manifest["shards"][split]
                   if entry["num_samples"]]  # the order of streams.shard_paths
        return Inputs(sum(manifest["num_samples"].values()), _from_shards(source, entries, manifest["encoding"],
                                                                          needed),
                      [], manifest.get("objid_type", "string"))  # packed before pack recorded it: text (exact)
    if source.is_dir():
        wanted = is_fits if fits else (lambda path: path.suffix.lower() in IMAGE_SUFFIXES)
        images = sorted(path for path in source.rglob("*") if wanted(path)
                        and not any(part.startswith(".") for part in path.relative_to(source).parts))
        if not images:
            kind = "FITS cutouts" if fits else f"8-bit images ({', '.join(sorted(IMAGE_SUFFIXES))})"
            raise UserError(f"--input {source} holds no {kind}, the kind of image this model reads: pass a folder "
                            "of them, a CSV or shards")
        # <objid>.jpg (as SkyServer cutouts are often saved): the file name is the object's id
        ids = [path.stem if path.stem.lstrip("-").isdigit() else None for path in images]
        from ..data.objids import id_type

        return Inputs(len(images), ((objid, str(path), None) for objid, path in zip(ids, images)),
                      [str(path) for path in images], id_type(ids))
    return _from_table(source, fits, path_column, id_column)


def _column(frame: pd.DataFrame, name: str, option: str, source: Path, required: bool) -> str | None:
    if name in frame.columns:
        return name
    folded = [column for column in frame.columns if str(column).lower() == name.lower()]
    if len(folded) == 1:
        return folded[0]
    if required:
        raise UserError(f"--input {source} has no {name} column (has: {', '.join(map(str, frame.columns))}): name "
                        f"the column with {option}")
    return None


def _from_table(source: Path, fits: bool, path_column: str, id_column: str) -> Inputs:
    from ..data.catalog import TABLE_SUFFIXES, _read_csv, _read_table
    from ..data.objids import id_type

    table = source.name.lower().endswith(TABLE_SUFFIXES)
    if source.suffix.lower() != ".csv" and not table:
        raise UserError(f"--input {source} is neither a table (CSV, FITS, ECSV, parquet, VOTable), a folder of "
                        "images nor a shards folder")
    # every cell as text (ids exact): an empty, malformed or non-UTF-8 file is one line; tables as pack reads them
    frame = _read_table(source) if table else _read_csv(source)
    path_name = _column(frame, path_column, "--path-column", source, required=True)
    id_name = _column(frame, id_column, "--id-column", source, required=id_column != "objid")
    if frame.empty:
        raise UserError(f"--input {source} has no rows: add the objects to classify")
    ids = frame[id_name] if id_name else [None] * len(frame)
    paths = [str(Path(path) if Path(path).is_absolute() else source.parent / path) for path in frame[path_name]]
    first = paths[0]
    if is_fits(first) != fits:
        raise UserError(f"--input {source} lists {'FITS cutouts' if is_fits(first) else '8-bit images'} "
                        f"(first {first}), but the model was trained on {'FITS cutouts' if fits else '8-bit images'}"
                        ": classify them with a model trained on the same kind of image")
    extra = frame.drop(columns=[name for name in (path_name, id_name) if name]).reset_index(drop=True)
    return Inputs(len(frame), ((objid or None, path, None) for objid, path in zip(ids, paths)), paths,
                  id_type(ids) if id_name else None, typed_columns(extra))


def typed_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """A table's other columns (read as text) with the type their cells share, as astropy reads a CSV: whole numbers
    in 64 bits as Int64 (a 19-digit specObjID stays exact), other numbers as Float64 (ra, dec, z), anything else
    as text; an empty cell is a missing value."""
    typed = {}
    for name in frame.columns:
        text = frame[name].astype("string").str.strip().replace("", pd.NA)
        present = text.dropna()
        typed[name] = text
        if present.empty:
            continue
        if present.str.fullmatch(r"[+-]?\d{1,19}").all():
            numbers = [int(value) for value in present]
            if all(-2**63 <= number < 2**63 for number in numbers):
                typed[name] = pd.array([None if value is pd.NA else int(value) for value in text], dtype="Int64")
            continue
        numbers = pd.to_numeric(present, errors="coerce")
        if numbers.notna().all():
            typed[name] = pd.to_numeric(text, errors="coerce").astype("Float64")
    return pd.DataFrame(typed, index=frame.index)


def _from_shards(source: Path, entries: list[dict], encoding: str, needed):
    import json

    from ..data.streams import iter_samples

    start = 0
    for entry in entries:
        stop = start + entry["num_samples"]
        if needed is not None and not needed(start, stop):
            yield from (None for _ in range(start, stop))
        else:
            for raw in iter_samples([str(source / entry["name"])]):
                record = json.loads(raw["json"])
                objid = record.get("meta", {}).get("objid")
                payload = raw.get(encoding) if encoding == "npy" else (encoding, raw.get(encoding))
                yield (None if objid is None else str(objid)), record.get("source", raw["__key__"]), payload
        start = stop


def prepare(row: tuple, maker: ItemMaker, description: dict) -> tuple[torch.Tensor | None, str | None]:
    """The image as the model saw it in training, or (None, the reason it cannot be read). Files are cropped or
    resized as pack does (data/images.py, data/bands.py); every image is then read and stretched by the data
    code training used (`ItemMaker` of the model's description: the same reader, stretch and grayscale)."""
    from ..data.images import encode, preprocess_image

    _, path, payload = row
    try:
        if description["encoding"] == "npy":
            if payload is None:
                cube = resize_cutout(read_cutout(path, tuple(description["bands"])), description["image_size"],
                                     description["preprocess"])
                return maker.finish(maker.flux(np.asarray(cube, dtype=np.float32))), None
            return maker.finish(maker.decode({"npy": payload})), None
        if payload is None:
            image = preprocess_image(path, description["image_size"], description["preprocess"])
            # JPEG shards: the same compression as in training; otherwise the pixels as they are (lossless)
            encoding = "jpg" if description["encoding"] == "jpg" else "u8"
            payload = (encoding, encode(image.convert("RGB"), encoding))
        encoding, data = payload  # a shard member, in its shards' own 8-bit encoding
        return maker.finish(maker.decode({encoding: data})), None
    except (OSError, ValueError, TypeError, EOFError, SyntaxError, KeyError, Image.DecompressionBombError,
            UserError) as error:
        return None, f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"


class PreparedRows(torch.utils.data.Dataset):
    """One chunk's rows, prepared in DataLoader workers: (row index, image tensor or None, reason or None)."""

    def __init__(self, rows: list[tuple[int, tuple]], description: dict):
        self.rows, self.description = rows, description
        self.maker = ItemMaker.for_shards("plain", description, bool(description.get("grayscale")))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, position: int):
        index, row = self.rows[position]
        return (index, *prepare(row, self.maker, self.description))
