"""`stellar-dist cluster`: k-means of a checkpoint's features: Hungarian accuracy, NMI, ARI, linear probe,
cluster grids.

    stellar-dist cluster --checkpoint runs/demo --shards data/sim-shards --k 15
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--checkpoint", required=True, help="a checkpoints/step_* folder, a run folder (its "
                        "latest) or a model folder, moved anywhere")
    parser.add_argument("--shards", required=True, help="packed shards (labeled + unlabeled are clustered)")
    parser.add_argument("--k", type=int, help="clusters (default: the run's cluster.k, 0 = 5 x classes)")
    parser.add_argument("--backend", choices=["auto", "faiss", "torch"], help="default: the run's cluster.backend")
    parser.add_argument("--out", help="folder for metrics.json and plots (default: RUN/cluster_step_N)")
    parser.add_argument("--workers", type=int, default=2, help="dataloader processes")
    return parser


def run(args: argparse.Namespace) -> None:
    from ..clustering.cluster_stage import format_cluster_report
    from ..inference.reports import cluster_checkpoint

    metrics = cluster_checkpoint(args.checkpoint, args.shards, args.k, args.backend, args.out, args.workers)
    print(format_cluster_report(metrics))
    sizes = metrics["cluster_sizes"]
    print(f"cluster sizes: {sizes}; matched classes: {metrics['cluster_to_class']}")
    print(f"wrote {metrics['out_dir']}/metrics.json, cluster_grid.png, cluster_table.png")
