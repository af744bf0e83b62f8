"""predict's outputs, on rank 0: the table (CSV or parquet written chunk by chunk, FITS at the end; a finished file
or none, written under a temporary name and renamed when complete) and the embeddings; which
paths they may take (no input, one writer, only files predict wrote replaced without --overwrite)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from ..core.errors import UserError
from ..core.files import discard_private, private_folder
from ..core.outputs import check_paths, claim, follow_umask, take_files

FITS_KEYWORDS = {"model": "SDMODEL", "model_sha256": "SDSHA256", "model_commit": "SDCOMMIT", "classes": "SDCLASS",
                 "stellar_dist": "SDVERSN", "date": "SDDATE"}


def text_lengths(table, known: dict[str, int] | None = None) -> dict[str, int]:
    """The longest text of each string column of a pyarrow table (at least 1; `known`: lengths so far). astropy's
    `Table.read` of a parquet file sizes its text columns from "table::len::NAME" metadata; without it, it warns
    per column and fails on a missing value (a rejected row's predicted_class)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    lengths = dict(known or {})
    for field, column in zip(table.schema, table.columns):
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            longest = pc.max(pc.utf8_length(column)).as_py() if len(column) else None
            lengths[field.name] = max(lengths.get(field.name, 1), longest or 1)
    return lengths


def astropy_metadata(lengths: dict[str, int]) -> dict[bytes, bytes]:
    return {f"table::len::{name}".encode(): str(length).encode() for name, length in lengths.items()}


class Writer:
    """Rank 0's output, from the frames of pipeline.Predictor.rows_frame: CSV or parquet written chunk by chunk;
    FITS written at the end (an astropy table). Columns and types are pipeline.columns' (`columns`)."""

    def __init__(self, out: Path, columns: dict[str, str], provenance: dict | None = None):
        self.out, self.columns, self.kind = out, columns, out.suffix.lower().lstrip(".")
        self.provenance = provenance or {}  # model, its commit, classes, date: in the parquet metadata / FITS header
        if self.kind not in ("csv", "parquet", "fits"):
            raise UserError(f"--out {out} must end in .csv, .parquet or .fits")
        needed = {"parquet": "pyarrow", "fits": "astropy"}.get(self.kind)
        try:
            __import__(needed) if needed else None
        except ImportError:
            raise UserError(f"--out {out} needs {needed}: pip install {needed} (or write .csv)") from None
        self.staging = None  # a private folder beside --out, made at the first write (files.private_folder)
        self.handle, self.parquet, self.schema, self.held = None, None, None, []
        self.lengths: dict[str, int] = {}  # the longest text per parquet string column, for astropy's reader

    @property
    def temporary(self) -> Path:
        if self.staging is None:
            self.staging = private_folder(self.out.parent, self.out.name)
        return self.staging / self.out.name

    def write(self, frame) -> None:
        if self.kind == "csv":
            first = self.handle is None
            self.handle = self.handle or open(self.temporary, "w", newline="")
            # float32 columns need 7 significant digits, not 17; a missing value is an empty cell
            frame.to_csv(self.handle, header=first, index=False, float_format="%.7g")
        elif self.kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, schema=self.schema, preserve_index=False)
            if self.parquet is None:
                self.schema = table.schema.with_metadata({b"stellar_dist": json.dumps(self.provenance).encode()})
                table = table.replace_schema_metadata(self.schema.metadata)
                self.parquet = pq.ParquetWriter(self.temporary, self.schema)
            self.parquet.write_table(table)
            self.lengths = text_lengths(table, self.lengths)
        else:
            self.held.append(frame)

    def close(self) -> None:
        if self.kind == "fits":
            import pandas as pd
            from astropy.table import Table

            from .pipeline import to_astropy_columns

            frame = pd.concat(self.held, ignore_index=True) if self.held else \
                pd.DataFrame({name: pd.Series(dtype=kind) for name, kind in self.columns.items()})
            table = Table(to_astropy_columns(frame))
            for key, value in self.provenance.items():  # 8-character FITS keywords (long values: CONTINUE cards)
                table.meta[FITS_KEYWORDS.get(key, key[:8].upper())] = str(value)
            table.write(self.temporary, format="fits", overwrite=True)
        elif self.handle is not None:
            self.handle.close()
        elif self.parquet is not None:
            self.parquet.close()
            self._add_text_lengths()
        else:  # no row at all: the header / schema of an empty table
            import pandas as pd

            self.write(pd.DataFrame({name: pd.Series(dtype=kind) for name, kind in self.columns.items()}))
            self.close()
            return
        follow_umask(self.temporary)
        self.temporary.replace(self.out)  # a finished file or none
        discard_private(self.staging)

    def _add_text_lengths(self) -> None:
        """The lengths are known only after the last chunk and a parquet schema is written first: copy the row
        groups, one at a time, into a file whose schema carries them (a second pass over the file, not its rows in
        memory)."""
        import pyarrow.parquet as pq

        schema = self.schema.with_metadata({**self.schema.metadata, **astropy_metadata(self.lengths)})
        final = self.temporary.with_name(f"final-{self.temporary.name}")
        source = pq.ParquetFile(self.temporary)
        with pq.ParquetWriter(final, schema) as writer:
            for group in range(source.num_row_groups):
                writer.write_table(source.read_row_group(group).replace_schema_metadata(schema.metadata))
        final.replace(self.temporary)

    def discard(self) -> None:
        """Nothing of an unfinished or refused output stays behind."""
        for handle in (self.handle, self.parquet):
            with contextlib.suppress(Exception):
                handle.close() if handle is not None else None
        if self.staging is not None:
            discard_private(self.staging)


def output_paths(out: Path, embeddings: str | None) -> dict:
    return {"--out": out, "--embeddings": Path(embeddings) if embeddings else None}


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
