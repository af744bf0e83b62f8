"""Side-by-side montage of simulated vs real cutouts, per class (writes docs/montage.png).

    stellar-dist simulate --out data/sim --num 400
    python docs/montage.py --simulated data/sim --real ../shared/sdss_dr16 --out docs/montage.png
"""

import argparse
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

PER_CLASS = 6


def _tiles(catalog_dir: Path, cls: str, seed: int) -> list[Image.Image]:
    catalog = pd.read_csv(catalog_dir / "catalog.csv")
    rows = catalog[catalog["Class"] == cls].sample(PER_CLASS, random_state=seed)
    return [Image.open(catalog_dir / path).convert("RGB").resize((128, 128)) for path in rows["image_path"]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--simulated", type=Path, required=True)
    parser.add_argument("--real", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("docs/montage.png"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    classes = ["GALAXY", "QSO", "STAR"]
    gap, label = 16, 18
    montage = Image.new("RGB", (2 * PER_CLASS * 128 + gap, len(classes) * (128 + label)), "white")
    draw = ImageDraw.Draw(montage)
    for row, cls in enumerate(classes):
        top = row * (128 + label)
        for side, folder in enumerate((args.simulated, args.real)):
            left = side * (PER_CLASS * 128 + gap)
            draw.text((left + 4, top + 3), f"{cls} ({'simulated' if side == 0 else 'real SDSS DR16'})", fill="black")
            for column, tile in enumerate(_tiles(folder, cls, args.seed)):
                montage.paste(tile, (left + column * 128, top + label))
    montage.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
