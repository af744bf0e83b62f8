"""How often predict's `unusual` flag fires: on images like the training ones, under a domain shift, on outliers.

    python bench/unusual.py --model runs/demo --same data/sim/catalog.csv \
        --shifted ../shared/sdss_dr16/catalog.csv --out bench/results/unusual.json

`--same`: a catalog of images like the model's training images (the Quickstart's simulated cutouts); `--shifted`:
real cutouts the model never saw the like of (SDSS JPEGs for a model trained on simulations). Outliers are made
from the shifted images: noise fields, blank sky, saturated (x6) and striped (every 4th column at 255), 25 each.
For each set: the share flagged `unusual`, the share beyond the calibrated feature distance (99th percentile of the
training images: 1% expected on images like them), the share of low max probability, and whether predict's
domain-shift warning fires. `--num` images are drawn from each catalog (seeded).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def sample_paths(catalog: Path, num: int, rng) -> list[str]:
    frame = pd.read_csv(catalog, dtype=str)
    rows = frame.iloc[np.sort(rng.choice(len(frame), min(num, len(frame)), replace=False))]
    return [str(catalog.parent / path) for path in rows["image_path"]]


def outliers(paths: list[str], folder: Path, rng) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for index, path in enumerate(paths[:100]):
        pixels = np.asarray(Image.open(path).convert("RGB")).astype(np.float64)
        kind = index % 4
        if kind == 0:
            pixels = rng.uniform(0, 255, pixels.shape)  # noise field
        elif kind == 1:
            pixels = np.full_like(pixels, 5.0)  # blank sky
        elif kind == 2:
            pixels = np.clip(pixels * 6, 0, 255)  # saturated
        else:
            pixels[:, ::4] = 255  # bad columns
        made.append(str(folder / f"{index:03d}.png"))
        Image.fromarray(pixels.astype(np.uint8)).save(made[-1])
    return made


def measure(model: str, paths: list[str]) -> dict:
    from stellar_dist.inference.catalog import predictions

    message = io.StringIO()
    with redirect_stderr(message):
        frame = predictions(model, paths)
    read = frame[frame["rejected_reason"] == ""]
    description = json.loads((Path(model) / "model" / "config.json").read_text()) \
        if (Path(model) / "model").is_dir() else json.loads((Path(model) / "config.json").read_text())
    far = description["cluster"]["far_feature_distance"]
    return {"images": len(read), "unusual": float(read["unusual"].mean()),
            "beyond_feature_distance": float((read["feature_distance"] > far).mean()),
            "low_max_probability": float((read["max_probability"] < 0.6).mean()),
            "median_feature_distance": float(read["feature_distance"].median()), "threshold": far,
            "shift_warning": "warning:" in message.getvalue()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--same", required=True, help="catalog of images like the training ones")
    parser.add_argument("--shifted", required=True, help="catalog of images from another domain")
    parser.add_argument("--num", type=int, default=400)
    parser.add_argument("--out", default="bench/results/unusual.json")
    parser.add_argument("--scratch", default="/tmp/stellar-unusual")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    same, shifted = sample_paths(Path(args.same), args.num, rng), sample_paths(Path(args.shifted), args.num, rng)
    sets = {"like the training images": same, "domain shift": shifted,
            "outliers (made from the shifted images)": outliers(shifted, Path(args.scratch), rng)}
    results = {name: measure(args.model, paths) for name, paths in sets.items()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "same": args.same, "shifted": args.shifted,
                                          "results": results}, indent=2) + "\n")
    print("| images | n | unusual | beyond the feature distance (1% expected) | max p < 0.6 | median distance | "
          "shift warning |\n|---|---|---|---|---|---|---|")
    for name, row in results.items():
        print(f"| {name} | {row['images']} | {row['unusual']:.3f} | {row['beyond_feature_distance']:.3f} | "
              f"{row['low_max_probability']:.3f} | {row['median_feature_distance']:.2f} | "
              f"{'yes' if row['shift_warning'] else 'no'} |")


if __name__ == "__main__":
    sys.exit(main())
