"""The one prediction pipeline every way of predicting shares (`stellar-dist predict` to one file, its FOLDER/
parts, `predict_catalog` from Python): one setup, one column schema, one row builder.

    predictor = Predictor.load("runs/demo")                        # the model on its device, its description
    result = predictor.classify(rows, batch_size=256, workers=2)   # one chunk: this process's share of the rows
    frame = predictor.rows_frame(rows, result, unusual_below=0.6)  # every row, in order, typed by `columns`

`rows` are (input index, (objid or None, image path, payload or None)) as inputs.py yields them. Every input row
becomes one output row: a row whose image cannot be read keeps its place, with missing values (<NA> / NaN) in
the prediction columns and the reason in `rejected_reason` (empty for every read row).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..core.errors import UserError
from .classify import (
    CHUNK_ROWS,
    classify_rows,
    cluster_columns,
    far_rule,
    nearest_cluster,
    provenance,
    unusual_flags,
)
from .model_folder import find_model_folder, load_model

IDENTITY = ("row", "objid", "image_path")  # where a row came from: in predict's files, not in predict_catalog's


def columns(classes: list[str], clusters: tuple[str, ...], objid_type: str | None = None,
            identity: bool = True, far: bool = False, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The output columns and their pandas dtypes, in order (nullable types: a missing value is <NA>). The CSV,
    parquet and FITS writers, the parts and `predict_catalog` all take them from here. `far`: the model can tell
    an object unlike its training images (it carries a clustering: classify.far_rule); `extra`: an input table's
    other columns and their dtypes (inputs.typed_columns), carried after image_path."""
    table = {"row": "int64", "objid": "Int64" if objid_type == "int64" else "string", "image_path": "string",
             **(extra or {})} if identity else {}
    table |= {"predicted_class": "string", **{f"p_{name}": "float32" for name in classes},
              "max_probability": "float32"}
    table |= {name: "Int32" if name == "cluster" else "float32" for name in clusters}
    # two reasons to look twice, apart, and `unusual` for either
    table |= {"low_confidence": "boolean", **({"unlike_training": "boolean"} if far else {})}
    return table | {"unusual": "boolean", "rejected_reason": "string"}


@dataclass
class Chunk:
    """One chunk's results (on this process, or gathered from every rank): the read rows' input indices, their
    probabilities, clustering columns and features, and the unread rows with the reason."""

    kept: torch.Tensor
    probabilities: torch.Tensor
    clusters: dict
    features: torch.Tensor
    rejected: list


def extra_types(extra: pd.DataFrame | None) -> dict[str, str] | None:
    """{name: pandas dtype} of an input table's other columns (inputs.Inputs.extra), as `columns` takes them."""
    return None if extra is None else {str(name): str(kind) for name, kind in extra.dtypes.items()}


