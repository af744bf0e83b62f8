"""A training run's streams: the labeled and the unlabeled stream of this rank (WebDataset shards, DataLoader
workers, streams.TrainStream), each step's next batches on the device, and where the views are made (workers or
the device, data.augment_on). Built from the config's data section, the manifest and what the algorithm reads.

    batches = TrainingBatches(config, manifest, algorithm, device, rank, world_size, start_step)
    labeled, unlabeled = batches.next()     # dicts of tensors on the device (None: a stream the algorithm skips)
"""

from __future__ import annotations

import time

import torch

from ..core.errors import UserError
from ..data.batch_augment import make_views
from ..data.streams import ItemMaker, TrainStream, make_loader, shard_paths


def balanced_acceptance(manifest: dict) -> list[float]:
    """Per label, the probability of keeping a labeled sample so that every class is drawn equally often."""
    counts = [manifest["counts"]["labeled"].get(name, 0) for name in manifest["classes"]]
    rarest = min(count for count in counts if count > 0)
    return [rarest / count if count else 0.0 for count in counts]


def augment_on_device(data, manifest: dict, device: torch.device) -> bool:
    """Where the views are made (data.augment_on). The device path covers 8-bit RGB shards (either strong view);
    anything else is refused when asked for explicitly, and made in the workers under "auto"."""
    supported = manifest["encoding"] != "npy" and not data.grayscale
    if data.augment_on == "device" and not supported:
        raise UserError("data.augment_on=device makes views of 8-bit RGB shards without data.grayscale: use "
                        "data.augment_on=workers for these shards and options")
    if data.augment_on == "auto":
        return supported and device.type == "cuda"
    return data.augment_on == "device"


class TrainingBatches:
    def __init__(self, config, manifest: dict, algorithm, device: torch.device, rank: int, world_size: int,
                 start_step: int):
        data = config.data
        self.device, self.data, self.unlabeled_views = device, data, algorithm.unlabeled_views
        self.loader_wait_s = 0.0  # blocked on next(loader) since the last pop_loader_wait_s
        self.view_times: list = []  # (start, end) of each batch's device views: CUDA events, or perf_counter on CPUs
        on_device = augment_on_device(data, manifest, device)

        def stream(split: str, make_item: ItemMaker, batch_size: int, accept=None, splits: tuple[str, ...] = ()):
            paths = [path for name in splits or (split,) for path in shard_paths(data.shards, name)]
            if not paths:
                raise UserError(f"{data.shards} has no {split} shards: re-pack with a larger fraction")
            # start_batch: a resumed run continues the exact data order
            train_stream = TrainStream(paths, make_item, batch_size, seed=config.seed, rank=rank, stream=split,
                                       world_size=world_size, shuffle_buffer=data.shuffle_buffer,
                                       start_batch=start_step, accept=accept)
            return iter(make_loader(train_stream, data.num_workers, pin_memory=device.type == "cuda"))

        self.labeled = self.unlabeled = None
        if algorithm.needs_labeled:
            accept = balanced_acceptance(manifest) if data.balanced_labeled else None
            self.labeled = stream("labeled", ItemMaker.for_shards("raw" if on_device else "labeled", manifest,
                                                                  data.grayscale,
                                                                  max_shift_fraction=data.max_shift_fraction),
                                  config.train.batch_size, accept)
        if algorithm.unlabeled_views:
            make_item = ItemMaker.for_shards("raw" if on_device else "unlabeled", manifest, data.grayscale,
                                             views=algorithm.unlabeled_views, strong_view=data.strong_view,
                                             max_shift_fraction=data.max_shift_fraction)
            self.unlabeled = stream("unlabeled", make_item, config.train.batch_size * config.ssl.mu,
                                    splits=algorithm.unlabeled_splits)

    def pop_loader_wait_s(self) -> float:
        """Seconds spent blocked on the loaders since the last call (train/data_wait_share)."""
        waited, self.loader_wait_s = self.loader_wait_s, 0.0
        return waited

    def pop_view_s(self) -> float:
        """Seconds the device spent making views since the last call (train/device_views_share). On a GPU, from
        events recorded around each batch's views and read here, at a log step (reading them waits for them)."""
        times, self.view_times = self.view_times, []
        if self.device.type != "cuda":
            return sum(end - start for start, end in times)
        if times:
            times[-1][1].synchronize()  # the last one recorded: on one stream, every earlier one has ended too
        return sum(start.elapsed_time(end) for start, end in times) / 1000

    def next(self) -> tuple[dict | None, dict | None]:
        return (self._next(self.labeled, ("image",)),
                self._next(self.unlabeled, self.unlabeled_views, self.data.strong_view))

    def _next(self, iterator, views: tuple[str, ...], kind: str = "sky") -> dict | None:
        """The stream's next batch on the device; a raw batch (uint8 images + seeds) gets its views made there."""
        if iterator is None:
            return None
        waiting_since = time.perf_counter()
        raw = next(iterator)  # the only wait for data: making views on the device is the step's work, not a wait
        self.loader_wait_s += time.perf_counter() - waiting_since
        batch = {key: value.to(self.device, non_blocking=True) for key, value in raw.items()}
        if "seed" not in batch:
            return batch
        images, seeds = batch.pop("image"), batch.pop("seed")
        start = self._mark()
        made = make_views(images, seeds, views, kind, self.data.max_shift_fraction)
        self.view_times.append((start, self._mark()))
        return batch | made

    def _mark(self):
        """Now, on the device's clock: a recorded CUDA event (read later, without waiting now), else the time."""
        if self.device.type != "cuda":
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event
