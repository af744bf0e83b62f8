"""predict's output table, on rank 0: CSV or parquet written chunk by chunk, FITS at the end; a finished file
or none (written under a temporary name, renamed when complete)."""

from __future__ import annotations

import contextlib
import csv
import os
from pathlib import Path

from ..errors import UserError
from ..outputs import follow_umask


class Writer:
    """Rank 0's output: CSV or parquet written chunk by chunk; FITS written at the end (astropy tables)."""

    def __init__(self, out: Path, classes: list[str], clusters: bool = False):
        self.out, self.classes, self.kind = out, classes, out.suffix.lower().lstrip(".")
        self.clusters = clusters
        if self.kind not in ("csv", "parquet", "fits"):
            raise UserError(f"--out {out} must end in .csv, .parquet or .fits")
        needed = {"parquet": "pyarrow", "fits": "astropy"}.get(self.kind)
        try:
            __import__(needed) if needed else None
        except ImportError:
            raise UserError(f"--out {out} needs {needed}: pip install {needed} (or write .csv)") from None
        self.columns = ["row", "objid", "image_path", "predicted_class", *(f"p_{name}" for name in classes),
                        "max_probability", *(("cluster", "cluster_distance") if clusters else ()), "unusual"]
        self.temporary = out.with_name(f".{out.name}.tmp-{os.getpid()}")  # unique to this process
        self.handle, self.parquet, self.held = None, None, []

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

            table = pa.Table.from_pylist(rows, schema=self._schema(pa))
            self.parquet = self.parquet or pq.ParquetWriter(self.temporary, table.schema)
            self.parquet.write_table(table)
        else:
            self.held.extend(rows)

    def _schema(self, pa):
        return pa.schema([("row", pa.int64()), ("objid", pa.string()), ("image_path", pa.string()),
                          ("predicted_class", pa.string()), *((f"p_{name}", pa.float32()) for name in self.classes),
                          ("max_probability", pa.float32()),
                          *((("cluster", pa.int32()), ("cluster_distance", pa.float32())) if self.clusters else ()),
                          ("unusual", pa.bool_())])

    def close(self) -> None:
        if self.kind == "fits":
            from astropy.table import Table

            table = Table(rows=[[row[column] if row[column] is not None else "" for column in self.columns]
                                for row in self.held], names=self.columns) if self.held else Table(names=self.columns)
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

    def discard(self) -> None:
        """Nothing of an unfinished or refused output stays behind."""
        for handle in (self.handle, self.parquet):
            with contextlib.suppress(Exception):
                handle.close() if handle is not None else None
        with contextlib.suppress(OSError):
            self.temporary.unlink()
