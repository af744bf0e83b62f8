"""`stellar-dist` command line: simulate, pack, train, predict, export, evaluate, cluster, select, config.

`stellar-dist train` runs the training engine in this process (one CPU or one GPU); for several processes use
`accelerate launch ... -m stellar_dist.train` or launch/train.py (see stellar_dist/train.py).
"""

from __future__ import annotations

import argparse
import sys

from .errors import exit_on_user_error


HELP = {  # each subcommand's line in `stellar-dist --help`
    "simulate": "render SDSS-like cutouts (the embedded default dataset)",
    "pack": "pack a catalog into WebDataset shards; --verify re-checks shards",
    "train": "train from packed shards in this process (see stellar_dist/train.py for accelerate launch)",
    "predict": "classify new objects (CSV, folder of images or shards) with a trained model",
    "export": "the model as TorchScript or ONNX, checked against PyTorch",
    "evaluate": "test-split report for a checkpoint's EMA model",
    "cluster": "k-means of a checkpoint's features: Hungarian accuracy, NMI, ARI, linear probe, cluster grids",
    "select": "which unlabeled objects to get spectra for next (cold start, or warm from a trained model)",
    "config": "print the resolved config of --config + overrides, or (--keys) every key with its meaning",
}


def _add_simulate(commands) -> None:
    parser = commands.add_parser("simulate", help=HELP["simulate"])
    parser.add_argument("--out", required=True, help="new folder for images/ and catalog.csv")
    parser.add_argument("--num", type=int, required=True, help="number of objects")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the rendering (default 0)")
    parser.add_argument("--workers", type=int, default=0, help="processes (0 = all cores)")
    parser.add_argument("--format", choices=["jpg", "fits", "both"], default="jpg",
                        help="jpg: gri colour composites like SkyServer's; fits: ugriz FITS cutouts (one HDU per "
                             "band); both: both, with catalog.csv (JPEG) and catalog_fits.csv (FITS)")


def _add_pack(commands) -> None:
    parser = commands.add_parser("pack", help=HELP["pack"])
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


def _add_train(commands) -> None:
    from .train import add_arguments

    add_arguments(commands.add_parser("train", help=HELP["train"]))


def _run_train(args) -> None:
    from .train import run

    run(args)


def _add_predict(commands) -> None:
    from .inference.predict import add_arguments

    add_arguments(commands.add_parser("predict", help=HELP["predict"]))


def _run_predict(args) -> None:
    from .inference.predict import run

    run(args)


def _add_export(commands) -> None:
    from .inference.export import add_arguments

    add_arguments(commands.add_parser("export", help=HELP["export"]))


def _run_export(args) -> None:
    from .inference.export import run

    run(args)


def _add_evaluate(commands) -> None:
    parser = commands.add_parser("evaluate", help=HELP["evaluate"])
    parser.add_argument("--checkpoint", help="a checkpoints/step_* folder, a run folder (its "
                        "latest) or a model folder, moved anywhere")
    parser.add_argument("--shards", help="packed shards whose test split to evaluate")
    parser.add_argument("--folds", nargs="+", metavar="RUN", help="instead: pool the test predictions of the runs "
                        "of `pack --fold 1/K ... K/K` (a cross-validated report over every spectrum)")
    parser.add_argument("--out", help="folder for metrics.json and plots (default: RUN/eval_step_N)")
    parser.add_argument("--workers", type=int, default=2, help="dataloader processes")


def _run_evaluate(args) -> None:
    from .errors import UserError
    from .evaluate import format_report
    from .inference.reports import evaluate_checkpoint

    if args.folds:
        from .crossval import format_pooled, pooled_report

        print(format_pooled(pooled_report(args.folds, args.out)))
        return
    if not args.checkpoint or not args.shards:
        raise UserError("evaluate needs --checkpoint RUN and --shards SHARDS (or --folds RUN1 RUN2 ...)")
    report = evaluate_checkpoint(args.checkpoint, args.shards, args.out, args.workers)
    print(format_report(report))
    print(f"wrote {report['out_dir']}/metrics.json and confusion_matrix.png")


def _add_cluster(commands) -> None:
    parser = commands.add_parser("cluster", help=HELP["cluster"])
    parser.add_argument("--checkpoint", required=True, help="a checkpoints/step_* folder, a run folder (its "
                        "latest) or a model folder, moved anywhere")
    parser.add_argument("--shards", required=True, help="packed shards (labeled + unlabeled are clustered)")
    parser.add_argument("--k", type=int, help="clusters (default: the run's cluster.k, 0 = 5 x classes)")
    parser.add_argument("--backend", choices=["auto", "faiss", "torch"], help="default: the run's cluster.backend")
    parser.add_argument("--out", help="folder for metrics.json and plots (default: RUN/cluster_step_N)")
    parser.add_argument("--workers", type=int, default=2, help="dataloader processes")


def _run_cluster(args) -> None:
    from .clustering.cluster_stage import format_cluster_report
    from .inference.reports import cluster_checkpoint

    metrics = cluster_checkpoint(args.checkpoint, args.shards, args.k, args.backend, args.out, args.workers)
    print(format_cluster_report(metrics))
    sizes = metrics["cluster_sizes"]
    print(f"cluster sizes: {sizes}; matched classes: {metrics['cluster_to_class']}")
    print(f"wrote {metrics['out_dir']}/metrics.json, cluster_grid.png, cluster_table.png")


