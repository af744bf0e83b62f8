"""WebDataset streams split by rank and dataloader worker inside the pipeline (no rank-0 dispatch).

Training streams resample shards with replacement, seeded by (seed, stream, rank, worker), and run forever: the
engine takes exactly `train.steps` batches, so every rank runs the same number of steps whatever its shards (no
DDP hang, webdataset#188). Batches are made inside each worker; the DataLoader hands them out round-robin, so on
resume at step S worker w skips exactly the batches it had produced before S, without decoding them, and each
sample's augmentation is seeded by its own position: a resumed run sees the same batches as an uninterrupted one
(given the same data.num_workers).

The test stream visits every sample once across all ranks and workers (see shards/README.md).
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..core.errors import UserError
from . import augment, bands
from .manifest import load_manifest
from .objids import integer_objid

STREAM_TAGS = {"labeled": 1, "unlabeled": 2, "test": 3, "features": 4}
# A shard member larger than this is never read into memory: its sample is refused (a 64 px PNG is ~12 kB, a
# 256 px 5-band float32 cutout 1.3 MB).
MAX_MEMBER_BYTES = 64 * 2**20


@dataclass(frozen=True)
class ItemMaker:
    """Turns one raw sample (bytes per member) into tensors for a given use."""

    use: str  # "labeled": weak view + label; "unlabeled": the `views`; "plain": no augmentation; "raw": the uint8
    # image and the sample's seed, for views made on the device (data.augment_on=device)
    encoding: str
    grayscale: bool = False
    views: tuple[str, ...] = ("weak", "strong")  # unlabeled views, named by kind: "weak", "strong", "weak1", ...
    strong_view: str = "sky"  # augment.strong's kind: "sky" or "evidence"
    max_shift_fraction: float = augment.MAX_SHIFT_FRACTION  # the weak view's shift (data.max_shift_fraction)
    stretch: bands.Stretch | None = None  # N-band (npy) shards: the manifest's asinh stretch
    image_size: int = 0  # every image must be image_size x image_size (0: not checked)
    num_classes: int = 0  # labels must lie in [-1, num_classes) (0: not checked)

    @classmethod
    def for_shards(cls, use: str, manifest: dict, grayscale: bool = False, **options) -> "ItemMaker":
        """`manifest`: a shards manifest, or a model's description (it carries the same encoding and stretch)."""
        stretch = bands.Stretch(manifest["stretch"]) if manifest.get("stretch") else None
        return cls(use, manifest["encoding"], grayscale, stretch=stretch, image_size=manifest["image_size"],
                   num_classes=len(manifest["classes"]), **options)

    def decode(self, raw: dict) -> torch.Tensor:
        """8-bit images: pixels / 255. N-band arrays: sky-subtracted flux in noise units (see bands.py)."""
        if "too_large" in raw:
            raise ValueError(raw["too_large"].decode())
        if self.encoding == "npy":
            return self.flux(np.load(io.BytesIO(raw["npy"]), allow_pickle=False))
        # 8-bit: the member in the shards' encoding (any of png / jpg / u8 reads alike: predict hands over others)
        encoding = self.encoding if self.encoding in raw else next(
            (name for name in ("png", "jpg", "u8") if name in raw), self.encoding)
        array = rgb_array(raw, encoding, self.image_size or None)
        tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)
        if self.grayscale:
            tensor = tensor.mean(0, keepdim=True).expand(3, -1, -1).contiguous()
        return tensor

    def flux(self, array: np.ndarray) -> torch.Tensor:
        """An N-band cutout (bands x size x size, float) as sky-subtracted flux in noise units."""
        size = self.image_size or array.shape[-1]
        if array.shape != (self.stretch.channels, size, size) or array.dtype.kind != "f":
            raise ValueError(f"array of shape {array.shape} and type {array.dtype}, not "
                             f"{self.stretch.channels} float bands of {size} x {size}")
        return self.stretch.to_noise_units(array)

    def __call__(self, raw: dict, generator: torch.Generator, seed: int = 0) -> dict:
        try:
            record = json.loads(raw["json"])
            label = self.check_label(record)
            if self.use == "raw":
                return self.raw_item(raw, record, seed)
            image = self.decode(raw)
        except (KeyError, ValueError, TypeError, OSError, SyntaxError, Image.DecompressionBombError) as error:
            if self.use == "plain" and isinstance(locals().get("record"), dict) and "id" in record:
                return self.refused_item(raw, record)  # evaluation goes on without it and lists it
            raise UserError(f"sample {raw.get('__key__')} of shard {raw.get('__url__')} cannot be decoded "
                            f"({type(error).__name__}: {error}): run `stellar-dist pack --verify` on the shards "
                            "folder and re-pack") from None
        true_label = record.get("true_label", label)
        item = {"id": record["id"], "label": label, "true_label": true_label}
        if self.use == "labeled":
            item["image"] = self.finish(augment.weak(image, generator, self.max_shift_fraction))
        elif self.use == "unlabeled":
            flux = self.stretch is not None
            for view in self.views:  # only the views the algorithm uses are computed
                item[view] = self.finish(
                    augment.strong(image, generator, kind=self.strong_view, flux=flux,
                                   max_shift_fraction=self.max_shift_fraction) if view.startswith("strong")
                    else augment.weak(image, generator, self.max_shift_fraction))
        else:
            item["image"] = self.finish(image)
            item["shard"] = shard_number(raw["__url__"])  # where to fetch it again without a pass over the split
            item["objid"] = integer_objid(record)
            item["valid"] = True
        return item

    def check_label(self, record: dict) -> int:
        label = record.get("label", -1)
        for value in (label, record.get("true_label", -1)):
            if not isinstance(value, int) or not -1 <= value < (self.num_classes or value + 1):
                raise ValueError(f"label {value!r} is not one of the {self.num_classes} classes' indices")
        return label

    def refused_item(self, raw: dict, record: dict) -> dict:
        """A sample that cannot be read (wrong size, too large, undecodable, bad label): a blank image marked
        invalid, so that evaluation counts it, lists its id and leaves it out of every metric."""
        channels = self.stretch.channels if self.stretch is not None else 3
        size = self.image_size or 8
        return {"id": int(record["id"]), "label": -1, "true_label": -1, "image": torch.zeros(channels, size, size),
                "shard": shard_number(raw["__url__"]), "objid": integer_objid(record), "valid": False}

    def raw_item(self, raw: dict, record: dict, seed: int) -> dict:
        """Decode only: the uint8 CHW image, its labels and the seed its views will be drawn from."""
        array = rgb_array(raw, self.encoding)
        label = record.get("label", -1)
        return {"id": record["id"], "label": label, "true_label": record.get("true_label", label),
                "image": torch.from_numpy(array.copy()).permute(2, 0, 1), "seed": seed}

    def finish(self, image: torch.Tensor) -> torch.Tensor:
        """N-band: the asinh stretch, after the augmentations acted on flux. 8-bit images are ready as they are."""
        return image if self.stretch is None else self.stretch.apply_asinh(image)


