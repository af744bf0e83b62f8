"""Reading a user's catalog (CSV or folder-per-class) and splitting it into labeled / unlabeled / test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..core.errors import PathNotFound, UserError
from ..core.files import check_regular

REQUIRED_COLUMNS = ("image_path", "Class")
TABLE_SUFFIXES = (".fits", ".fit", ".fits.gz", ".ecsv", ".parquet", ".pq", ".vot", ".xml", ".hdf5")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}
SPLITS = ("labeled", "unlabeled", "test")
# Cells that mean "no value" (pandas' defaults minus the ambiguous ones): an unknown Class, a missing number.
MISSING = {"", "NA", "N/A", "n/a", "NaN", "nan", "-nan", "NULL", "null", "None", "<NA>", "#N/A"}


def read_catalog(source: str | Path, columns: dict[str, str] | None = None) -> pd.DataFrame:
    """Load a catalog as a DataFrame with absolute `image_path`, `Class` and the user's other columns.

    `source` is a table (CSV; or FITS, ECSV, parquet, VOTable read with astropy; paths relative to its folder) or a
    folder holding one sub-folder of images per class. `columns`: {our name: the table's name} for image_path,
    Class and objid (pack --path-column, --label-column, --id-column), matched case-insensitively when unique.
    """
    source = Path(source)
    if not source.exists():
        raise PathNotFound(f"catalog {source} does not exist: pass a CSV file or a folder with one sub-folder per class")
    if source.is_dir():
        frame = _read_folder(source)
    else:
        table = _read_table(source) if source.name.lower().endswith(TABLE_SUFFIXES) else _read_csv(source)
        frame = _typed(_renamed(table, columns or {}, source), source, columns or {})
    if frame.empty:
        raise UserError(f"catalog {source} holds no samples: add rows (or images) before packing")
    frame["image_path"] = frame["image_path"].astype(str)
    # An empty Class means "class unknown": such rows can only go to the unlabeled split.
    frame["Class"] = frame["Class"].fillna("").astype(str).str.strip()
    frame.loc[frame["Class"].isin(MISSING), "Class"] = ""
    base = source if source.is_dir() else source.parent
    frame["image_path"] = [str(path if Path(path).is_absolute() else (base / path)) for path in frame["image_path"]]
    _reject_lookalike_classes(frame["Class"], source)
    _reject_duplicates(frame, source, columns or {})
    return frame.reset_index(drop=True)


def _renamed(frame: pd.DataFrame, columns: dict[str, str], source: Path) -> pd.DataFrame:
    """The user's column names mapped to ours; a name matches exactly, else case-insensitively if only one does."""
    frame.columns = [str(column).strip() for column in frame.columns]
    renames = {}
    for ours, theirs in columns.items():
        if theirs == ours and ours in frame.columns:
            continue
        found = [column for column in frame.columns if column == theirs] or \
            [column for column in frame.columns if column.lower() == theirs.lower()]
        if len(found) > 1:
            raise UserError(f"catalog {source} has several columns named {theirs!r} apart from case "
                            f"({', '.join(found)}): name one exactly")
        if found and found[0] != ours:
            if ours in frame.columns:
                option = {"image_path": "--path-column", "Class": "--label-column"}.get(ours, "--id-column")
                raise UserError(f"catalog {source} has both {found[0]!r} and {ours!r}: rename or drop {ours!r}, "
                                f"or name the column you want with {option}")
            renames[found[0]] = ours
    return frame.rename(columns=renames)


def _check_regular(path: Path) -> None:
    try:
        check_regular(path)  # a FIFO would block the read forever, a device never end
    except ValueError as error:
        raise UserError(f"catalog {error}: pass a CSV, FITS, ECSV or parquet file") from None


def _read_csv(path: Path) -> pd.DataFrame:
    """Every cell is read as text first, then each column gets the narrowest exact type (see `_typed_column`):
    pandas' own inference turns a 19-digit id column with one empty cell into float64 and loses digits."""
    _check_regular(path)
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise UserError(f"catalog {path} is empty: it needs a header with columns image_path,Class") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise UserError(f"catalog {path} is not a readable CSV ({str(error).splitlines()[0]}): fix the file") from None


def _read_table(path: Path) -> pd.DataFrame:
    """A FITS / ECSV / parquet / VOTable catalog through astropy, as text cells like a CSV (integers exact,
    masked cells empty). Array-valued columns (e.g. magnitudes in 5 bands) become text lists in `meta`."""
    import warnings

    from astropy.table import Table

    _check_regular(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unit and header warnings say nothing about the rows
            table = Table.read(path)
    except Exception as error:  # noqa: BLE001  (astropy raises OSError, ValueError, TypeError, KeyError ...)
        raise UserError(f"catalog {path} is not a readable table ({type(error).__name__}: "
                        f"{str(error).splitlines()[0][:200]}): write it as CSV, FITS, ECSV or parquet") from None
    columns = {}
    for name in table.colnames:
        column = table[name]
        mask = np.asarray(getattr(column, "mask", np.zeros(len(column), dtype=bool)))
        mask = mask.reshape(len(column), -1).any(axis=1) if mask.ndim > 1 else mask
        columns[str(name)] = ["" if missing else _text(value) for value, missing in zip(column.tolist(), mask)]
    return pd.DataFrame(columns, dtype=str) if columns else pd.DataFrame()


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").strip()
    return str(value).strip()


def _typed(frame: pd.DataFrame, path: Path, columns: dict[str, str]) -> pd.DataFrame:
    """Check a table read as text (required columns, unique names, no empty image_path), then type its columns.
    Errors name the user's columns (pack --path-column / --label-column / --id-column), not ours. A table without
    a class column is a catalog of unlabeled objects (pack then packs for `stellar-dist select`)."""
    frame.columns = [str(column).strip() for column in frame.columns]
    kind = "CSV" if _is_csv(path) else "table"
    theirs = [columns.get(name, name) if name in REQUIRED_COLUMNS + ("objid",) else name for name in frame.columns]
    if "image_path" not in frame.columns:
        raise UserError(f"catalog {path} has no column {columns.get('image_path', 'image_path')!r} of image paths "
                        f"(has: {', '.join(theirs)}): name it with --path-column (paths absolute or "
                        f"relative to the {kind}'s folder)")
    if "Class" not in frame.columns:
        frame["Class"] = ""
    if frame.columns.duplicated().any():
        raise UserError(f"catalog {path} repeats column {frame.columns[frame.columns.duplicated()][0]!r}: "
                        "give every column its own name")
    blank = frame["image_path"].str.strip() == ""
    if blank.any():
        row = int(np.flatnonzero(blank.to_numpy())[0]) + (2 if kind == "CSV" else 1)
        raise UserError(f"catalog {path} {'line' if kind == 'CSV' else 'row'} {row} has an empty "
                        f"{columns.get('image_path', 'image_path')!r}: fill it in or remove the row")
    for column in frame.columns:
        if column not in REQUIRED_COLUMNS:
            frame[column] = _typed_column(frame[column])
    return frame


def _is_csv(path: Path) -> bool:
    return not path.name.lower().endswith(TABLE_SUFFIXES)


def _typed_column(text: pd.Series) -> pd.Series:
    """Integers stay exact Python ints (any width), other numbers become float, anything else stays text;
    empty cells become None."""
    values = text.str.strip().where(~text.str.strip().isin(MISSING), "")
    present = values[values != ""]
    if present.str.fullmatch(r"[+-]?[0-9]+").all():
        return pd.Series([int(value) if value else None for value in values], index=text.index, dtype=object)
    numbers = pd.to_numeric(present, errors="coerce")
    if numbers.notna().all():
        return pd.Series([float(value) if value else None for value in values], index=text.index, dtype=object)
    return pd.Series([value if value else None for value in text.str.strip()], index=text.index, dtype=object)


def _read_folder(folder: Path) -> pd.DataFrame:
    """One sub-folder per class; hidden folders and files (.ipynb_checkpoints, .DS_Store) are not data."""
    rows = []
    for class_dir in sorted(child for child in folder.iterdir() if child.is_dir() and not child.name.startswith(".")):
        for image in sorted(class_dir.iterdir()):
            if image.suffix.lower() in IMAGE_SUFFIXES and not image.name.startswith("."):
                rows.append({"image_path": str(image.relative_to(folder)), "Class": class_dir.name})
    return pd.DataFrame(rows, columns=list(REQUIRED_COLUMNS))


def _reject_lookalike_classes(classes: pd.Series, source: Path) -> None:
    """'Star', 'STAR' and 'S TAR' are one class misspelt, not three: refuse rather than train on the split."""
    seen: dict[str, str] = {}
    for name in sorted(set(classes) - {""}):
        key = "".join(name.split()).casefold()
        if key in seen:
            raise UserError(f"catalog {source} has classes {seen[key]!r} and {name!r} that differ only by case or "
                            "spaces: spell each class one way")
        seen[key] = name


def find_duplicates(frame: pd.DataFrame) -> tuple[np.ndarray, list[dict]]:
    """Rows whose image is one already listed: the same file under another path (relative and absolute, through
    `..` or a link) or the same bytes in another file. The first row of each image is kept; the others are
    returned (mask, and a list naming each and the row it repeats) and never packed, so one image can never sit
    in two splits. Files are hashed only when another file has the same size. Rows of one image with two
    different classes are refused: which label is right is the user's call."""
    import hashlib
    import os
    from concurrent.futures import ThreadPoolExecutor

    paths = frame["image_path"].tolist()
    real = [os.path.realpath(path) if "{band}" not in path else path for path in paths]
    sizes = []
    for path in real:
        try:
            sizes.append(os.stat(path).st_size if "{band}" not in path else -1)
        except OSError:
            sizes.append(-1)  # unreadable: pack lists it with the reason
    counts = pd.Series(sizes).value_counts()
    to_hash = [index for index, size in enumerate(sizes) if size >= 0 and counts[size] > 1]

    def digest(index: int) -> str:
        with open(real[index], "rb") as handle:
            return hashlib.blake2b(handle.read(), digest_size=16).hexdigest()

    with ThreadPoolExecutor(8) as pool:
        hashes = dict(zip(to_hash, pool.map(digest, to_hash)))
    first: dict[str, int] = {}
    exclude, duplicates = np.zeros(len(frame), dtype=bool), []
    for index in range(len(frame)):
        keys = [("file", real[index])] + ([("content", hashes[index])] if index in hashes else [])
        seen = next((first[key] for key in map(str, keys) if key in first), None)
        if seen is None:
            first.update({key: index for key in map(str, keys)})
            continue
        classes = {frame["Class"].iat[seen], frame["Class"].iat[index]} - {""}
        if len(classes) > 1:
            raise UserError(f"{paths[index]} is the same image as {paths[seen]} (catalog rows {seen + 2} and "
                            f"{index + 2}) with two classes, {' and '.join(sorted(classes))}: keep one row")
        exclude[index] = True
        how = "the same file" if real[index] == real[seen] else "the same bytes"
        duplicates.append({"image_path": paths[index], "duplicate_of": paths[seen], "reason": how})
    return exclude, duplicates


def _reject_duplicates(frame: pd.DataFrame, source: Path, columns: dict[str, str]) -> None:
    for column in ("image_path", "objid"):
        if column not in frame.columns:
            continue
        values = frame[column].dropna()
        duplicated = values[values.duplicated()]
        if not duplicated.empty:
            raise UserError(
                f"catalog {source} has {len(duplicated)} duplicate {columns.get(column, column)!r} value(s), first "
                f"{duplicated.iloc[0]}: "
                "each sample must appear once; remove the duplicates"
            )