def _add_select(commands) -> None:
    from .selection.select import add_arguments

    add_arguments(commands.add_parser("select", help=HELP["select"]))


def _run_select(args) -> None:
    from .selection.select import run

    run(args)


def _add_config(commands) -> None:
    from .config_keys import add_arguments

    add_arguments(commands.add_parser("config", help=HELP["config"]))


def _run_config(args) -> None:
    from .config_keys import run

    run(args)


def _run_simulate(args) -> None:
    from .data.simulate import simulate

    path = simulate(args.out, args.num, seed=args.seed, workers=args.workers, image_format=args.format)
    print(f"wrote {args.num} cutouts and {path}")


def _run_pack(args) -> None:
    from .errors import UserError
    from .data.manifest import verify
    from .data.pack import PackOptions, pack

    if args.verify:
        summary = verify(args.verify)
        print(f"OK: {summary['shards']} shards, {summary['samples']} samples match {args.verify}/manifest.json")
        return
    if args.merge:
        from .data.pack_parts import merge_parts

        manifest = merge_parts(args.merge, overwrite=args.overwrite)
        counts = ", ".join(f"{split} {count}" for split, count in manifest["num_samples"].items())
        print(f"merged {counts} into {args.merge}")
        return
    if not args.catalog or not args.out:
        raise UserError("pack needs --catalog CSV_OR_DIR and --out SHARDS (or --verify SHARDS, or --merge SHARDS)")
    options = PackOptions(
        labeled_fraction=args.labeled_fraction, test_fraction=args.test_fraction, labeled_count=args.labeled_count,
        validation_fraction=args.validation_fraction, image_size=args.image_size,
        preprocess=args.preprocess, encoding=args.encoding, seed=args.seed, labeled_seed=args.labeled_seed,
        pixel_scale=args.pixel_scale,
        shard_size=args.shard_size,
        workers=args.workers, strict=args.strict, bands=args.bands, path_column=args.path_column,
        label_column=args.label_column, id_column=args.id_column, fold=args.fold, labels=args.labels,
    )
    if args.part:
        from .data.pack_parts import pack_part, parse_part

        part, num_parts = parse_part(args.part)
        record = pack_part(args.catalog, args.out, options, part, num_parts, overwrite=args.overwrite)
        print(f"part {part} of {num_parts}: {len(record['results'])} shard(s) ready; after every part: "
              f"stellar-dist pack --merge {args.out}")
        return
    manifest = pack(args.catalog, args.out, options, overwrite=args.overwrite)
    rate = manifest["num_input"] / max(manifest["pack_seconds"], 1e-9)
    counts = ", ".join(f"{split} {count}" for split, count in manifest["num_samples"].items())
    print(f"packed {counts} into {args.out} ({manifest['pack_seconds']:.1f} s, {rate:.0f} images/s)")
    from .data.summary import split_summary

    print(split_summary(manifest, args.out))
    if manifest["skipped"]:
        print(f"skipped {len(manifest['skipped'])} unreadable image(s), listed in {args.out}/manifest.json "
              f"under 'skipped'; first: {manifest['skipped'][0]['image_path']}: {manifest['skipped'][0]['reason']}")
    if manifest.get("duplicates"):
        first = manifest["duplicates"][0]
        print(f"packed once: {len(manifest['duplicates'])} catalog row(s) repeat an image of an earlier row, listed "
              f"in {args.out}/manifest.json under 'duplicates'; first: {first['image_path']} is {first['reason']} "
              f"as {first['duplicate_of']}")


COMMANDS = {  # name: the function that adds its subparser and arguments
    "simulate": _add_simulate, "pack": _add_pack, "train": _add_train, "predict": _add_predict,
    "export": _add_export, "evaluate": _add_evaluate, "cluster": _add_cluster, "select": _add_select, "config": _add_config}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Every subcommand is listed, but only the one named in `argv` gets its arguments (and imports what defines
    them): `stellar-dist --help` and `stellar-dist pack --help` answer in well under a second, without torch."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    try:
        installed = version("stellar-dist")
    except PackageNotFoundError:  # run from a checkout without `pip install`
        installed = __version__
    parser = argparse.ArgumentParser(prog="stellar-dist", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"stellar-dist {installed}")
    commands = parser.add_subparsers(dest="command", required=True)
    named = next((word for word in (sys.argv[1:] if argv is None else argv) if word in COMMANDS), None)
    for name, add in COMMANDS.items():
        if name == named or named is None:
            add(commands) if name == named else commands.add_parser(name, help=HELP[name])
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser(argv).parse_args(argv)
    if getattr(args, "workers", 0) < 0:
        from .errors import UserError

        raise UserError(f"--workers must be 0 or more (got {args.workers})")
    runners = {"simulate": _run_simulate, "pack": _run_pack, "train": _run_train, "predict": _run_predict,
               "export": _run_export, "evaluate": _run_evaluate, "cluster": _run_cluster, "select": _run_select, "config": _run_config}
    runners[args.command](args)


if __name__ == "__main__":
    main(sys.argv[1:])
