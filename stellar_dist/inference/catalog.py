"""Predict from Python: a catalog in, the same catalog out, with the predictions as new columns (as Zoobot's
`predict_on_catalog`).

    from astropy.table import Table
    from stellar_dist import predict_catalog

    table = predict_catalog("runs/demo", Table.read("cutouts.fits"), base_dir="cutouts/")

`catalog` is an astropy Table, a pandas DataFrame, or the path of a table (CSV, FITS, ECSV, parquet, VOTable);
an astropy Table comes back as a Table, anything else as a DataFrame. Every input row comes back, in input order,
with its own columns untouched, plus `predicted_class`, `p_<class>`, `max_probability`, `cluster`,
`cluster_distance`, `feature_distance` and `unlike_training` (models that carry a clustering), `low_confidence`,
`unusual`, and `rejected_reason` (empty
when the image was read; otherwise why not, and the prediction columns are missing values: masked in a Table, <NA>
/ NaN in a DataFrame). The columns are typed (text, float32, nullable integers and booleans), so the result writes
to FITS, parquet, ECSV or CSV as it is. When far more objects than the 1% expected lie beyond the training images'
99th-percentile feature distance, a warning says so (`warnings.warn`: a domain shift); when no image can be read,
an error says why (relative paths start at a catalog file's folder, else at `base_dir` or the working directory).
One process: a GPU when there is one. `stellar-dist predict` runs the same pipeline (pipeline.py).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from ..core.errors import PathNotFound, UserError
from .classify import shift_warning
from .pipeline import Predictor, to_astropy_columns


def _as_frame(catalog, image_column: str) -> tuple[pd.DataFrame, str, Path | None]:
    """(the catalog as a DataFrame, "table" or "frame": what to return, the folder of a catalog file)."""
    if isinstance(catalog, (str, Path)):
        path = Path(catalog)
        if not path.exists():
            raise PathNotFound(f"catalog {path} does not exist: pass a table file, an astropy Table or a DataFrame")
        if not path.is_file():
            raise UserError(f"catalog {path} is not a file: pass a table file, an astropy Table or a DataFrame")
        from ..data.catalog import TABLE_SUFFIXES, _read_csv

        if path.name.lower().endswith(TABLE_SUFFIXES):
            from astropy.table import Table

            table = Table.read(path)
            table.convert_bytestring_to_unicode()  # FITS text columns arrive as bytes
            return table.to_pandas(), "frame", path.parent
        return _read_csv(path), "frame", path.parent  # every cell as text: 19-digit ids stay exact
    if isinstance(catalog, pd.DataFrame):
        return catalog, "frame", None
    if hasattr(catalog, "colnames") and hasattr(catalog, "to_pandas"):  # astropy Table (imported only if given)
        column = _column(catalog.colnames, image_column)
        return pd.DataFrame({column: [_text(value) for value in catalog[column]]}), "table", None
    raise UserError(f"catalog of type {type(catalog).__name__}: pass an astropy Table, a pandas DataFrame or a path")


def _column(names, image_column: str) -> str:
    if image_column not in names:
        raise UserError(f"the catalog has no {image_column!r} column (has: {', '.join(map(str, names))}): "
                        "name the image column with image_column=")
    return image_column


def predictions(model, image_paths: list[str], *, batch_size: int = 256, workers: int = 0,
                unusual_below: float = 0.6, device: str | None = None) -> pd.DataFrame:
    """One row per image path, in order: the prediction columns (see the module's docstring)."""
    predictor = model if isinstance(model, Predictor) else Predictor.load(model, device)
    rows = [(index, (None, path, None)) for index, path in enumerate(image_paths)]
    frame = predictor.predict_rows(rows, batch_size=batch_size, workers=workers, unusual_below=unusual_below,
                                   identity=False)
    warning = shift_warning(*frame.attrs["far"])
    if warning:
        warnings.warn(warning, stacklevel=3)
    return frame


def predict_catalog(model, catalog, *, image_column: str = "image_path", base_dir: str | Path | None = None,
                    batch_size: int = 256, workers: int = 0, unusual_below: float = 0.6, device: str | None = None):
    """`catalog` with the model's predictions as new columns (see the module's docstring). `model`: a run folder,
    a checkpoint or a model folder; `base_dir`: where relative image paths start (default: a catalog file's folder,
    else the working directory); `workers`: processes preparing images (0: this one)."""
    frame, kind, folder = _as_frame(catalog, image_column)
    base = Path(base_dir) if base_dir is not None else (folder or Path.cwd())
    paths = [_text(path) for path in frame[_column(frame.columns, image_column)]]
    paths = [str(Path(path) if Path(path).is_absolute() else base / path) for path in paths]
    names = catalog.colnames if kind == "table" else list(frame.columns)
    predictor = Predictor.load(model, device)
    clash = [name for name in predictor.columns(identity=False) if name in names]
    if clash:
        raise UserError(f"the catalog already has column(s) {', '.join(clash)}: rename them before predicting")
    result = predictions(predictor, paths, batch_size=batch_size, workers=workers, unusual_below=unusual_below)
    if len(paths) and not result.attrs["far"][1]:
        raise UserError(f"none of the {len(paths)} images could be read; first: {paths[0]}: "
                        f"{result['rejected_reason'].iloc[0]} (relative paths start at {base}: pass base_dir=)")
    if kind == "table":
        output = catalog.copy(copy_data=False)
        for name, column in to_astropy_columns(result).items():
            output[name] = column
        return output
    return pd.concat([frame.reset_index(drop=True), result], axis=1).set_axis(frame.index, axis=0)


def _text(value) -> str:
    """A path cell as text: FITS string columns arrive as bytes."""
    return value.decode() if isinstance(value, bytes) else str(value)
