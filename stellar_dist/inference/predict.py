"""`stellar-dist predict`: classify new objects with a trained model, one output row per input row, in input order.

    stellar-dist predict --model runs/demo --input new_catalog.csv --out predictions.csv
    stellar-dist predict --model runs/demo/model --input cutouts/ --out predictions.parquet --embeddings emb.npy
    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml -m stellar_dist.inference.predict \
        --model runs/demo --input data/sim-shards --out predictions.fits

Input: a table (CSV, or FITS, ECSV, parquet, VOTable as `pack` reads them) with an `image_path` column (relative
to the table; an `objid` column, if any, is copied exactly: as a 64-bit integer column in FITS and parquet when
every id is an integer, as SDSS's 19-digit ids are, else as text), a folder of images (searched recursively, sorted by path) or a shards folder.
Images are prepared as in training, from the model's config.json (centre crop or area resize to its image size,
JPEG round trip if it was trained on JPEG shards). Rows are processed in chunks: every rank takes every
world_size-th row of a chunk, rank 0 writes the chunk in input order, so memory stays flat in the number of
objects. A row whose image is missing or unreadable gets no prediction: it is listed with the reason in
OUT.rejected.csv (and counted on the console), never dropped silently.

Columns: row, objid, image_path, predicted_class, p_<class> for each class, max_probability; where the model
carries a clustering (a run with cluster.at_end or a cluster head), cluster and cluster_distance (to its centroid,
in the space the clusters were fit in) and feature_distance (from the mean training feature, in whitened units);
and `unusual`: max_probability below --unusual-below (0.6 by default: the model hesitates between classes), or a
feature distance beyond the training images' 99th percentile (unlike the training images: 1% of them are flagged
by construction). When far more than 1% of the objects lie beyond it, predict warns of a domain shift.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import dist
from ..errors import UserError, raise_if_any
from ..files import private_folder
from .classify import (CHUNK_ROWS, classify_rows, cluster_columns, far_rule, nearest_cluster, provenance, shift_warning,
                       unusual_flags)
from .inputs import check_input_matches, input_rows
from .model_folder import find_model_folder, load_model
from .writer import (Writer, claim_outputs, drop_embeddings, finish_outputs, gather_rejected, output_paths,
                     rejected_path)


def _chunks(rows, size: int):
    chunk = []
    for index, row in enumerate(rows):
        chunk.append((index, row))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def predict(model_path: str, source: str, out: str, embeddings: str | None = None, batch_size: int = 256,
            unusual_below: float = 0.6, overwrite: bool = False, workers: int = 2) -> dict:
    """Classify every row of `source` into `out` (rank 0 writes); returns counts on rank 0."""
    from accelerate import PartialState

    device = PartialState(cpu=not torch.cuda.is_available()).device  # starts the process group when launched
    rank, world, main = dist.rank(), dist.world_size(), dist.is_main()
    out_path, source_path = Path(out), Path(source)
    if not source_path.exists():
        raise UserError(f"--input {source} does not exist")
    if not out_path.parent.is_dir():
        raise UserError(f"--out {out}: folder {out_path.parent} does not exist")
    if embeddings and Path(embeddings).suffix.lower() != ".npy":
        raise UserError(f"--embeddings {embeddings} must end in .npy")
    model_folder = find_model_folder(model_path)
    model, description = load_model(model_folder, device)
    check_input_matches(source_path, description)
    total, rows, image_paths, ids_type = input_rows(source_path, fits=description["encoding"] == "npy")
    outputs, locks, refusal = output_paths(out_path, embeddings), [], None
    if main:
        try:
            locks = claim_outputs(outputs, model_folder, source_path, image_paths, overwrite)
            writer = Writer(out_path, description["classes"], cluster_columns(description),
                            provenance(model_folder, description), integer_ids=ids_type == "int64")
        except UserError as error:
            refusal = str(error)
    raise_if_any(refusal)
    features_file = None
    try:
        counts = _predict_rows(model, description, rows, total, writer if main else None, embeddings,
                               (device, rank, world), batch_size, unusual_below, workers)
        features_file = counts.pop("features_file")
        rejected = gather_rejected(counts.pop("rejected_rows"), out_path)
        if main and total and not counts["predicted"]:
            raise NothingPredicted(total)
        if main:
            finish_outputs(writer, features_file, embeddings)
    except BaseException:
        if main:
            writer.discard()
            drop_embeddings(features_file)
        raise
    finally:
        for lock in locks:
            lock.release()
    return counts | {"rejected": len(rejected)} if main else {}


def _predict_rows(model, description: dict, rows, total: int, writer, embeddings: str | None, where: tuple,
                  batch_size: int, unusual_below: float, workers: int) -> dict:
    device, rank, world = where
    classes = description["classes"]
    clusters = description["cluster_tensors"] if cluster_columns(description) else None
    far = far_rule(description)
    features_file = None
    if embeddings and dist.is_main():
        temporary = private_folder(Path(embeddings).parent, Path(embeddings).name) / "embeddings.npy"
        features_file = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float32,
                                                  shape=(total, model.feature_dim))
        features_file[:] = np.nan  # rejected rows stay NaN
    rejected_all, started, predicted, num_far = [], time.perf_counter(), 0, 0
    progress = tqdm(total=total, desc="predict", unit="img", disable=not dist.is_main())
    try:
        for chunk in _chunks(rows, CHUNK_ROWS):
            kept, probabilities, features, rejected = classify_rows(model, chunk[rank::world], description, device,
                                                                batch_size, workers)
            if rejected:  # with their objid and image path, so the list joins back
                by_index = dict(chunk)
                rejected_all.extend((index, by_index[index][0] or "", by_index[index][1], reason)
                                    for index, reason in rejected)
            columns = {} if clusters is None else {
                name: dist.gather_variable(value).cpu().numpy()
                for name, value in nearest_cluster(features, clusters).items()}
            kept, probabilities = dist.gather_variable(kept), dist.gather_variable(probabilities)
            features = dist.gather_variable(features) if embeddings else features
            predicted += len(kept)
            if dist.is_main():
                output = _output_rows(chunk, kept, probabilities.cpu().numpy(), classes, unusual_below, columns, far)
                num_far += sum(row["far"] for row in output)
                writer.write([{key: value for key, value in row.items() if key != "far"} for row in output])
                if features_file is not None and len(kept):
                    features_file[kept.cpu().numpy()] = features.cpu().numpy()
                progress.update(len(chunk))
                progress.set_postfix(images_per_s=f"{progress.n / max(time.perf_counter() - started, 1e-9):.0f}")
        progress.close()
    except BaseException:
        drop_embeddings(features_file)
        raise
    return {"rows": total, "predicted": predicted, "seconds": time.perf_counter() - started, "far": num_far,
            "rejected_rows": rejected_all, "features_file": features_file}


class NothingPredicted(Exception):
    """No row could be classified: the output is not written; the rejected list says why."""


def _output_rows(chunk, kept, values, classes, unusual_below, columns: dict, far: tuple) -> list[dict]:
    """Rank 0: the output rows of a chunk, in input order; `far` (column, threshold) of far_rule. Each row's
    "far" (beyond the threshold) is counted for the domain-shift warning, not written."""
    by_row = {int(row): position for position, row in enumerate(kept.tolist())}
    unusual, beyond = unusual_flags(values.max(1, initial=-1.0), columns, unusual_below, far)
    output = []
    for index, (objid, path, _) in chunk:
        if index not in by_row:
            continue
        position = by_row[index]
        p = values[position]
        row = {"row": index, "objid": objid, "image_path": path, "predicted_class": classes[int(p.argmax())],
               **{f"p_{name}": float(p[i]) for i, name in enumerate(classes)}, "max_probability": float(p.max())}
        row |= {name: int(value[position]) if name == "cluster" else float(value[position])
                for name, value in columns.items()}
        output.append(row | {"unusual": bool(unusual[position]), "far": bool(beyond[position])})
    return output


def _positive_int(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65536:
        raise argparse.ArgumentTypeError(f"must be between 1 and 65536, got {value}")
    return value


def _workers(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 64:
        raise argparse.ArgumentTypeError(f"must be between 0 and 64, got {value}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", required=True, help="a run folder, its model/ folder or a checkpoints/step_*")
    parser.add_argument("--input", required=True, help="CSV with image_path (+ objid), a folder of images, or shards")
    parser.add_argument("--out", required=True, help="FILE.csv, FILE.parquet or FILE.fits; or FOLDER/: a partitioned "
                        "parquet dataset, each rank writing its own parts, resumable (see inference/parts.py)")
    parser.add_argument("--task", metavar="I/N", help="with a FOLDER/ --out: this job-array task I of N computes "
                        "parts I, I+N, ... (slurm/predict.sbatch); without it the ranks of a launch share them")
    parser.add_argument("--part-rows", type=_part_rows, default=100_000, help="input rows per part of a FOLDER/ "
                        "output (1-100000000, default 100000)")
    parser.add_argument("--embeddings", help="also write the features as FILE.npy (rows in input order; NaN rows "
                                             "for rejected inputs)")
    parser.add_argument("--batch-size", type=_positive_int, default=256, help="images per forward pass (1-65536)")
    parser.add_argument("--unusual-below", type=_probability, default=0.6,
                        help="flag rows whose max probability is below (0-1)")
    parser.add_argument("--workers", type=_workers, default=2, help="processes reading and preparing images "
                        "per rank (0-64; 0: in the main process)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files that predict did "
                        "not write (files it wrote itself are replaced without it)")
    return parser


def _part_rows(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 10**8:
        raise argparse.ArgumentTypeError(f"must be between 1 and 100000000, got {value}")
    return value


def run(args: argparse.Namespace) -> None:
    from .parts import is_dataset, predict_parts

    if is_dataset(args.out):
        if args.embeddings:
            raise UserError("--embeddings writes one .npy beside a single-file --out; a FOLDER/ output has no "
                            "embeddings yet: drop --embeddings or write a single file")
        from ..data.pack_parts import parse_part

        task = parse_part(args.task, "--task") if args.task else None
        counts = predict_parts(args.model, args.input, args.out, args.part_rows, args.batch_size,
                               args.unusual_below, args.workers, task)
        if counts:
            left = f"; {counts['missing']} part(s) still to compute by other tasks" if counts["missing"] else ""
            print(f"{counts['rows']} rows in {counts['parts']} part(s) in {args.out} ({counts['written_here']} "
                  f"written by this process, finished parts kept{left}); rows whose image could not be read have "
                  "a rejected_reason")
        return
    try:
        counts = predict(args.model, args.input, args.out, args.embeddings, args.batch_size, args.unusual_below,
                         args.overwrite, args.workers)
    except NothingPredicted as nothing:
        side = rejected_path(Path(args.out))
        first = next(csv.DictReader(open(side)))
        raise UserError(f"none of the {nothing} input(s) could be classified, so {args.out} was not written; "
                        f"first reason (row {first['row']}): {first['reason']}; all of them are listed in {side}")
    if counts:
        print(f"predicted {counts['predicted']} of {counts['rows']} objects into {args.out} "
              f"({counts['predicted'] / max(counts['seconds'], 1e-9):.0f} images/s)")
        warning = shift_warning(counts["far"], counts["predicted"])
        if warning:
            print(warning)
        if counts["rejected"]:
            side = Path(args.out).with_name(f"{Path(args.out).stem}.rejected.csv")
            print(f"{counts['rejected']} unreadable input(s) listed with the reason in {side}")


def main(argv: list[str] | None = None) -> None:
    from ..errors import run_module

    run_module(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
