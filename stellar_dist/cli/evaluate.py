"""`stellar-dist evaluate`: the test-split report of a checkpoint's EMA model, or (--folds) the pooled report of
cross-validation runs.

    stellar-dist evaluate --checkpoint runs/demo --shards data/sim-shards
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--checkpoint", help="a checkpoints/step_* folder, a run folder (its "
                        "latest) or a model folder, moved anywhere")
    parser.add_argument("--shards", help="packed shards whose test split to evaluate")
    parser.add_argument("--folds", nargs="+", metavar="RUN", help="instead: pool the test predictions of the runs "
                        "of `pack --fold 1/K ... K/K` (a cross-validated report over every spectrum)")
    parser.add_argument("--out", help="folder for metrics.json and plots (default: RUN/eval_step_N)")
    parser.add_argument("--workers", type=int, default=2, help="dataloader processes")
    return parser


def run(args: argparse.Namespace) -> None:
    from ..core.errors import UserError
    from ..core.metrics import format_report
    from ..inference.reports import evaluate_checkpoint

    if args.folds:
        from ..inference.crossval import format_pooled, pooled_report

        print(format_pooled(pooled_report(args.folds, args.out)))
        return
    if not args.checkpoint or not args.shards:
        raise UserError("evaluate needs --checkpoint RUN and --shards SHARDS (or --folds RUN1 RUN2 ...)")
    report = evaluate_checkpoint(args.checkpoint, args.shards, args.out, args.workers)
    print(format_report(report))
    print(f"wrote {report['out_dir']}/metrics.json and confusion_matrix.png")
