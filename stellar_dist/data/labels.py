"""New spectra joined onto a catalog by object id, without editing the catalog (`pack --labels FILE`).

    stellar-dist pack --catalog survey.fits --labels new_spectra.csv --out shards

FILE is a table (CSV, FITS, ECSV, parquet) with the catalog's id column (`--id-column`, default objid) and a class
column (`--label-column`, default Class; matched case-insensitively). Every id must be in the catalog, once; a
row whose catalog class differs from the file's is refused (which one is right is the user's call); an empty class
in FILE changes nothing. Ids are compared as text, so 19-digit ids stay exact.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..core.errors import PathNotFound, UserError
from .catalog import MISSING, TABLE_SUFFIXES, _read_csv, _read_table


def _column(table: pd.DataFrame, wanted: str, what: str, option: str, path: Path) -> str:
    found = [name for name in table.columns if name == wanted] or \
        [name for name in table.columns if name.lower() == wanted.lower()]
    if len(found) != 1:
        raise UserError(f"--labels {path} has {'no' if not found else 'several'} {what} column {wanted!r} (has: "
                        f"{', '.join(map(str, table.columns))}): name it with {option}")
    return found[0]


def read_labels(path: str | Path, id_column: str, label_column: str) -> dict[str, str]:
    """{id as text: class} of a labels table; empty classes left out."""
    path = Path(path)
    if not path.is_file():
        raise PathNotFound(f"--labels {path} does not exist: pass a table of id and class (CSV, FITS, parquet)")
    table = _read_table(path) if path.name.lower().endswith(TABLE_SUFFIXES) else _read_csv(path)
    table.columns = [str(name).strip() for name in table.columns]
    ids = table[_column(table, id_column, "id", "--id-column", path)].astype(str).str.strip()
    classes = table[_column(table, label_column, "class", "--label-column", path)].astype(str).str.strip()
    known = ~classes.isin(MISSING)
    if (ids[known] == "").any():
        raise UserError(f"--labels {path} line {int((ids == '').to_numpy().argmax()) + 2} has a class but no id: "
                        "fill it in or remove the row")
    repeated = ids[known][ids[known].duplicated()]
    if not repeated.empty:
        raise UserError(f"--labels {path} gives id {repeated.iloc[0]} more than once: keep one row per object")
    return dict(zip(ids[known], classes[known]))


def join_labels(frame: pd.DataFrame, path: str | Path, columns: dict[str, str]) -> pd.DataFrame:
    """The catalog with the classes of `path` filled in by id; refuses ids not in the catalog and conflicts."""
    labels = read_labels(path, columns["objid"], columns["Class"])
    if "objid" not in frame.columns:
        raise UserError(f"--labels needs the catalog's id column {columns['objid']!r}, which it lacks: name it "
                        "with --id-column")
    ids = pd.Series(["" if value is None else str(value) for value in frame["objid"]], index=frame.index)
    where = {value: index for index, value in ids.items() if value}
    missing = [value for value in labels if value not in where]
    if missing:
        raise UserError(f"{len(missing)} id(s) of --labels {path} are not in the catalog's {columns['objid']!r} "
                        f"column (first {missing[0]}): check the ids, or --id-column; nothing was written")
    frame = frame.copy()
    for value, name in labels.items():
        row = where[value]
        if frame.at[row, "Class"] not in ("", name):
            raise UserError(f"object {value} has class {frame.at[row, 'Class']!r} in the catalog and {name!r} in "
                            f"--labels {path}: correct one of them; nothing was written")
        frame.at[row, "Class"] = name
    return frame