@dataclass
class Predictor:
    model: torch.nn.Module
    description: dict
    folder: Path
    device: torch.device

    @classmethod
    def load(cls, model_path, device: str | torch.device | None = None) -> "Predictor":
        """A run folder, a checkpoint or a model folder, moved anywhere; `device`: a GPU when there is one."""
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        folder = find_model_folder(str(model_path))
        model, description = load_model(folder, device)
        return cls(model, description, folder, device)

    @property
    def classes(self) -> list[str]:
        return self.description["classes"]

    def columns(self, objid_type: str | None = None, identity: bool = True, extra: dict[str, str] | None = None
                ) -> dict[str, str]:
        return columns(self.classes, cluster_columns(self.description), objid_type, identity,
                       far=far_rule(self.description)[0] is not None, extra=extra)

    def check_extra(self, extra, source) -> dict[str, str]:
        """A table's other columns and their dtypes, refused in one line where one is also a prediction column."""
        names = extra_types(extra) or {}
        clash = [name for name in names if name in self.columns()]
        if clash:
            raise UserError(f"--input {source} has column(s) {', '.join(clash)}, which predict writes: rename "
                            "them in the catalog")
        return names

    def provenance(self, model_sha256: str | None = None) -> dict:
        return provenance(self.folder, self.description, model_sha256)

    def classify(self, rows: list, *, batch_size: int, workers: int) -> Chunk:
        """Read, prepare and classify `rows` (DataLoader workers; 0: this process) and place each in the model's
        clustering."""
        kept, probabilities, features, rejected = classify_rows(self.model, rows, self.description, self.device,
                                                                batch_size, workers)
        clusters = nearest_cluster(features, self.description["cluster_tensors"]) \
            if cluster_columns(self.description) else {}
        return Chunk(kept, probabilities, clusters, features, rejected)

    def rows_frame(self, rows: list, chunk: Chunk, *, unusual_below: float, objid_type: str | None = None,
                   identity: bool = True, extra: pd.DataFrame | None = None) -> pd.DataFrame:
        """The one row builder: a DataFrame of `columns()`, one row per entry of `rows`, in their order.
        `frame.attrs["far"]`: (objects beyond the training images' 99th percentile, objects read), for
        classify.shift_warning. `extra`: a table's other columns, by input row (inputs.Inputs.extra)."""
        count, classes = len(rows), self.classes
        place = {index: position for position, (index, _) in enumerate(rows)}
        read = np.zeros(count, dtype=bool)
        places = np.array([place[index] for index in chunk.kept.tolist()], dtype=np.int64)
        read[places] = True
        probabilities = np.full((count, len(classes)), np.nan, dtype=np.float32)
        probabilities[places] = chunk.probabilities.float().cpu().numpy()
        cluster_values = {name: np.full(count, np.nan) for name in cluster_columns(self.description)}
        for name, value in chunk.clusters.items():
            cluster_values[name][places] = value.double().cpu().numpy()
        reasons = np.full(count, "", dtype=object)
        for index, reason in chunk.rejected:
            reasons[place[index]] = reason
        maximum = np.where(read, np.nan_to_num(probabilities, nan=-1.0).max(1, initial=-1.0), np.nan)
        low, beyond = unusual_flags(maximum, cluster_values, unusual_below, far_rule(self.description))
        best = np.nan_to_num(probabilities).argmax(1) if count else np.zeros(0, dtype=np.int64)
        table = {}
        if identity:
            schema = self.columns(objid_type)  # typed as they are built: a 19-digit id never passes through float64
            indices = [index for index, _ in rows]
            table = {"row": np.array(indices, dtype=np.int64),
                     "objid": pd.array(_ids([row[0] for _, row in rows], objid_type), dtype=schema["objid"]),
                     "image_path": pd.array([row[1] for _, row in rows], dtype="string")}
            if extra is not None:
                table |= {str(name): extra[name].iloc[indices].array for name in extra.columns}
        table |= {"predicted_class": np.where(read, np.array(classes, dtype=object)[best] if count else [], None),
                  **{f"p_{name}": probabilities[:, column] for column, name in enumerate(classes)},
                  "max_probability": maximum, **cluster_values,
                  "low_confidence": np.where(read, low, None), "unlike_training": np.where(read, beyond, None),
                  "unusual": np.where(read, low | beyond, None), "rejected_reason": reasons}
        schema = self.columns(objid_type, identity, extra_types(extra))
        frame = pd.DataFrame({name: table[name] for name in schema}).astype(schema)
        frame.attrs["far"] = (int((beyond & read).sum()), int(read.sum()))
        return frame

    def predict_rows(self, rows: list, *, batch_size: int, workers: int, unusual_below: float,
                     objid_type: str | None = None, identity: bool = True, extra=None) -> pd.DataFrame:
        """Every row in this process, chunk by chunk (memory flat in the number of rows): the frame of all."""
        frames = [self.rows_frame(rows[start:start + CHUNK_ROWS],
                                  self.classify(rows[start:start + CHUNK_ROWS], batch_size=batch_size,
                                                workers=workers),
                                  unusual_below=unusual_below, objid_type=objid_type, identity=identity,
                                  extra=extra)
                  for start in range(0, len(rows), CHUNK_ROWS)]
        if not frames:
            names = () if extra is None else tuple(map(str, extra.columns))
            return pd.DataFrame({name: pd.Series(dtype=kind)
                                 for name, kind in self.columns(objid_type, identity, names).items()})
        frame = pd.concat(frames, ignore_index=True)
        frame.attrs["far"] = tuple(int(sum(part.attrs["far"][i] for part in frames)) for i in range(2))
        return frame


def _ids(ids: list, objid_type: str | None) -> list:
    """objid cells as the schema types them: 64-bit integers (SDSS's 19-digit ids stay exact) or text."""
    if objid_type == "int64":
        return [int(objid) if objid not in (None, "") else None for objid in ids]
    return [None if objid in (None, "") else str(objid) for objid in ids]


def to_astropy_columns(frame: pd.DataFrame) -> dict:
    """The frame's columns as astropy columns that FITS, parquet and ECSV all write: text as unicode, a missing
    value masked (TNULL in FITS), never a Python-object column."""
    from astropy.table import Column, MaskedColumn

    result = {}
    for name in frame.columns:
        series = frame[name]
        missing = series.isna().to_numpy()
        kind = str(series.dtype)
        if kind in ("string", "str", "object"):
            values = series.fillna("").astype(str).to_numpy(dtype=str)
        elif kind == "boolean":
            values = series.fillna(False).to_numpy(dtype=bool)
        elif kind in ("Int64", "Int32"):
            values = series.fillna(0).to_numpy(dtype=np.int64 if kind == "Int64" else np.int32)
        elif kind in ("Float64", "Float32"):  # a carried catalog column: missing is NaN, as float columns are
            values, missing = series.to_numpy(dtype=kind.lower(), na_value=np.nan), np.zeros(len(series), bool)
        else:
            values = series.to_numpy()
        result[name] = MaskedColumn(values, mask=missing) if missing.any() and kind not in ("float32", "float64") \
            else Column(values)
    return result
