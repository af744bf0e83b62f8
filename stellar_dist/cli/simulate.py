"""`stellar-dist simulate`: render SDSS-like cutouts (the embedded default dataset).

    stellar-dist simulate --out data/sim --num 1500
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--out", required=True, help="new folder for images/ and catalog.csv")
    parser.add_argument("--num", type=int, required=True, help="number of objects")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the rendering (default 0)")
    parser.add_argument("--workers", type=int, default=0, help="processes (0 = all cores)")
    parser.add_argument("--format", choices=["jpg", "fits", "both"], default="jpg",
                        help="jpg: gri colour composites like SkyServer's; fits: ugriz FITS cutouts (one HDU per "
                             "band); both: both, with catalog.csv (JPEG) and catalog_fits.csv (FITS)")
    return parser


def run(args: argparse.Namespace) -> None:
    from ..data.simulate import simulate

    path = simulate(args.out, args.num, seed=args.seed, workers=args.workers, image_format=args.format)
    print(f"wrote {args.num} cutouts and {path}")
