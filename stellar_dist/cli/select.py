"""`stellar-dist select`: which unlabeled objects to get spectra for next (selection/select.py says how).

    stellar-dist select --shards data/shards --budget 50 --out targets.csv               # cold start: no model
    stellar-dist select --shards data/shards --budget 50 --out targets.csv --model runs/mine   # warm start
"""

from __future__ import annotations

import argparse

RULES = ("auto", "typical", "uncertain", "random")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--shards", required=True, help="packed shards: candidates are their unlabeled objects")
    parser.add_argument("--budget", type=int, required=True, help="how many objects to choose (spectra you can get)")
    parser.add_argument("--out", required=True, help="targets file: .csv, .parquet or .fits (+ a .png figure)")
    parser.add_argument("--model", help="a trained run, model or checkpoint folder: warm start from its features")
    parser.add_argument("--rule", choices=RULES, default="auto", help="auto (default): typical without a model, "
                        "uncertain with one")
    parser.add_argument("--seed", type=int, default=0, help="seeds the clustering (default 0)")
    parser.add_argument("--workers", type=int, default=2, help="processes decoding images")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return parser


def run(args: argparse.Namespace) -> None:
    from ..selection.select import select

    select(args.shards, args.budget, args.out, model=args.model, rule=args.rule, seed=args.seed,
           workers=args.workers, overwrite=args.overwrite)
