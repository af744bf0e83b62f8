"""predict's outputs, on rank 0: the table (CSV or parquet written chunk by chunk, FITS at the end; a finished file
or none, written under a temporary name and renamed when complete), the embeddings and the rejected list; which
paths they may take (no input, one writer, only files predict wrote replaced without --overwrite)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
from pathlib import Path

from .. import dist
from ..errors import UserError
from ..files import discard_private, private_folder
from ..outputs import atomic_file, check_paths, claim, follow_umask, release, take_files


FITS_KEYWORDS = {"model": "SDMODEL", "model_sha256": "SDSHA256", "model_commit": "SDCOMMIT", "classes": "SDCLASS",
                 "stellar_dist": "SDVERSN", "date": "SDDATE"}


class Writer:
    """Rank 0's output: CSV or parquet written chunk by chunk; FITS written at the end (astropy tables)."""

    def __init__(self, out: Path, classes: list[str], clusters: tuple[str, ...] = (), provenance: dict | None = None,
                 integer_ids: bool = False):
        self.out, self.classes, self.kind = out, classes, out.suffix.lower().lstrip(".")
        self.provenance = provenance or {}  # model, its commit, classes, date: in the parquet metadata / FITS header
        self.clusters = tuple(clusters)  # the clustering columns (classify.cluster_columns)
        self.integer_ids = integer_ids  # objid as a 64-bit integer column in parquet and FITS (CSV: text, exact)
        if self.kind not in ("csv", "parquet", "fits"):
            raise UserError(f"--out {out} must end in .csv, .parquet or .fits")
        needed = {"parquet": "pyarrow", "fits": "astropy"}.get(self.kind)
        try:
            __import__(needed) if needed else None
        except ImportError:
            raise UserError(f"--out {out} needs {needed}: pip install {needed} (or write .csv)") from None
        self.columns = ["row", "objid", "image_path", "predicted_class", *(f"p_{name}" for name in classes),
                        "max_probability", *self.clusters, "unusual"]
        self.staging = None  # a private folder beside --out, made at the first write (files.private_folder)
        self.handle, self.parquet, self.held = None, None, []

    @property
    def temporary(self) -> Path:
        if self.staging is None:
            self.staging = private_folder(self.out.parent, self.out.name)
        return self.staging / self.out.name

    def write(self, rows: list[dict]) -> None:
        if self.kind == "csv":
            if self.handle is None:
                self.handle = open(self.temporary, "w", newline="")
                self.csv = csv.DictWriter(self.handle, self.columns)
                self.csv.writeheader()
            self.csv.writerows(rows)
        elif self.kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = self._schema(pa).with_metadata({b"stellar_dist": json.dumps(self.provenance).encode()})
            table = pa.Table.from_pylist(self._typed(rows), schema=schema)
            self.parquet = self.parquet or pq.ParquetWriter(self.temporary, table.schema)
            self.parquet.write_table(table)
        else:
            self.held.extend(rows)

    def _schema(self, pa):
        return pa.schema([("row", pa.int64()), ("objid", pa.int64() if self.integer_ids else pa.string()),
                          ("image_path", pa.string()),
                          ("predicted_class", pa.string()), *((f"p_{name}", pa.float32()) for name in self.classes),
                          ("max_probability", pa.float32()),
                          *((name, pa.int32() if name == "cluster" else pa.float32()) for name in self.clusters),
                          ("unusual", pa.bool_())])

    def close(self) -> None:
        if self.kind == "fits":
            from astropy.table import Table

            table = self._fits_table(Table)
            for key, value in self.provenance.items():  # 8-character FITS keywords (long values: CONTINUE cards)
                table.meta[FITS_KEYWORDS.get(key, key[:8].upper())] = str(value)
            table.write(self.temporary, format="fits", overwrite=True)
        elif self.handle is not None:
            self.handle.close()
        elif self.parquet is not None:
            self.parquet.close()
        else:
            self.write([])
            self.close()
            return
        follow_umask(self.temporary)
        self.temporary.replace(self.out)  # a finished file or none
        discard_private(self.staging)

    def _typed(self, rows: list[dict]) -> list[dict]:
        return [row | {"objid": int(row["objid"]) if row["objid"] else None} for row in rows] \
            if self.integer_ids else rows

    def _fits_table(self, Table):
        """The held rows as an astropy table; integer ids as an int64 column (a missing id masked: TNULL)."""
        import numpy as np

        if not self.held:
            return Table(names=self.columns)
        columns = {column: [row.get(column) for row in self.held] for column in self.columns}
        if self.integer_ids:
            missing = np.array([value is None for value in columns["objid"]])
            values = np.array([0 if value is None else int(value) for value in columns["objid"]], dtype=np.int64)
            columns["objid"] = np.ma.masked_array(values, mask=missing) if missing.any() else values
        else:
            columns["objid"] = ["" if value is None else value for value in columns["objid"]]
        return Table([columns[column] for column in self.columns], names=self.columns)

    def discard(self) -> None:
        """Nothing of an unfinished or refused output stays behind."""
        for handle in (self.handle, self.parquet):
            with contextlib.suppress(Exception):
                handle.close() if handle is not None else None
        if self.staging is not None:
            discard_private(self.staging)


def output_paths(out: Path, embeddings: str | None) -> dict:
    return {"--out": out, "--embeddings": Path(embeddings) if embeddings else None,
            "the rejected list": rejected_path(out)}


def rejected_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.rejected.csv")


def claim_outputs(outputs: dict, model_folder: Path, source: Path, image_paths: list[str], overwrite: bool):
    """Rank 0, before anything is written: no output is an input (the catalog, its images, the model folder, the
    shards), one writer per output, and an existing file is replaced only when predict wrote it."""
    check_paths(outputs, {"--input": source, "--model": model_folder})
    names = {path.name for path in outputs.values() if path}  # only an image of the same name can be an output:
    targets = {os.path.realpath(path) for path in outputs.values() if path}  # no real path of every image needed
    clash = next((path for path in image_paths if os.path.basename(path) in names
                  and os.path.realpath(path) in targets), None)
    if clash:
        raise UserError(f"{clash} is both an input image and an output: choose an output path outside the inputs")
    return take_files(outputs, "predict", overwrite)


def drop_embeddings(features_file) -> None:
    if features_file is not None:
        discard_private(Path(features_file.filename).parent)


def finish_outputs(writer, features_file, embeddings: str | None) -> None:
    """Rank 0: the finished output (and embeddings) renamed into place and recorded as predict's own."""
    writer.close()
    claim(writer.out, "predict")
    if features_file is not None:
        features_file.flush()
        follow_umask(features_file.filename)
        Path(features_file.filename).replace(embeddings)
        discard_private(Path(features_file.filename).parent)
        claim(embeddings, "predict")


def gather_rejected(rejected: list, out: Path) -> list:
    """Every rank's rejected rows, written by rank 0 to OUT.rejected.csv (input order); an earlier list of
    predict's own is removed (a stale list would misreport this run), a file of the user's never."""
    rejected = dist.gather_objects(rejected)  # small: (row, objid, image path, reason)
    side = rejected_path(out)
    if dist.is_main():
        if rejected:
            with atomic_file(side) as temporary, open(temporary, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["row", "objid", "image_path", "reason"])
                writer.writerows(sorted(rejected))
            claim(side, "predict")
        else:
            release(side)
    return rejected
