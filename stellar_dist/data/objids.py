"""Object ids (the catalog's `objid`, SDSS's 19-digit objID / specObjID): typed once for every output, carried
through training as 64-bit integers, read back as exact text.

pack records `objid_type` in the manifest (`id_type`): "int64" when every id is an integer that fits in 64 bits,
"string" otherwise, None without ids. predict then writes a 64-bit integer column to FITS and parquet. Evaluation
and clustering batches carry each sample's id as an integer (`integer_objid`), so predictions.csv and
assignments.csv are written from the gathered tensors without reading the shards again (eval_data.objid_texts).
"""

from __future__ import annotations

INT64_RANGE = (-(2**63), 2**63 - 1)
MISSING_OBJID = INT64_RANGE[0]  # the "objid" item of a sample without an integer id


def id_type(ids) -> str | None:
    """How object ids are written to FITS and parquet: "int64" when every id given is a decimal integer that fits
    in 64 bits (never float64: 19 digits are exact only as integers), else "string"; None when there are no ids.
    Ids are read as text (exact); this decides the output column's type."""
    present = [str(value).strip() for value in ids if value is not None and str(value).strip() not in ("", "<NA>")]
    if not present:
        return None
    try:
        return "int64" if all(INT64_RANGE[0] <= int(value, 10) <= INT64_RANGE[1] for value in present) else "string"
    except ValueError:
        return "string"


def integer_objid(record: dict) -> int:
    """A shard sample's objid as a 64-bit integer, else MISSING_OBJID (the sentinel itself is never an id)."""
    value = record.get("meta", {}).get("objid")
    try:
        number = int(str(value), 10) if value is not None else MISSING_OBJID
    except ValueError:
        return MISSING_OBJID
    return number if INT64_RANGE[0] < number <= INT64_RANGE[1] else MISSING_OBJID
