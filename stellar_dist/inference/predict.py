"""Classify the rows of a catalog, a folder of images or shards into one output file, in input order, every rank
taking every world_size-th row of each chunk and rank 0 writing (the `stellar-dist predict` command and its
options are cli/predict.py, which documents the columns; FOLDER/ outputs are parts.py)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..core import dist
from ..core.errors import PathNotFound, UserError, raise_if_any
from ..core.files import private_folder
from ..core.progress import progress
from .classify import CHUNK_ROWS
from .inputs import check_input_matches, input_rows
from .pipeline import Chunk, Predictor
from .writer import Writer, claim_outputs, drop_embeddings, finish_outputs, output_paths


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
            unusual_below: float = 0.6, overwrite: bool = False, workers: int = 2, path_column: str = "image_path",
            id_column: str = "objid") -> dict:
    """Classify every row of `source` into `out` (rank 0 writes); returns counts on rank 0: rows, predicted,
    rejected (rows whose image could not be read: in the table with their rejected_reason), seconds, far."""
    from accelerate import PartialState

    device = PartialState(cpu=not torch.cuda.is_available()).device  # starts the process group when launched
    main = dist.is_main()
    out_path, source_path = Path(out), Path(source)
    if not source_path.exists():
        raise PathNotFound(f"--input {source} does not exist")
    if not out_path.parent.is_dir():
        raise PathNotFound(f"--out {out}: folder {out_path.parent} does not exist")
    if embeddings and Path(embeddings).suffix.lower() != ".npy":
        raise UserError(f"--embeddings {embeddings} must end in .npy")
    predictor = Predictor.load(model_path, device)
    check_input_matches(source_path, predictor.description)
    inputs = input_rows(source_path, fits=predictor.description["encoding"] == "npy", path_column=path_column,
                        id_column=id_column)
    extra = predictor.check_extra(inputs.extra, source)
    locks, refusal, writer = [], None, None
    if main:
        try:
            locks = claim_outputs(output_paths(out_path, embeddings), predictor.folder, source_path,
                                  inputs.image_paths, overwrite)
            writer = Writer(out_path, predictor.columns(inputs.objid_type, extra=extra), predictor.provenance())
        except UserError as error:
            refusal = str(error)
    raise_if_any(refusal)
    features_file = None
    try:
        counts = _predict_rows(predictor, inputs, writer, embeddings, batch_size, unusual_below, workers)
        features_file = counts.pop("features_file")
        if main and inputs.total and not counts["predicted"]:
            raise NothingPredicted(inputs.total, counts["first_reason"])
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
    return {key: value for key, value in counts.items() if key != "first_reason"} if main else {}


def _gathered(chunk: Chunk, embeddings: bool) -> Chunk:
    """Every rank's results of one chunk, on rank 0 (the others keep their own)."""
    return Chunk(dist.gather_variable(chunk.kept), dist.gather_variable(chunk.probabilities),
                 {name: dist.gather_variable(value) for name, value in chunk.clusters.items()},
                 dist.gather_variable(chunk.features) if embeddings else chunk.features,
                 dist.gather_objects(chunk.rejected))


def _predict_rows(predictor: Predictor, inputs, writer, embeddings: str | None, batch_size: int,
                  unusual_below: float, workers: int) -> dict:
    rank, world, total = dist.rank(), dist.world_size(), inputs.total
    features_file = None
    if embeddings and dist.is_main():
        temporary = private_folder(Path(embeddings).parent, Path(embeddings).name) / "embeddings.npy"
        features_file = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float32,
                                                  shape=(total, predictor.model.feature_dim))
        features_file[:] = np.nan  # rejected rows stay NaN
    counts = {"rows": total, "predicted": 0, "rejected": 0, "far": 0, "first_reason": None}
    started = time.perf_counter()
    bar = progress(total, "predict", "img", enabled=dist.is_main())
    try:
        for chunk in _chunks(inputs.rows, CHUNK_ROWS):
            mine = predictor.classify(chunk[rank::world], batch_size=batch_size, workers=workers)
            result = _gathered(mine, embeddings is not None)
            if not dist.is_main():
                continue
            frame = predictor.rows_frame(chunk, result, unusual_below=unusual_below, objid_type=inputs.objid_type,
                                         extra=inputs.extra)
            writer.write(frame)
            far, read = frame.attrs["far"]
            counts["far"] += far
            counts["predicted"] += read
            counts["rejected"] += len(chunk) - read
            if counts["first_reason"] is None and result.rejected:
                index, reason = min(result.rejected)
                counts["first_reason"] = f"row {index}: {reason}"
            if features_file is not None and len(result.kept):
                features_file[result.kept.cpu().numpy()] = result.features.cpu().numpy()
            bar.update(len(chunk))
        bar.close()
    except BaseException:
        drop_embeddings(features_file)
        raise
    return counts | {"seconds": time.perf_counter() - started, "features_file": features_file}


class NothingPredicted(Exception):
    """No row could be classified: the output is not written."""

    def __init__(self, total: int, first_reason: str | None):
        super().__init__(total)
        self.total, self.first_reason = total, first_reason
