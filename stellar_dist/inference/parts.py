"""Predict at survey scale: a partitioned parquet dataset that every rank writes its own parts of, resumable.

    stellar-dist predict --model runs/demo --input catalog.fits --out predictions/ --part-rows 100000
    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml -m stellar_dist predict \
        --model runs/demo --input data/sim-shards --out predictions/

An --out ending in "/" (or an existing folder) is a dataset folder: OUT/part-000000.parquet, part-000001.parquet,
... where part p holds input rows [p x part_rows, (p + 1) x part_rows) in input order, every row of them (a row
whose image cannot be read has empty prediction columns and its `rejected_reason`); OUT/_index.json says which
model and input, the parts, their rows and the columns (pandas / pyarrow read the folder as one table:
`pd.read_parquet("predictions/")`). Part p is computed by rank p mod world_size, with its images prepared in
that rank's DataLoader workers; no rank waits for another until the end. From shards, a rank reads only the shards
that hold rows of its own parts (the manifest's sample counts place every row). A part is written under a temporary
name and renamed when complete, so a part file that exists is finished: the same command run again (after a
kill, a preemption) computes only the missing parts. Each part carries the provenance in its parquet metadata.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd
import torch

from .. import __version__
from ..core import dist
from ..core.errors import PathNotFound, UserError, raise_if_any
from ..core.files import (
    MARK,
    atomic_path,
    read_json,
    sha256_of,
    sweep,
    write_atomically,
)
from .inputs import check_input_matches, input_rows
from .model_folder import WEIGHTS
from .pipeline import Predictor
from .writer import astropy_metadata, text_lengths

INDEX = "_index.json"  # "_": pyarrow and pandas skip it when they read the folder as one table
PART = re.compile(r"part-(\d{6})\.parquet")


def is_dataset(out: str) -> bool:
    """--out names a dataset folder: it ends in a path separator or is an existing folder."""
    return out.endswith(("/", os.sep)) or Path(out).is_dir()


def _part_path(out: Path, part: int) -> Path:
    return out / f"part-{part:06d}.parquet"


# What a part is made from, by content: a model republished at the same path (a run continued) or an edited catalog
# never mixes its rows with parts of the old one.
WHY = {"model_sha256": "the model's weights changed since (a run continued or republished at the same path?)",
       "input_fingerprint": "the input's content changed since", "model": "another --model", "input": "another --input"}


def input_fingerprint(source: Path) -> str:
    """A catalog file's SHA-256; a shards folder's manifest's; a folder of images: its sorted names, sizes and
    modification times (reading every image would cost as much as predicting)."""
    import hashlib

    if source.is_file():
        return sha256_of(source)
    if (source / "manifest.json").is_file():
        return sha256_of(source / "manifest.json")
    digest = hashlib.sha256()
    for path in sorted(source.rglob("*")):
        if path.is_file():
            status = path.stat()
            digest.update(f"{path.relative_to(source)}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _claim_folder(out: Path, wanted: dict) -> None:
    """Rank 0: the folder is new, or a dataset of this model and input (resume); nothing else is touched."""
    if out.exists():
        strangers = [path.name for path in out.iterdir() if path.name != INDEX and not PART.fullmatch(path.name)
                     and not path.name.startswith((".part-", MARK))]
        if strangers:
            raise UserError(f"--out {out} holds files predict did not write ({', '.join(sorted(strangers)[:3])}): "
                            "choose a new or empty folder")
        index, parts = out / INDEX, [path for path in out.iterdir() if PART.fullmatch(path.name)]
        try:
            previous = read_json(index, 16 << 20) if index.exists() else None
        except (OSError, ValueError):
            previous = None  # unreadable: written by an older version that did not write it atomically
        if previous is None and parts:
            raise UserError(f"--out {out} holds parts without a readable {INDEX}: their model and input are "
                            "unknown; choose another folder, or delete it to start again")
        changed = [key for key in wanted if previous is not None and previous.get(key) != wanted[key]]
        if changed and parts:
            why = "".join(f": {WHY[key]}" for key in changed if key in WHY)
            raise UserError(f"--out {out} holds parts of another prediction ({', '.join(changed)} differ){why}; "
                            "choose another folder, or delete it to start again")
    out.mkdir(parents=True, exist_ok=True)
    sweep(out)  # parts of killed ranks or tasks (their private folders; live ones are never touched)
    write_atomically(out / INDEX, json.dumps(wanted | {"complete": False}, indent=2))


def _write_part(path: Path, frame: pd.DataFrame, provenance: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **astropy_metadata(text_lengths(table)),
                                           b"stellar_dist": json.dumps(provenance).encode()})
    with atomic_path(path) as temporary:  # a part file that exists is complete
        pq.write_table(table, temporary)


def predict_parts(model_path: str, source: str, out: str, part_rows: int = 100_000, batch_size: int = 256,
                  unusual_below: float = 0.6, workers: int = 2, task: tuple[int, int] | None = None,
                  path_column: str = "image_path", id_column: str = "objid") -> dict:
    """Write the missing parts of OUT (this rank's share); returns counts on rank 0 (see the module docstring).
    `task` (I, N): a job array's task I of N takes parts I, I + N, ... instead of the ranks of a process group;
    each task rewrites the index when it ends (the last one to end lists every part)."""
    from accelerate import PartialState

    device = PartialState(cpu=not torch.cuda.is_available()).device
    rank, world = task if task else (dist.rank(), dist.world_size())
    out_dir, source_path = Path(out), Path(source)
    if not source_path.exists():
        raise PathNotFound(f"--input {source} does not exist")
    predictor = Predictor.load(model_path, device)
    model_folder, description = predictor.folder, predictor.description
    check_input_matches(source_path, description)
    mine: set[int] = set()  # this process's unfinished parts (known below; read lazily, as the rows stream)

    def needed(start: int, stop: int) -> bool:  # rows [start, stop) touch one of my parts: their shard is read
        return any(part in mine for part in range(start // part_rows, (stop - 1) // part_rows + 1))

    inputs = input_rows(source_path, fits=description["encoding"] == "npy", needed=needed, path_column=path_column,
                        id_column=id_column)
    predictor.check_extra(inputs.extra, source)
    total, rows, ids_type = inputs.total, inputs.rows, inputs.objid_type
    wanted = {"model": str(model_folder.resolve()), "input": str(source_path.resolve()), "rows": total,
              "model_sha256": sha256_of(model_folder / WEIGHTS), "input_fingerprint": input_fingerprint(source_path),
              "part_rows": part_rows, "classes": description["classes"], "stellar_dist": __version__}
    refusal = None
    if dist.is_main():
        try:
            _claim_folder(out_dir, wanted)
        except UserError as error:
            refusal = str(error)
    if task:  # independent processes: no collective to share the refusal
        if refusal:
            raise UserError(refusal)
    else:
        raise_if_any(refusal)
    num_parts = -(-total // part_rows)
    recorded = wanted | predictor.provenance(wanted["model_sha256"]) | {"objid_type": ids_type}
    mine.update(part for part in range(rank, num_parts, world) if not _part_path(out_dir, part).exists())
    done, current, held = 0, None, []
    for index, row in enumerate(rows):  # every rank walks the row list; only its own parts' shards are read
        part = index // part_rows
        if part != current:
            if held:
                done += _finish(out_dir, current, held, predictor, batch_size, unusual_below, workers, recorded,
                                inputs.extra)
            current, held = part, []
        if part in mine:
            held.append((index, row))
    if held:
        done += _finish(out_dir, current, held, predictor, batch_size, unusual_below, workers, recorded,
                        inputs.extra)
    if not task:
        dist.barrier()
    if not dist.is_main():
        return {}
    parts = sorted(path.name for path in out_dir.iterdir() if PART.fullmatch(path.name))
    write_atomically(out_dir / INDEX, json.dumps(wanted | {"complete": len(parts) == num_parts, "parts": parts},
                                                 indent=2))
    return {"rows": total, "parts": num_parts, "written_here": done, "missing": num_parts - len(parts)}


def _finish(out_dir, part, held, predictor, batch_size, unusual_below, workers, wanted, extra) -> int:
    # typed by the whole input (not by this part's ids): every part has one schema
    frame = predictor.predict_rows(held, batch_size=batch_size, workers=workers, unusual_below=unusual_below,
                                   objid_type=wanted.get("objid_type"), extra=extra)
    _write_part(_part_path(out_dir, part), frame, wanted | {"part": part})
    return 1
