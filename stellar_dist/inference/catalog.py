"""Predict from Python: a catalog in, the same catalog out, with the predictions as new columns (as Zoobot's
`predict_on_catalog`).

    from astropy.table import Table
    from stellar_dist import predict_catalog

    table = predict_catalog("runs/demo", Table.read("cutouts.fits"), base_dir="cutouts/")

`catalog` is an astropy Table, a pandas DataFrame, or the path of a table (CSV, FITS, ECSV, parquet, VOTable);
an astropy Table comes back as a Table, anything else as a DataFrame. Every input row comes back, in input order,
with its own columns untouched, plus `predicted_class`, `p_<class>`, `max_probability`, `cluster`,
`cluster_distance` and `feature_distance` (models that carry a clustering), `unusual`, and `rejected_reason` (empty
when the image was read; otherwise why not, and the prediction columns are empty). When far more objects than the
1% expected lie beyond the training images' 99th-percentile feature distance, a warning says so (a domain shift). One process: a GPU when there is one.
`stellar-dist predict` shares the same image preparation and classification (classify.classify_rows).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import torch

from ..errors import UserError
from .classify import predictions_of_rows, shift_warning
from .model_folder import find_model_folder, load_model

def _as_frame(catalog, image_column: str) -> tuple[pd.DataFrame, str, Path | None]:
    """(the catalog as a DataFrame, "table" or "frame": what to return, the folder of a catalog file)."""
    if isinstance(catalog, (str, Path)):
        path = Path(catalog)
        if not path.is_file():
            raise UserError(f"catalog {path} is not a file: pass a table file, an astropy Table or a DataFrame")
        from ..data.catalog import TABLE_SUFFIXES, _read_csv

        if path.name.lower().endswith(TABLE_SUFFIXES):
            from astropy.table import Table

            return Table.read(path).to_pandas(), "frame", path.parent
        return _read_csv(path), "frame", path.parent  # every cell as text: 19-digit ids stay exact
    if isinstance(catalog, pd.DataFrame):
        return catalog, "frame", None
    if hasattr(catalog, "colnames") and hasattr(catalog, "to_pandas"):  # astropy Table (imported only if given)
        column = _column(catalog.colnames, image_column)
        return pd.DataFrame({column: [str(value) for value in catalog[column]]}), "table", None
    raise UserError(f"catalog of type {type(catalog).__name__}: pass an astropy Table, a pandas DataFrame or a path")


def _column(names, image_column: str) -> str:
    if image_column not in names:
        raise UserError(f"the catalog has no {image_column!r} column (has: {', '.join(map(str, names))}): "
                        "name the image column with image_column=")
    return image_column


def predictions(model_path, image_paths: list[str], *, batch_size: int = 256, workers: int = 0,
                unusual_below: float = 0.6, device: str | None = None) -> pd.DataFrame:
    """One row per image path, in order: the prediction columns (see the module's docstring)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, description = load_model(find_model_folder(str(model_path)), device)
    rows = [(index, (None, path, None)) for index, path in enumerate(image_paths)]
    frame = predictions_of_rows(model, description, rows, device, batch_size=batch_size, workers=workers,
                                unusual_below=unusual_below)
    warning = shift_warning(*frame.attrs["far"])
    if warning:
        print(warning, file=sys.stderr)
    return frame


def predict_catalog(model, catalog, *, image_column: str = "image_path", base_dir: str | Path | None = None,
                    batch_size: int = 256, workers: int = 0, unusual_below: float = 0.6, device: str | None = None):
    """`catalog` with the model's predictions as new columns (see the module's docstring). `model`: a run folder,
    a checkpoint or a model folder; `base_dir`: where relative image paths start (default: a catalog file's folder,
    else the working directory); `workers`: processes preparing images (0: this one)."""
    frame, kind, folder = _as_frame(catalog, image_column)
    paths = frame[_column(frame.columns, image_column)]
    base = Path(base_dir) if base_dir is not None else (folder or Path.cwd())
    paths = [str(Path(str(path)) if Path(str(path)).is_absolute() else base / str(path)) for path in paths]
    result = predictions(model, paths, batch_size=batch_size, workers=workers, unusual_below=unusual_below,
                         device=device)
    names = catalog.colnames if kind == "table" else list(frame.columns)
    clash = [name for name in result.columns if name in names]
    if clash:
        raise UserError(f"the catalog already has column(s) {', '.join(clash)}: rename them before predicting")
    if kind == "table":
        output = catalog.copy(copy_data=False)
        for name in result.columns:
            output[name] = result[name].to_numpy()
        return output
    return pd.concat([frame.reset_index(drop=True), result], axis=1).set_axis(frame.index, axis=0)
