"""`stellar-dist predict`: classify new objects with a trained model, one output row per input row, in input order.

    stellar-dist predict --model runs/demo --input new_catalog.csv --out predictions.csv
    stellar-dist predict --model runs/demo/model --input cutouts/ --out predictions.parquet --embeddings emb.npy
    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml -m stellar_dist predict \
        --model runs/demo --input data/sim-shards --out predictions.fits

Input: a table (CSV, or FITS, ECSV, parquet, VOTable as `pack` reads them) with an image path column
(--path-column, image_path by default; relative to the table), an id column (--id-column, objid by default, which
also finds SDSS's objID) copied exactly (a 64-bit integer column in FITS and parquet when every id is an integer,
as SDSS's 19-digit ids are, else text), and any other columns (ra, dec, z, ...: carried into the output as text);
a folder of images (searched recursively, sorted by path); or a shards folder.
Images are prepared as in training, from the model's config.json (centre crop or area resize to its image size,
JPEG round trip if it was trained on JPEG shards). Rows are processed in chunks: every rank takes every
world_size-th row of a chunk, rank 0 writes the chunk in input order, so memory stays flat in the number of
objects. A row whose image is missing or unreadable keeps its place with empty prediction columns and the
reason in `rejected_reason` (counted on the console): one output row per input row, never dropped silently.

Columns (inference/pipeline.py `columns`): row, objid, image_path, predicted_class, p_<class> for each class,
max_probability; where the model carries a clustering (a run with cluster.at_end or a cluster head), cluster and
cluster_distance (to its centroid, in the space the clusters were fit in) and feature_distance (from the mean
training feature, in whitened units); low_confidence (max_probability below --unusual-below, 0.6 by default: the
model hesitates between classes); unlike_training (models with a clustering: a feature distance beyond the
training images' 99th percentile, so 1% of them are flagged by construction); unusual (either of the two);
rejected_reason. When far more than 1% of the objects lie beyond it, predict warns of a domain shift.
"""

from __future__ import annotations

import argparse


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
    parser.add_argument("--path-column", default="image_path", help="a table's column of image paths (default "
                        "image_path; matched without regard to case)")
    parser.add_argument("--id-column", default="objid", help="a table's object id column, copied exactly (default "
                        "objid, which also finds SDSS's objID; e.g. specObjID)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files that predict did "
                        "not write (files it wrote itself are replaced without it)")
    return parser


def _part_rows(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 10**8:
        raise argparse.ArgumentTypeError(f"must be between 1 and 100000000, got {value}")
    return value


def run(args: argparse.Namespace) -> None:
    from ..core.errors import UserError
    from ..inference.classify import shift_warning
    from ..inference.parts import is_dataset, predict_parts
    from ..inference.predict import NothingPredicted, predict

    if is_dataset(args.out):
        if args.embeddings:
            raise UserError("--embeddings writes one .npy beside a single-file --out; a FOLDER/ output has no "
                            "embeddings yet: drop --embeddings or write a single file")
        from ..data.pack_parts import parse_part

        task = parse_part(args.task, "--task") if args.task else None
        counts = predict_parts(args.model, args.input, args.out, args.part_rows, args.batch_size,
                               args.unusual_below, args.workers, task, args.path_column, args.id_column)
        if counts:
            left = f"; {counts['missing']} part(s) still to compute by other tasks" if counts["missing"] else ""
            print(f"{counts['rows']} rows in {counts['parts']} part(s) in {args.out} ({counts['written_here']} "
                  f"written by this process, finished parts kept{left}); rows whose image could not be read have "
                  "a rejected_reason")
        return
    try:
        counts = predict(args.model, args.input, args.out, args.embeddings, args.batch_size, args.unusual_below,
                         args.overwrite, args.workers, args.path_column, args.id_column)
    except NothingPredicted as nothing:
        raise UserError(f"none of the {nothing.total} input(s) could be classified, so {args.out} was not written; "
                        f"first: {nothing.first_reason}") from None
    if counts:
        print(f"predicted {counts['predicted']} of {counts['rows']} objects into {args.out} "
              f"({counts['predicted'] / max(counts['seconds'], 1e-9):.0f} images/s)")
        warning = shift_warning(counts["far"], counts["predicted"])
        if warning:
            print(warning)
        if counts["rejected"]:
            print(f"{counts['rejected']} input(s) could not be read: their rows in {args.out} have empty prediction "
                  "columns and the reason in rejected_reason")
