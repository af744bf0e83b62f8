"""`stellar-dist pack`: a catalog into WebDataset shards (see shards/README.md); --verify re-checks shards, --part /
--merge pack a large catalog as a job array (slurm/pack.sbatch).

    stellar-dist pack --catalog data/sim/catalog.csv --out data/sim-shards --labeled-fraction 0.1
"""

from __future__ import annotations

import argparse
import dataclasses


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--catalog", help="table (CSV, FITS, ECSV, parquet) with image_path,Class[,objid,...] "
                        "or a folder per class; image_path may point to FITS cutouts (see shards/README.md)")
    parser.add_argument("--out", help="new folder for the shards and manifest.json")
    parser.add_argument("--verify", metavar="SHARDS", help="re-check counts and hashes of packed shards")
    parser.add_argument("--labeled-fraction", type=float, default=0.0, help="benchmark: hide the classes of a "
                        "labeled catalog except this fraction of each class (default: none hidden: every row with "
                        "a class is labeled or test, every row without one unlabeled)")
    parser.add_argument("--labeled-count", type=int, default=0, help="benchmark: instead, this many labels in all, "
                        "one per class first, then by class share; nested (N labels contain every smaller set)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="fraction of each class held out for "
                        "the test split (default 0.2; at least one per class); 0: no test split, every spectrum "
                        "trains")
    parser.add_argument("--fold", default="", metavar="I/K", help="cross-validation: the test split is fold I of K "
                        "of every class (K packs test each spectrum once; `stellar-dist evaluate --folds` pools them)")
    parser.add_argument("--labels", default="", metavar="FILE", help="a table of id and class (new spectra) joined "
                        "onto the catalog by --id-column, without editing the catalog")
    parser.add_argument("--validation-fraction", type=float, default=0.0, help="> 0: shards for choosing a recipe: "
                        "their test split is this fraction of each class carved from the training pool, and the "
                        "real test rows are left out")
    parser.add_argument("--image-size", type=int, default=64, help="pixels per side of the packed images (default 64)")
    parser.add_argument("--preprocess", choices=["resize", "crop"], default="resize",
                        help="resize: whole field, area-averaged (default); crop: centre crop at full resolution")
    parser.add_argument("--encoding", choices=["png", "jpg", "u8"], default="png",
                        help="png: lossless (default); jpg: quality 95, ~3x smaller; u8: raw uint8 arrays, ~2x "
                             "larger than png, read without decoding (the fastest input path)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split into labeled / unlabeled / test "
                        "(default 0; the same seed gives the same test split)")
    parser.add_argument("--pixel-scale", type=float, default=0.0, help="arcsec per pixel of the input images "
                        "(SDSS: 0.396), for the figures' scale bars (default 0: a FITS cutout's WCS, else unknown)")
    parser.add_argument("--labeled-seed", type=int, default=-1, help="draw the labeled objects with this seed "
                        "instead, keeping --seed's test and validation rows (default -1: --seed decides)")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    parser.add_argument("--workers", type=int, default=0, help="processes (0 = all cores)")
    parser.add_argument("--strict", action="store_true", help="abort on an unreadable image instead of skipping it")
    parser.add_argument("--bands", default="", help="FITS cutouts: band names in channel order, e.g. u,g,r,i,z "
                        "(default: the first file's EXTNAMEs; required when image_path contains {band})")
    parser.add_argument("--path-column", default="image_path", help="the catalog's column of image paths "
                        "(default image_path)")
    parser.add_argument("--label-column", default="Class", help="the catalog's column of classes (default Class; "
                        "SDSS tables: class); an empty cell means unlabeled")
    parser.add_argument("--id-column", default="objid", help="the catalog's object id column, kept in the shards "
                        "and outputs (default objid; e.g. specObjID)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out (atomically)")
    parser.add_argument("--part", metavar="I/N", help="write only part I of N (a job array task; see slurm/pack.sbatch)")
    parser.add_argument("--merge", metavar="OUT", help="merge the finished parts of OUT into OUT (writes the manifest)")
    return parser


def run(args: argparse.Namespace) -> None:
    from ..core.errors import UserError
    from ..data.manifest import verify
    from ..data.pack import PackOptions, pack

    if args.verify:
        summary = verify(args.verify)
        print(f"OK: {summary['shards']} shards, {summary['samples']} samples match {args.verify}/manifest.json")
        return
    if args.merge:
        from ..data.pack_parts import merge_parts

        manifest = merge_parts(args.merge, overwrite=args.overwrite)
        counts = ", ".join(f"{split} {count}" for split, count in manifest["num_samples"].items())
        print(f"merged {counts} into {args.merge}")
        return
    if not args.catalog or not args.out:
        raise UserError("pack needs --catalog CSV_OR_DIR and --out SHARDS (or --verify SHARDS, or --merge SHARDS)")
    # every PackOptions field is an option of the same name (argparse spells --labeled-fraction labeled_fraction)
    options = PackOptions(**{field.name: getattr(args, field.name) for field in dataclasses.fields(PackOptions)})
    if args.part:
        from ..data.pack_parts import pack_part, parse_part

        part, num_parts = parse_part(args.part)
        record = pack_part(args.catalog, args.out, options, part, num_parts, overwrite=args.overwrite)
        print(f"part {part} of {num_parts}: {len(record['results'])} shard(s) ready; after every part: "
              f"stellar-dist pack --merge {args.out}")
        return
    manifest = pack(args.catalog, args.out, options, overwrite=args.overwrite)
    rate = manifest["num_input"] / max(manifest["pack_seconds"], 1e-9)
    counts = ", ".join(f"{split} {count}" for split, count in manifest["num_samples"].items())
    print(f"packed {counts} into {args.out} ({manifest['pack_seconds']:.1f} s, {rate:.0f} images/s)")
    from ..data.summary import split_summary

    print(split_summary(manifest, args.out))
    if manifest["skipped"]:
        print(f"skipped {len(manifest['skipped'])} unreadable image(s), listed in {args.out}/manifest.json "
              f"under 'skipped'; first: {manifest['skipped'][0]['image_path']}: {manifest['skipped'][0]['reason']}")
    if manifest.get("duplicates"):
        first = manifest["duplicates"][0]
        print(f"packed once: {len(manifest['duplicates'])} catalog row(s) repeat an image of an earlier row, listed "
              f"in {args.out}/manifest.json under 'duplicates'; first: {first['image_path']} is {first['reason']} "
              f"as {first['duplicate_of']}")
