"""Training diagnostics summed over a log interval on each rank, then over ranks; the run's phase times and peak
memory (metrics.json).

Per step, everything stays where it was computed: device values are added on the device and host counts on the
host, so a step never waits for the GPU; the one synchronisation is `reduce`, once per log interval."""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

from ..core import dist


class IntervalStats:
    """Sums over a log interval on this rank; `reduce` adds them over ranks."""

    def __init__(self, num_classes: int, device: torch.device):
        self.num_classes, self.device = num_classes, device
        # sup loss, unsup loss, steps, accepted, pseudo-labelled, correct, known accepted, images, cluster loss
        self.scalars = torch.zeros(9, device=device, dtype=torch.float64)
        self.host = [0.0, 0.0, 0.0]  # steps, pseudo-labelled samples, images: known on the host, never copied back
        self.per_class = torch.zeros(2, num_classes, device=device, dtype=torch.float64)

    def add(self, stats: dict, unlabeled: dict | None, images: int) -> None:
        """`images`: images forwarded this step (labeled + weak + strong views)."""
        zero = torch.zeros((), device=self.device)
        values = [stats.get("sup_loss", zero), stats.get("unsup_loss", zero), zero, zero, zero, zero, zero, zero,
                  stats.get("cluster_loss", zero)]
        self.host[0] += 1
        self.host[2] += images
        if "mask" in stats:
            mask, pseudo = stats["mask"], stats["pseudo_labels"]
            known = unlabeled["true_label"] >= 0
            correct = (pseudo == unlabeled["true_label"]).double() * mask * known
            values[3], values[5], values[6] = mask.sum(), correct.sum(), (mask * known).sum()
            self.host[1] += mask.numel()
            self.per_class[0].index_add_(0, pseudo, mask.double())
            self.per_class[1].index_add_(0, pseudo, torch.ones_like(mask, dtype=torch.float64))
        self.scalars += torch.stack([value.detach().to(self.device, torch.float64) for value in values])

    def reduce(self, classes: list[str]) -> dict:
        self.scalars[2], self.scalars[4], self.scalars[7] = self.host
        self.host = [0.0, 0.0, 0.0]
        scalars, per_class = dist.all_reduce_sum(self.scalars), dist.all_reduce_sum(self.per_class)
        steps = max(scalars[2].item(), 1.0) / dist.world_size()
        per_step = steps * dist.world_size()
        metrics = {"train/sup_loss": scalars[0].item() / per_step, "train/unsup_loss": scalars[1].item() / per_step,
                   "train/cluster_loss": scalars[8].item() / per_step}
        if scalars[4] > 0 and per_class[1].sum() > 0:
            metrics["train/mask_ratio"] = scalars[3].item() / scalars[4].item()
            metrics["train/pseudo_label_accuracy"] = scalars[5].item() / scalars[6].item() if scalars[6] > 0 else None
            accepted = per_class[0].sum().item()
            for index, name in enumerate(classes):
                count = per_class[1, index].item()
                metrics[f"train/mask_ratio/{name}"] = per_class[0, index].item() / count if count else None
                # the class mix of the pseudo-labels that train: a starved class is far below its share of the data
                metrics[f"train/pseudo_label_share/{name}"] = per_class[0, index].item() / accepted if accepted else None
        self.scalars.zero_(), self.per_class.zero_()
        return metrics | {"train/images": scalars[7].item()}


@contextmanager
def phase(seconds: dict, name: str):
    """Add the wall time of the `with` block to seconds[name] (metrics.json's phase_seconds)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started


def peak_rss_mb_of_this_process() -> float:
    """This process's peak resident memory so far, in MB (Linux reports ru_maxrss in kB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
