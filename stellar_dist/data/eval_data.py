"""One bundle of what every pass over the shards without augmentation needs (evaluation, clustering, reports)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EvalData:
    shards: str  # the shards folder (manifest.json beside the splits)
    manifest: dict
    batch_size: int  # per device (eval.batch_size)
    num_workers: int  # dataloader processes per rank
    grayscale: bool  # the run's data.grayscale: images are seen as in training
    device: torch.device

    @classmethod
    def from_config(cls, config, manifest: dict, device: torch.device, num_workers: int | None = None) -> "EvalData":
        workers = config.data.num_workers if num_workers is None else num_workers
        return cls(str(config.data.shards), manifest, config.eval.batch_size, workers, config.data.grayscale, device)
