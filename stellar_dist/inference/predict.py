"""`stellar-dist predict`: classify new objects with a trained model, one output row per input row, in input order.

    stellar-dist predict --model runs/demo --input new_catalog.csv --out predictions.csv
    stellar-dist predict --model runs/demo/model --input cutouts/ --out predictions.parquet --embeddings emb.npy
    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml -m stellar_dist.inference.predict \
        --model runs/demo --input data/sim-shards --out predictions.fits

Input: a CSV with an `image_path` column (relative to the CSV; an `objid` column, if any, is copied as text, so
19-digit ids join back exactly), a folder of images (searched recursively, sorted by path) or a shards folder.
Images are prepared as in training, from the model's config.json (centre crop or area resize to its image size,
JPEG round trip if it was trained on JPEG shards). Rows are processed in chunks: every rank takes every
world_size-th row of a chunk, rank 0 writes the chunk in input order, so memory stays flat in the number of
objects. A row whose image is missing or unreadable gets no prediction: it is listed with the reason in
OUT.rejected.csv (and counted on the console), never dropped silently.

Columns: row, objid, image_path, predicted_class, p_<class> for each class, max_probability; where the model
carries a clustering (a run with cluster.at_end or a cluster head), cluster and cluster_distance (to its centroid,
in the space the clusters were fit in); and `unusual`: max_probability below --unusual-below (0.6 by default: the
model hesitates between classes), or a cluster distance beyond the clustering's mean + 3 std (unlike anything
the clusters were fit on).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .. import dist
from ..data.bands import Stretch, is_fits, read_cutout, resize_cutout
from ..data.catalog import IMAGE_SUFFIXES
from ..data.streams import rgb_array
from ..errors import UserError
from ..outputs import OutputLock, atomic_file, check_paths, claim, follow_umask, release, require_replaceable
from .model_folder import find_model_folder, load_model
from .writer import Writer

CHUNK_ROWS = 2048


def check_input_matches(source: Path, description: dict) -> None:
    """A model/input mismatch is one line before any row is read: shards of another size, bands or kind, or
    8-bit images for a FITS model (and FITS cutouts for an 8-bit one)."""
    from ..data.manifest import load_manifest

    fits_model = description["encoding"] == "npy"
    if (source / "manifest.json").is_file():
        manifest = load_manifest(source)

        def kind(fits: bool, size: int, channels: int, bands) -> str:
            return f"{'FITS' if fits else '8-bit'} cutouts of {size} px in {channels} band(s)" + \
                (f" ({','.join(bands)})" if bands else "")

        theirs = kind(manifest["encoding"] == "npy", manifest["image_size"], manifest.get("channels", 3),
                      manifest.get("bands") if manifest["encoding"] == "npy" else None)
        mine = kind(fits_model, description["image_size"], description.get("channels", 3),
                    description.get("bands") if fits_model else None)
        if theirs != mine:
            raise UserError(f"--input {source} holds {theirs}; the model takes {mine}: use shards packed like the "
                            "model's training shards, or the catalog itself")


def input_rows(source: Path, fits: bool = False):
    """(number of rows, generator of (objid or None, image path or shard member name, payload or None), the image
    paths read (outputs must not be one of them)).
    A folder is searched for the files the model reads: FITS cutouts (`fits`) or 8-bit images. A shard member's
    payload is its bytes (N-band) or (encoding, bytes) for 8-bit shards."""
    if (source / "manifest.json").is_file():
        from ..data.streams import iter_samples, shard_paths
        from ..data.manifest import load_manifest

        manifest = load_manifest(source)
        paths = [path for split in ("labeled", "unlabeled", "test") for path in shard_paths(source, split)]
        encoding = manifest["encoding"]

        def from_shards():
            import json

            for raw in iter_samples(paths):
                record = json.loads(raw["json"])
                objid = record.get("meta", {}).get("objid")
                payload = raw.get(encoding) if encoding == "npy" else (encoding, raw.get(encoding))
                yield (None if objid is None else str(objid)), record.get("source", raw["__key__"]), payload

        return sum(manifest["num_samples"].values()), from_shards(), []
    if source.is_dir():
        wanted = is_fits if fits else (lambda path: path.suffix.lower() in IMAGE_SUFFIXES)
        images = sorted(path for path in source.rglob("*") if wanted(path)
                        and not any(part.startswith(".") for part in path.relative_to(source).parts))
        if not images:
            kind = "FITS cutouts" if fits else f"8-bit images ({', '.join(sorted(IMAGE_SUFFIXES))})"
            raise UserError(f"--input {source} holds no {kind}, the kind of image this model reads: pass a folder "
                            "of them, a CSV or shards")
        return len(images), ((None, str(path), None) for path in images), [str(path) for path in images]
    if source.suffix.lower() != ".csv":
        raise UserError(f"--input {source} is neither a CSV, a folder of images nor a shards folder")
    from ..data.catalog import _read_csv

    frame = _read_csv(source)  # every cell as text: an empty, malformed or non-UTF-8 file is one line
    if "image_path" not in frame.columns:
        raise UserError(f"--input {source} has no image_path column (has: {', '.join(frame.columns)})")
    if frame.empty:
        raise UserError(f"--input {source} has no rows: add the objects to classify")
    ids = frame["objid"] if "objid" in frame.columns else [None] * len(frame)
    paths = [str(Path(path) if Path(path).is_absolute() else source.parent / path) for path in frame["image_path"]]
    first = paths[0]
    if is_fits(first) != fits:
        raise UserError(f"--input {source} lists {'FITS cutouts' if is_fits(first) else '8-bit images'} "
                        f"(first {first}), but the model was trained on {'FITS cutouts' if fits else '8-bit images'}"
                        ": classify them with a model trained on the same kind of image")
    return len(frame), ((objid or None, path, None) for objid, path in zip(ids, paths)), paths


def prepare(row: tuple, description: dict, stretch: Stretch | None = None) -> tuple[torch.Tensor | None, str | None]:
    """The image as the model saw it in training, or (None, the reason it cannot be read)."""
    from ..data.pack import _encode, preprocess_image

    _, path, payload = row
    if description["encoding"] == "npy":
        return _prepare_bands(path, payload, description, stretch or Stretch(description["stretch"]))
    try:
        if payload is None:
            image = preprocess_image(path, description["image_size"], description["preprocess"])
            if description["encoding"] == "jpg":  # the shards held JPEGs: the same compression
                image = Image.open(io.BytesIO(_encode(image, "jpg")))
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        else:  # a shard member, in the shards' own 8-bit encoding (png, jpg or u8: any of them reads alike)
            encoding, payload = payload
            array = rgb_array({encoding: payload}, encoding, description["image_size"])
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, UserError) as error:
        return None, f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)
    if description.get("grayscale"):
        tensor = tensor.mean(0, keepdim=True).expand(3, -1, -1).contiguous()
    return tensor, None


def _prepare_bands(path: str, payload: bytes | None, description: dict, stretch: Stretch):
    """An N-band cutout (a FITS file, or an array from N-band shards) stretched as in training."""
    size, channels = description["image_size"], description["channels"]
    try:
        if payload is None:
            cube = resize_cutout(read_cutout(path, tuple(description["bands"])), size, description["preprocess"])
        else:
            cube = np.load(io.BytesIO(payload), allow_pickle=False)
        if cube.shape != (channels, size, size):
            raise ValueError(f"cutout has shape {cube.shape}, the model takes {(channels, size, size)}")
    except (OSError, ValueError, TypeError, EOFError) as error:
        return None, f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return stretch.apply_asinh(stretch.to_noise_units(cube)), None


@torch.no_grad()
def _classify(model, rows: list[tuple[int, tuple]], description: dict, device, batch_size: int):
    """This rank's rows of a chunk: (row indices, probabilities, features, rejected [(row, reason)])."""
    kept, tensors, rejected = [], [], []
    stretch = Stretch(description["stretch"]) if description.get("stretch") else None  # once per chunk
    for index, row in rows:
        tensor, reason = prepare(row, description, stretch)
        if tensor is None:
            rejected.append((index, reason))
        else:
            kept.append(index)
            tensors.append(tensor)
    probabilities, features = [], []
    for start in range(0, len(tensors), batch_size):
        batch = torch.stack(tensors[start : start + batch_size]).to(device)
        embedding = model.features(batch)
        features.append(embedding.float())
        probabilities.append(model.classifier(embedding).float().softmax(-1))
    width = model.feature_dim
    kept = torch.tensor(kept, dtype=torch.long, device=device)
    probabilities = torch.cat(probabilities) if probabilities else torch.zeros(0, len(description["classes"]),
                                                                               device=device)
    features = torch.cat(features) if features else torch.zeros(0, width, device=device)
    finite = torch.isfinite(probabilities).all(1) & torch.isfinite(features).all(1)
    if not bool(finite.all()):  # an image with NaN / inf pixels: listed, never a NaN row in the output
        rejected += [(int(index), "non-finite probabilities: the image holds NaN or infinite values")
                     for index in kept[~finite].tolist()]
        kept, probabilities, features = kept[finite], probabilities[finite], features[finite]
    return kept, probabilities, features, rejected


