"""Input pipeline samples/s per dataloader worker: ours against a per-file `Dataset` of the original design, over the
same cutouts, in the same run (medians of --repeats).

    python bench/data_speed.py --catalog ../shared/sdss_dr16/catalog.csv --out runs/bench/data --workers 1 2

One unlabeled FixMatch sample = a weak and a strong view of one 64 px cutout. Rows:
- naive: CSV -> PIL open -> RGB -> 64 px (BOX) -> torchvision v2 flips / 90-degree turn / reflect-padded crop, and
  the same + RandAugment(2) + RandomErasing for the strong view; per sample, in the workers;
- workers (png): our shard stream, views per sample in the workers (data.augment_on=workers, the CPU default);
- device (png) / device (u8): our shard stream with data.augment_on=device: workers only read and decode (PNG, or
  the uint8 arrays of `--encoding u8`: no decode); the views are made batched on the training device (their
  rate on this machine's CPU, one thread, is printed apart: a GPU makes them in a fraction of that time).
Writes OUT/data_speed.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from stellar_dist.data.batch_augment import make_views  # noqa: E402
from stellar_dist.data.catalog import read_catalog  # noqa: E402
from stellar_dist.data.manifest import load_manifest  # noqa: E402
from stellar_dist.data.streams import ItemMaker, TrainStream, make_loader, shard_paths  # noqa: E402

BATCH = 64


class PerFileDataset(torch.utils.data.Dataset):
    """The original design: one image file per sample, decoded, resized and augmented per sample."""

    def __init__(self, paths: list[str], size: int):
        from torchvision.transforms import v2

        self.paths, self.size = paths, size
        weak = [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(),
                v2.RandomChoice([v2.RandomRotation((angle, angle)) for angle in (0, 90, 180, 270)]),
                v2.RandomCrop(size, padding=size // 8, padding_mode="reflect")]
        self.weak = v2.Compose([v2.PILToTensor(), *weak, v2.ToDtype(torch.float32, scale=True)])
        self.strong = v2.Compose([v2.PILToTensor(), *weak, v2.RandAugment(num_ops=2),
                                  v2.ToDtype(torch.float32, scale=True), v2.RandomErasing(p=1.0, value=0)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        from PIL import Image

        with Image.open(self.paths[index]) as image:
            image = image.convert("RGB").resize((self.size, self.size), Image.Resampling.BOX)
        return {"weak": self.weak(image), "strong": self.strong(image)}


def rate(loader, batches: int, warmup: int = 3) -> float:
    """Samples/s the loader delivers when nothing else runs in this process (the workers' throughput)."""
    iterator = iter(loader)
    for _ in range(warmup):  # worker start-up and the first shard opens
        next(iterator)
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * BATCH / (time.perf_counter() - started)


def views_rate(shards: Path, batches: int) -> float:
    """Samples/s of the batched weak + strong views on this machine's CPU, one thread (a GPU's job in training)."""
    batch = next(iter(stream(shards, "raw", 0)))
    started = time.perf_counter()
    for _ in range(batches):
        make_views(batch["image"], batch["seed"], ("weak", "strong"))
    return batches * BATCH / (time.perf_counter() - started)


def pack(catalog: str, out: Path, encoding: str) -> Path:
    shards = out / f"shards-{encoding}"
    if not (shards / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "stellar_dist", "pack", "--catalog", catalog, "--out", str(shards),
                        "--image-size", "64", "--encoding", encoding, "--shard-size", "500"], check=True, cwd=REPO)
    return shards


def stream(shards: Path, use: str, workers: int) -> torch.utils.data.DataLoader:
    manifest = load_manifest(shards)
    maker = ItemMaker.for_shards(use, manifest, views=("weak", "strong"))
    return make_loader(TrainStream(shard_paths(shards, "unlabeled"), maker, BATCH, seed=0, rank=0,
                                   stream="unlabeled"), workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", default="../shared/sdss_dr16/catalog.csv")
    parser.add_argument("--out", default="runs/bench/data")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    catalog = str(Path(args.catalog).resolve())
    png, u8 = pack(catalog, out, "png"), pack(catalog, out, "u8")
    paths = read_catalog(catalog)["image_path"].tolist()
    torch.set_num_threads(1)  # the main process only collects batches (and makes the batched views, timed apart)
    rows = []
    for workers in args.workers:
        naive = torch.utils.data.DataLoader(PerFileDataset(paths, 64), batch_size=BATCH, shuffle=True,
                                            num_workers=workers, persistent_workers=False, prefetch_factor=4)
        variants = {"naive": naive, "workers (png)": stream(png, "unlabeled", workers),
                    "device (png)": stream(png, "raw", workers), "device (u8)": stream(u8, "raw", workers)}
        for name, loader in variants.items():
            loader_rate = statistics.median(rate(loader, args.batches) for _ in range(args.repeats))
            rows.append({"variant": name, "workers": workers, "samples_per_s": loader_rate,
                         "samples_per_s_per_worker": loader_rate / workers})
            print(f"{name:15s} workers={workers}: {loader_rate:7.0f} samples/s ({loader_rate / workers:6.0f} per "
                  "worker)", flush=True)
    views = statistics.median(views_rate(u8, args.batches) for _ in range(args.repeats))
    print(f"batched weak + strong views on this CPU (1 thread): {views:.0f} samples/s", flush=True)
    naive_rates = {row["workers"]: row["samples_per_s"] for row in rows if row["variant"] == "naive"}
    for row in rows:
        row["vs_naive"] = row["samples_per_s"] / naive_rates[row["workers"]]
    (out / "data_speed.json").write_text(json.dumps({"rows": rows, "batched_views_per_s_cpu_1_thread": views},
                                                    indent=2))
    print("\n| variant | workers | samples/s | per worker | vs naive |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['workers']} | {row['samples_per_s']:.0f} | "
              f"{row['samples_per_s_per_worker']:.0f} | {row['vs_naive']:.2f}x |")


if __name__ == "__main__":
    main()
