"""Object ids (the catalog's `objid`, SDSS's 19-digit objID / specObjID): typed once for every output, carried
through training as 64-bit integers, read back as exact text.

pack records `objid_type` in the manifest (`id_type`): "int64" when every id is an integer that fits in 64 bits,
"string" otherwise, None without ids. predict then writes a 64-bit integer column to FITS and parquet. Evaluation
and clustering batches carry each sample's id as an integer (`integer_objid`), so predictions.csv and
assignments.csv are written from the gathered tensors without reading the shards again (`objid_texts`).
"""

from __future__ import annotations

import json

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


def objid_texts(values, shards_dir: str, splits: tuple[str, ...], ids) -> list[str]:
    """The objids of the samples `ids` as text: from their integer items (`values`) where the manifest says every
    id is an integer, else (text ids, shards packed before objid_type was recorded) read from the shards."""
    from .manifest import load_manifest

    kind = load_manifest(shards_dir).get("objid_type", "string")
    if kind is None:
        return [""] * len(ids)
    if kind == "int64" and values is not None:
        return ["" if value == MISSING_OBJID else str(value) for value in values.tolist()]
    found = objids(shards_dir, splits)
    return ["" if found.get(sample_id) is None else str(found[sample_id]) for sample_id in ids.tolist()]


def objids(shards_dir: str, splits: tuple[str, ...]) -> dict:
    """{sample id: the catalog's objid (None when absent)} of the given splits, from the samples' records."""
    from .streams import iter_samples, shard_paths

    found = {}
    for split in splits:
        for raw in iter_samples(shard_paths(shards_dir, split)):
            record = json.loads(raw["json"])
            found[record["id"]] = record.get("meta", {}).get("objid")
    return found