def rgb_array(raw: dict, encoding: str, size: int | None = None) -> np.ndarray:
    """An 8-bit sample's H x W x 3 uint8 pixels: PNG/JPEG decoded with Pillow, u8 arrays read as they are. With
    `size`, an image of any other size is refused from its header, before it is decoded."""
    if encoding == "u8":
        array = np.load(io.BytesIO(raw["u8"]), allow_pickle=False)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or \
                (size is not None and array.shape[:2] != (size, size)):
            raise ValueError(f"array of shape {array.shape} and type {array.dtype}, not {size or 'H'} x "
                             f"{size or 'W'} x 3 uint8")
        return array
    with Image.open(io.BytesIO(raw[encoding])) as image:
        if size is not None and image.size != (size, size):
            raise ValueError(f"image is {image.size[0]} x {image.size[1]} pixels, the shards hold {size} x {size}")
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def shard_number(path: str) -> int:
    """12 for .../unlabeled-000012.tar (names are checked against pack's pattern when the manifest is read)."""
    return int(Path(path).stem.rsplit("-", 1)[1])


def read_some(shards_dir: str | Path, wanted: dict[str, set[int]], ids: set[int]) -> dict[int, dict]:
    """The raw samples `ids`, reading only the shards named in `wanted` ({split: shard numbers})."""
    paths = [str(Path(shards_dir) / f"{split}-{number:06d}.tar") for split, numbers in wanted.items()
             for number in sorted(numbers)]
    return {int(raw["__key__"]): raw for raw in iter_samples(paths) if int(raw["__key__"]) in ids}


def picture(raw: dict, manifest: dict) -> np.ndarray:
    """A sample as an 8-bit RGB array for people (cluster grid, W&B tables); N-band: i, r, g as R, G, B."""
    if manifest["encoding"] == "npy":
        maker = ItemMaker.for_shards("plain", manifest)
        return bands.to_rgb(maker.finish(maker.decode(raw)), manifest.get("bands"))
    return rgb_array(raw, manifest["encoding"])


def collate(items: list[dict]) -> dict:
    return {key: torch.stack([item[key] for item in items]) if torch.is_tensor(items[0][key])
            else torch.tensor([item[key] for item in items]) for key in items[0]}


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def iter_samples(paths: list[str]):
    """Raw samples of local shard files, in order. Opened with `open()`, never through WebDataset's URL opener
    (which runs `pipe:` names in a shell); a shard that vanished or broke mid-run is a one-line error."""
    from webdataset.tariterators import (
        group_by_keys,  # here: commands that read no shard run without it
    )

    for path in paths:
        try:
            with open(path, "rb") as stream:
                yield from group_by_keys(_members(path, stream))
        except UserError:  # a refusal of ours keeps its own message
            raise
        except (OSError, tarfile.TarError, ValueError) as error:
            raise UserError(f"shard {path} can no longer be read ({type(error).__name__}: {error}): restore it "
                            "(`stellar-dist pack --verify` checks the folder), then resume=auto") from None