def nearest_cluster(features: torch.Tensor, clusters: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(cluster id, distance to its centroid) in the space the run's last clustering was fit in."""
    from ..clustering.cluster import assign
    from ..clustering.recluster import reduce_features

    reduced = reduce_features(features, clusters.get("pca_mean"), clusters.get("pca_projection"))
    assignment, squared = assign(reduced, clusters["centroids"].to(reduced.device))
    return assignment, squared.clamp(min=0).sqrt()


def _chunks(rows, size: int):
    chunk = []
    for index, row in enumerate(rows):
        chunk.append((index, row))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _outputs(out: Path, embeddings: str | None) -> dict:
    return {"--out": out, "--embeddings": Path(embeddings) if embeddings else None, "the rejected list": rejected_path(out)}


def rejected_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.rejected.csv")


def _claim_outputs(outputs: dict, model_folder: Path, source: Path, image_paths: list[str], overwrite: bool):
    """Rank 0, before anything is written: no output is an input (the catalog, its images, the model folder, the
    shards), one writer per output, and an existing file is replaced only when predict wrote it."""
    check_paths(outputs, {"--input": source, "--model": model_folder})
    targets = {os.path.realpath(path) for path in outputs.values() if path}
    clash = next((path for path in image_paths if os.path.realpath(path) in targets), None) if targets else None
    if clash:
        raise UserError(f"{clash} is both an input image and an output: choose an output path outside the inputs")
    for name, path in outputs.items():  # before the locks (a refusal leaves nothing) and again under them
        if path:
            require_replaceable(path, "predict", overwrite, name)
    locks = []
    try:
        locks += [OutputLock(path, "stellar-dist predict") for path in outputs.values() if path]
        for name, path in outputs.items():
            if path:
                require_replaceable(path, "predict", overwrite, name)
    except UserError:
        for lock in locks:
            lock.release()
        raise
    return locks


def predict(model_path: str, source: str, out: str, embeddings: str | None = None, batch_size: int = 256,
            unusual_below: float = 0.6, overwrite: bool = False) -> dict:
    """Classify every row of `source` into `out` (rank 0 writes); returns counts on rank 0."""
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    device, rank, world = state.device, state.process_index, state.num_processes
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
    total, rows, image_paths = input_rows(source_path, fits=description["encoding"] == "npy")
    outputs, locks, refusal = _outputs(out_path, embeddings), [], None
    if rank == 0:
        try:
            locks = _claim_outputs(outputs, model_folder, source_path, image_paths, overwrite)
            writer = Writer(out_path, description["classes"], "centroids" in description["cluster_tensors"])
        except UserError as error:
            refusal = str(error)
    dist.raise_if_any(refusal)
    features_file = None
    try:
        counts = _predict_rows(model, description, rows, total, writer if rank == 0 else None, embeddings,
                               (device, rank, world), batch_size, unusual_below)
        features_file = counts.pop("features_file")
        rejected = _gather_rejected(counts.pop("rejected_rows"), rank, world, out_path)
        if rank == 0 and total and not counts["predicted"]:
            raise NothingPredicted(total)
        if rank == 0:
            _finish(writer, features_file, embeddings)
    except BaseException:
        if rank == 0:
            writer.discard()
            _drop(features_file)
        raise
    finally:
        for lock in locks:
            lock.release()
    return counts | {"rejected": len(rejected)} if rank == 0 else {}


def _predict_rows(model, description: dict, rows, total: int, writer, embeddings: str | None, where: tuple,
                  batch_size: int, unusual_below: float) -> dict:
    device, rank, world = where
    classes = description["classes"]
    clusters = description["cluster_tensors"] if "centroids" in description["cluster_tensors"] else None
    far = (description.get("cluster") or {}).get("far_distance", float("inf"))
    features_file = None
    if embeddings and rank == 0:
        features_file = np.lib.format.open_memmap(Path(embeddings).with_name(f".{Path(embeddings).name}.tmp-{os.getpid()}.npy"),
                                                  mode="w+", dtype=np.float32, shape=(total, model.feature_dim))
        features_file[:] = np.nan  # rejected rows stay NaN
    rejected_all, started, predicted = [], time.perf_counter(), 0
    progress = tqdm(total=total, desc="predict", unit="img", disable=rank != 0)
    try:
        for chunk in _chunks(rows, CHUNK_ROWS):
            kept, probabilities, features, rejected = _classify(model, chunk[rank::world], description, device,
                                                                batch_size)
            rejected_all.extend(rejected)
            assignment = distance = None
            if clusters is not None:
                assignment, distance = nearest_cluster(features, clusters)
                assignment = dist.gather_variable(assignment).cpu().numpy()
                distance = dist.gather_variable(distance).cpu().numpy()
            kept, probabilities = dist.gather_variable(kept), dist.gather_variable(probabilities)
            features = dist.gather_variable(features) if embeddings else features
            predicted += len(kept)
            if rank == 0:
                writer.write(_output_rows(chunk, kept, probabilities.cpu().numpy(), classes, unusual_below,
                                          assignment, distance, far))
                if features_file is not None and len(kept):
                    features_file[kept.cpu().numpy()] = features.cpu().numpy()
                progress.update(len(chunk))
                progress.set_postfix(images_per_s=f"{progress.n / max(time.perf_counter() - started, 1e-9):.0f}")
        progress.close()
    except BaseException:
        _drop(features_file)
        raise
    return {"rows": total, "predicted": predicted, "seconds": time.perf_counter() - started,
            "rejected_rows": rejected_all, "features_file": features_file}


def _drop(features_file) -> None:
    if features_file is not None and Path(features_file.filename).exists():
        Path(features_file.filename).unlink()


def _finish(writer, features_file, embeddings: str | None) -> None:
    """Rank 0: the finished output (and embeddings) renamed into place and recorded as predict's own."""
    writer.close()
    claim(writer.out, "predict")
    if features_file is not None:
        features_file.flush()
        follow_umask(features_file.filename)
        Path(features_file.filename).replace(embeddings)
        claim(embeddings, "predict")


class NothingPredicted(Exception):
    """No row could be classified: the output is not written; the rejected list says why."""


def _output_rows(chunk, kept, values, classes, unusual_below, assignment, distance, far) -> list[dict]:
    by_row = {int(row): position for position, row in enumerate(kept.tolist())}
    output = []
    for index, (objid, path, _) in chunk:
        if index not in by_row:
            continue
        position = by_row[index]
        p = values[position]
        row = {"row": index, "objid": objid, "image_path": path, "predicted_class": classes[int(p.argmax())],
               **{f"p_{name}": float(p[i]) for i, name in enumerate(classes)}, "max_probability": float(p.max())}
        unusual = p.max() < unusual_below
        if assignment is not None:
            row |= {"cluster": int(assignment[position]), "cluster_distance": float(distance[position])}
            unusual = unusual or distance[position] > far
        output.append(row | {"unusual": bool(unusual)})
    return output


def _gather_rejected(rejected: list, rank: int, world: int, out: Path) -> list:
    """Every rank's rejected rows, written by rank 0 to OUT.rejected.csv (input order); an earlier list of
    predict's own is removed (a stale list would misreport this run), a file of the user's never."""
    if world > 1:
        import torch.distributed as torch_dist

        everyone = [None] * world
        torch_dist.all_gather_object(everyone, rejected)  # small: (row, reason) pairs, our own objects
        rejected = [item for part in everyone for item in part]
    side = rejected_path(out)
    if rank == 0:
        if rejected:
            with atomic_file(side) as temporary, open(temporary, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["row", "reason"])
                writer.writerows(sorted(rejected))
            claim(side, "predict")
        else:
            release(side)
    return rejected


def _positive_int(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65536:
        raise argparse.ArgumentTypeError(f"must be between 1 and 65536, got {value}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", required=True, help="a run folder, its model/ folder or a checkpoints/step_*")
    parser.add_argument("--input", required=True, help="CSV with image_path (+ objid), a folder of images, or shards")
    parser.add_argument("--out", required=True, help="FILE.csv, FILE.parquet or FILE.fits")
    parser.add_argument("--embeddings", help="also write the features as FILE.npy (rows in input order; NaN rows "
                                             "for rejected inputs)")
    parser.add_argument("--batch-size", type=_positive_int, default=256, help="images per forward pass (1-65536)")
    parser.add_argument("--unusual-below", type=_probability, default=0.6,
                        help="flag rows whose max probability is below (0-1)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files that predict did "
                        "not write (files it wrote itself are replaced without it)")
    return parser


def run(args: argparse.Namespace) -> None:
    try:
        counts = predict(args.model, args.input, args.out, args.embeddings, args.batch_size, args.unusual_below,
                         args.overwrite)
    except NothingPredicted as nothing:
        side = rejected_path(Path(args.out))
        first = next(csv.DictReader(open(side)))
        raise UserError(f"none of the {nothing} input(s) could be classified, so {args.out} was not written; "
                        f"first reason (row {first['row']}): {first['reason']}; all of them are listed in {side}")
    if counts:
        print(f"predicted {counts['predicted']} of {counts['rows']} objects into {args.out} "
              f"({counts['predicted'] / max(counts['seconds'], 1e-9):.0f} images/s)")
        if counts["rejected"]:
            side = Path(args.out).with_name(f"{Path(args.out).stem}.rejected.csv")
            print(f"{counts['rejected']} unreadable input(s) listed with the reason in {side}")


def main(argv: list[str] | None = None) -> None:
    from ..cli import run_module

    run_module(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
