"""One clustering stage, as training and `stellar-dist cluster` run it: extract a bounded sample -> fit PCA and
k-means -> assign every sample -> (report)."""

from __future__ import annotations

from pathlib import Path

from ..core import dist
from ..core.config import ClusterConfig
from ..data.eval_data import EvalData
from .cluster_report import (
    cluster_metrics,
    linear_probe,
    plot_cluster_grid,
    plot_cluster_table,
)
from .features import assign_kept, assign_stream, extract_features, plan_selection
from .gathered import gather_report, write_assignments
from .recluster import ClusterState, finish_clustering, fit_clustering


def num_clusters(cluster: ClusterConfig, num_classes: int) -> int:
    return cluster.k or 5 * num_classes


def run_clustering(model, cluster: ClusterConfig, data: EvalData, *, seed: int, num_reclusterings: int = 0,
                   report: bool = True, plots_dir: Path | None = None, assignments: Path | None = None,
                   probe: bool = True) -> tuple[ClusterState, dict | None]:
    """Cluster the features of `model` (all ranks take part); metrics on the main process when `report` (and
    the per-sample `assignments` CSV when given; the linear probe when `probe`: a single-threaded fit on rank 0
    that the other ranks would wait for at every re-clustering, so the training loop leaves it to the final
    report)."""
    shards_dir, manifest = data.shards, data.manifest
    k = num_clusters(cluster, len(manifest["classes"]))
    selection = plan_selection(manifest, seed + num_reclusterings, cluster.fit_samples, cluster.probe_samples)
    passes = {"batch_size": data.batch_size, "num_workers": data.num_workers, "grayscale": data.grayscale,
              "device": data.device, "autocast_dtype": data.autocast_dtype}
    local = extract_features(model, shards_dir, manifest, selection=selection, **passes)
    state, reduced = fit_clustering(local, k=k, backend=cluster.backend, pca_dim=cluster.pca_dim, seed=seed,
                                    iterations=cluster.iterations, num_reclusterings=num_reclusterings)
    # A catalog beyond the sample is streamed again (each sample reduced and assigned as it passes, no feature kept)
    assigned = (assign_kept(local, reduced, state.centroids) if selection.complete
                else assign_stream(model, shards_dir, manifest, state, **passes))
    state = finish_clustering(state, assigned, manifest["num_input"])
    if not report:
        return state, None
    samples = gather_report(assigned, local, k)
    if assignments is not None:
        # every rank sends its rows, id range by id range
        write_assignments(assigned, shards_dir, assignments, manifest["num_input"])
    if samples is None or not dist.is_main():
        return state, None
    classes = manifest["classes"]
    metrics = cluster_metrics(samples, state, classes)
    if probe:
        metrics["linear_probe"] = linear_probe(samples, classes, seed)
    if plots_dir is not None:
        metrics["plots"] = {
            "cluster_grid": str(plot_cluster_grid(shards_dir, manifest, samples, state, metrics,
                                                  plots_dir / "cluster_grid.png", cluster.grid_clusters)),
            "cluster_table": str(plot_cluster_table(metrics, plots_dir / "cluster_table.png")),
        }
    return state, metrics


def format_cluster_report(metrics: dict) -> str:
    probe = metrics["linear_probe"]
    return (f"clusters k={metrics['k']}: Hungarian accuracy {metrics['accuracy']:.4f}  NMI {metrics['nmi']:.4f}  "
            f"ARI {metrics['ari']:.4f}  (on {metrics['num_scored']} labeled + test samples)\n"
            f"linear probe (labeled -> test): accuracy {probe['accuracy']:.4f}  macro-F1 {probe['macro_f1']:.4f}")