def _members(path: str, stream):
    """The regular files of a tar stream as WebDataset's {fname, data, __url__} records. A member over
    MAX_MEMBER_BYTES is not read: its sample gets a `too_large` member saying so, and is refused on its own."""
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if not member.isreg():
                continue
            if member.size > MAX_MEMBER_BYTES:
                note = f"shard member {member.name} is {member.size} bytes, over the {MAX_MEMBER_BYTES} byte cap"
                yield {"fname": member.name.split(".", 1)[0] + ".too_large", "data": note.encode(), "__url__": path}
                continue
            yield {"fname": member.name, "data": tar.extractfile(member).read(), "__url__": path}


class TrainStream(IterableDataset):
    """Endless batches from resampled shards; `start_batch` fast-forwards to a resumed step.

    With at least `world_size x workers` shards, each reader (rank, worker) resamples its own disjoint subset of
    them; with fewer, every reader resamples all shards (with its own seed), so no reader is ever left without data.
    """

    def __init__(self, shard_paths: list[str], make_item: ItemMaker, batch_size: int, *, seed: int, rank: int,
                 stream: str, world_size: int = 1, shuffle_buffer: int = 256, start_batch: int = 0,
                 accept: list[float] | None = None):
        """`accept`: per label, the probability of keeping a sample (class-balanced sampling); None keeps all."""
        self.shard_paths, self.make_item, self.batch_size = list(shard_paths), make_item, batch_size
        self.accept = accept
        self.seed, self.rank, self.world_size, self.stream_tag = seed, rank, world_size, STREAM_TAGS[stream]
        self.shuffle_buffer, self.start_batch = max(1, shuffle_buffer), start_batch

    def _shuffled(self, rng: np.random.Generator, shards: list[str]):
        buffer = []
        while True:
            shard = shards[int(rng.integers(len(shards)))]
            for raw in iter_samples([shard]):
                # Rejection draws use the stream's own generator: a resumed stream rejects the same samples.
                if self.accept is not None and rng.random() >= self.accept[json.loads(raw["json"])["label"]]:
                    continue
                buffer.append(raw)
                if len(buffer) >= self.shuffle_buffer:
                    yield buffer.pop(int(rng.integers(len(buffer))))

    def __iter__(self):
        worker_id, num_workers = _worker()
        # The loader's first batch comes from worker 0, but global batch `start_batch` was made by worker
        # start_batch % num_workers: each worker plays the role of the one whose turn it is.
        role = (self.start_batch + worker_id) % num_workers
        key = [self.seed, self.stream_tag, self.rank, role]
        rng = np.random.default_rng(key)
        samples_to_skip = len(range(role, self.start_batch, num_workers)) * self.batch_size
        readers, reader = self.world_size * num_workers, self.rank * num_workers + role
        shards = self.shard_paths[reader::readers] if len(self.shard_paths) >= readers else self.shard_paths
        generator, batch = torch.Generator(), []
        for position, raw in enumerate(self._shuffled(rng, shards)):
            if position < samples_to_skip:
                continue
            # One seed per sample position: the views do not depend on what was skipped before.
            seed = int(np.random.SeedSequence(key + [position]).generate_state(1)[0])
            generator.manual_seed(seed)
            batch.append(self.make_item(raw, generator, seed))
            if len(batch) == self.batch_size:
                yield collate(batch)
                batch = []


class OnceStream(IterableDataset):
    """Every sample of the given shards exactly once across `world_size` ranks x dataloader workers."""

    def __init__(self, shard_paths: list[str], make_item: ItemMaker, batch_size: int, *, rank: int,
                 world_size: int, keep=None):
        self.shard_paths, self.make_item, self.batch_size = list(shard_paths), make_item, batch_size
        self.rank, self.world_size = rank, world_size
        self.keep = keep  # optional filter on the raw sample, before it is decoded (clustering's bounded sample)

    def __iter__(self):
        worker_id, num_workers = _worker()
        readers, reader = self.world_size * num_workers, self.rank * num_workers + worker_id
        if len(self.shard_paths) >= readers:
            samples = iter_samples(self.shard_paths[reader::readers])
        else:  # fewer shards than readers: everyone reads all, keeps its own residue class
            samples = (raw for index, raw in enumerate(iter_samples(self.shard_paths)) if index % readers == reader)
        generator, batch = torch.Generator(), []
        for raw in samples:
            if self.keep is not None and not self.keep(raw):
                continue
            batch.append(self.make_item(raw, generator))
            if len(batch) == self.batch_size:
                yield collate(batch)
                batch = []
        if batch:
            yield collate(batch)


def shard_paths(shards_dir: str | Path, split: str) -> list[str]:
    """The split's non-empty shards (a shard whose images were all unreadable holds nothing to stream)."""
    manifest = load_manifest(shards_dir)
    return [str(Path(shards_dir) / entry["name"]) for entry in manifest["shards"][split] if entry["num_samples"]]


def _leave_interrupts_to_the_main_process(worker_id: int) -> None:
    """Ctrl-C reaches every process of the terminal's group: a worker would exit and the run could not finish
    its step and checkpoint. The main process decides (preemption.py)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(dataset: IterableDataset, num_workers: int, pin_memory: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=False, prefetch_factor=4 if num_workers else None,
                      worker_init_fn=_leave_interrupts_to_the_main_process if num_workers else None)
