"""Scale-out packing: each task of a job array writes a slice of the shards, then one merge writes the manifest.

    stellar-dist pack --catalog CAT --out OUT --part 3/8 [pack options]   # task 3 of 8 (slurm/pack.sbatch)
    stellar-dist pack --merge OUT                                         # after all parts (slurm/pack_merge.sbatch)

Every part reads the whole catalog and plans the same shards as a single-process pack (same split, same shuffle,
same sample ids), then writes only the shards whose index is `part` modulo the number of parts. So the merged
folder equals a single-process pack of the same catalog and options: the same shards, byte for byte (the
hashes in the manifest are the same). Parts live in `OUT.parts/part-III-of-NNN/`, each renamed into place when
complete (an interrupted task leaves nothing; re-running it is safe); the merge links the shards into a staging
folder, writes the manifest, swaps it into place as `pack` does and only then removes `OUT.parts`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from ..core.errors import PathNotFound, UserError, sigterm_as_exit
from ..core.files import discard_private, finish_private, private_folder, read_json
from ..core.outputs import OutputLock
from .manifest import MANIFEST_NAME
from .pack import (
    PackOptions,
    build_manifest,
    check_out_dir,
    check_strict,
    make_staging,
    prepare,
    replace_dir,
    write_shards,
)

PART_FILE = "part.json"
PART_NAME = re.compile(r"part-(\d{3,})-of-(\d{3,})")


def parse_part(text: str, option: str = "--part") -> tuple[int, int]:
    """'3/8' -> (3, 8): task 3 (counted from 0) of 8."""
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise UserError(f"{option} {text!r} must be INDEX/COUNT with 0 <= INDEX < COUNT (for example "
                        "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT with --array=0-7)")
    return int(match.group(1)), int(match.group(2))


def parts_dir(out: str | Path) -> Path:
    out = Path(out).resolve()
    return out.with_name(f"{out.name}.parts")


def pack_part(catalog: str | Path, out: str | Path, options: PackOptions, part: int, num_parts: int,
              overwrite: bool = False) -> dict:
    """Write part `part` of `num_parts`; returns its record (also saved as part.json)."""
    started = time.perf_counter()
    folder = parts_dir(out) / f"part-{part:03d}-of-{num_parts:03d}"
    with OutputLock(folder, "stellar-dist pack --part"):
        return _pack_part(catalog, out, options, part, num_parts, overwrite, started, folder)


def _pack_part(catalog, out, options: PackOptions, part: int, num_parts: int, overwrite: bool, started: float,
               folder: Path) -> dict:
    frame, class_names, splits, pixels = prepare(catalog, out, options, overwrite)
    same = {key: value for key, value in asdict(options).items() if key != "workers"}  # workers change no byte
    plan = {"catalog": str(catalog), "options": same, "num_parts": num_parts, "num_input": len(frame),
            "classes": class_names, "pixels": pixels, "catalog_fingerprint": fingerprint(frame)}
    if (folder / PART_FILE).exists():
        try:
            done = read_json(folder / PART_FILE)
        except (OSError, ValueError) as error:
            raise UserError(f"{folder} holds an unreadable part record ({error}): remove {folder} and run this "
                            "part again") from None
        if {key: done.get(key) for key in plan} == plan:
            return done  # a re-run task (a requeue): the part is complete already
        raise UserError(f"{folder} holds a part packed with other options or catalog: remove {parts_dir(out)} "
                        "and run every part again with the same options")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with sigterm_as_exit():
        staging = private_folder(folder.parent, folder.name)  # 0700 while written; a killed task's is swept
        try:
            results = write_shards(catalog, frame, splits, class_names, pixels, options, staging,
                                   select=lambda index: index % num_parts == part)
            record = plan | {"part": part, "results": results, "seconds": round(time.perf_counter() - started, 3)}
            (staging / PART_FILE).write_text(json.dumps(record))
            finish_private(staging)
            staging.rename(folder)
        except BaseException:
            discard_private(staging)
            raise
    return record


def fingerprint(frame) -> str:
    """The catalog as packed (every row's path, class and metadata): parts of an edited catalog differ."""
    import hashlib

    return hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()


def _verify_part(path: Path, record: dict) -> None:
    """Every shard of a part is there with the hash it was written with."""
    import hashlib

    for result in record["results"]:
        name = result["entry"]["name"]
        shard = path / name
        digest = hashlib.sha256(shard.read_bytes()).hexdigest() if shard.is_file() else None
        if digest != result["entry"]["sha256"]:
            state = "is missing" if digest is None else "does not match the hash it was written with"
            raise UserError(f"{shard} {state}: run that part again (remove {path}); nothing was merged and every "
                            "part is kept")


def _read_parts(folder: Path) -> list[tuple[Path, dict]]:
    if not folder.is_dir():
        raise PathNotFound(f"{folder} does not exist: run `stellar-dist pack --part I/N` for every part first")
    try:
        parts = [(path, read_json(path / PART_FILE)) for path in sorted(folder.iterdir())
                 if PART_NAME.fullmatch(path.name) and (path / PART_FILE).exists()]
    except (OSError, ValueError) as error:
        raise UserError(f"a part of {folder} is unreadable ({error}): remove that part and run it again") from None
    if not parts:
        raise UserError(f"{folder} holds no finished part: run `stellar-dist pack --part I/N` for every part")
    first = parts[0][1]
    plan_keys = ("catalog", "options", "num_parts", "num_input", "classes", "pixels", "catalog_fingerprint")
    for path, record in parts:
        if any(record.get(key) != first.get(key) for key in plan_keys):
            raise UserError(f"{path} was packed with other options or another version of the catalog than "
                            f"{parts[0][0]}: re-run every part with the same command and catalog; nothing was "
                            "merged and every part is kept")
        _verify_part(path, record)
    names = [result["entry"]["name"] for _, record in parts for result in record["results"]]
    if len(names) != len(set(names)):
        raise UserError(f"two parts in {folder} hold the same shard: re-run every part with the same command")
    missing = sorted(set(range(first["num_parts"])) - {record["part"] for _, record in parts})
    if missing:
        raise UserError(f"parts {', '.join(map(str, missing))} of {first['num_parts']} are missing or unfinished "
                        f"in {folder}: run them (or wait for them), then merge again")
    return parts


def merge_parts(out: str | Path, overwrite: bool = False) -> dict:
    """Merge the finished parts of `out` into `out`; returns the manifest."""
    out = Path(out)
    folder = parts_dir(out)
    with OutputLock(out, "stellar-dist pack --merge"):
        return _merge(out, folder, overwrite)


def _merge(out: Path, folder: Path, overwrite: bool) -> dict:
    parts = _read_parts(folder)
    first = parts[0][1]
    options = PackOptions(**first["options"])  # workers: the default (0 = all cores), as the parts ran with theirs
    results = [result for _, record in parts for result in record["results"]]
    check_out_dir(out, overwrite, Path(first["catalog"]))  # the same refusals as pack, before anything is written
    seconds = max(record["seconds"] for _, record in parts)
    manifest = build_manifest(results, first["classes"], first["pixels"], options, first["catalog"],
                              first["num_input"], seconds)
    check_strict(manifest, options)
    real_out = out.resolve()
    with sigterm_as_exit():
        staging = make_staging(real_out, out)
        try:
            for path, record in parts:
                for result in record["results"]:
                    name = result["entry"]["name"]
                    os.link(path / name, staging / name)  # links: the parts stay intact until the swap is done
            (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
            finish_private(staging)
            replace_dir(staging, real_out)
        except BaseException:
            discard_private(staging)
            raise
    shutil.rmtree(folder)
    return manifest
