"""The DeepCluster head's whole life in one place (as solo-learn's DeepCluster-v2): whether a run has one and how
big it is, when to re-cluster, re-clustering (k-means on the EMA features, then a fresh head whose optimizer state
and EMA copy are reset), the targets of each unlabeled batch, the final cluster report, and its state in
checkpoints.

Built once by the session from objects (model, EMA, optimizer, config, evaluation data, tracker), never from the
run; the training loop only asks `targets(batch)` and `due(step)`; the checkpoint collector (training/state.py)
asks `state_dict` / `load_state_dict`, the model folder `portable_tensors` / `portable_description`, resuming
`must_match(config)`. Which algorithms have a head is the algorithm's `cluster_head` ("always", "optional",
"never"), passed in: this file names no algorithm.

    head = ClusterHead(model, ema, optimizer, config, data, tracker, trains_classifier=True, world_size=2,
                       unlabeled_samples=manifest["num_samples"]["unlabeled"])
    head.start(step)                       # the first clustering, unless a checkpoint brought one
    cluster = head.targets(unlabeled)      # (targets, cluster weights) or None when the run has no head
    if head.due(step): head.recluster(step)
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch

from ..data.eval_data import EvalData
from .cluster_stage import num_clusters, run_clustering
from .recluster import ClusterState


def wanted(policy: str, options) -> bool:
    """Does this run train a cluster head: `policy` is the algorithm's cluster_head ("always": DeepCluster alone;
    "optional": beside the others when cluster.lambda_c > 0; "never"); `options` the config's cluster section."""
    return policy == "always" or (policy == "optional" and options.lambda_c > 0)


def head_size(policy: str, options, num_classes: int) -> int:
    """Outputs of the model's cluster head (0: none)."""
    return num_clusters(options, num_classes) if wanted(policy, options) else 0


def must_match(config) -> dict:
    """What a run's checkpoints fix for its head: a change makes them unusable (another head, other targets)."""
    return {"cluster.lambda_c>0": config.cluster.lambda_c > 0, "cluster.k": config.cluster.k}


class ClusterHead:
    def __init__(self, model: torch.nn.Module, ema, optimizer: torch.optim.Optimizer, config, data: EvalData,
                 tracker, *, trains_classifier: bool, world_size: int, unlabeled_samples: int):
        self.model, self.ema, self.optimizer = model, ema, optimizer  # model: unwrapped (no DDP wrapper)
        self.options, self.seed, self.data, self.tracker = config.cluster, config.seed, data, tracker
        self.active = model.cluster_head is not None
        self.state: ClusterState | None = None  # the latest clustering (the head's targets when active)
        self.every_steps = self._period(config, trains_classifier, world_size, unlabeled_samples)

    @staticmethod
    def _period(config, trains_classifier: bool, world_size: int, unlabeled_samples: int) -> int:
        """Re-clustering period; without a class head (DeepCluster alone) once per epoch-equivalent of its
        unlabeled stream (`unlabeled_samples` images) unless cluster.every_steps says otherwise."""
        if config.cluster.every_steps or trains_classifier:
            return config.cluster.every_steps
        per_step = config.train.batch_size * config.ssl.mu * world_size
        return max(1, math.ceil(unlabeled_samples / per_step))

    # -- the training loop's questions ---------------------------------------------------------------------
    def start(self, step: int) -> None:
        if self.active and self.state is None:
            self.recluster(step)

    def due(self, done: int, total: int) -> bool:
        return bool(self.every_steps) and done % self.every_steps == 0 and done != total

    def targets(self, unlabeled: dict | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(cluster of each unlabeled sample, loss weight per cluster), looked up on the device; None without a
        head."""
        if not self.active:
            return None
        return self.state.assignments[unlabeled["id"]].long(), self.state.cluster_weights

    # -- clustering ----------------------------------------------------------------------------------------
    def recluster(self, step: int) -> dict | None:
        """New k-means targets from the EMA features (all ranks); a freshly seeded head, without the old head's
        momentum, in the model and its EMA."""
        self.state, metrics = run_clustering(self.ema.module, self.options, self.data, seed=self.seed,
                                             num_reclusterings=self._done(), probe=False)
        if self.active:
            self.model.reset_cluster_head(torch.Generator().manual_seed(self.seed * 1000 +
                                                                        self.state.num_reclusterings))
            for parameter in self.model.cluster_head.parameters():
                self.optimizer.state.pop(parameter, None)  # stale momentum for a head that means something new
            self.ema.module.cluster_head.load_state_dict(self.model.cluster_head.state_dict())
        self._log(metrics, step)
        return metrics

    def final_report(self, step: int, output_dir: Path) -> dict | None:
        """The end-of-run clustering with plots and assignments.csv. It never replaces an active head's targets
        (those stay what the head was trained on); without a head it becomes the run's clustering (predict's
        clusters). Seeded like the next re-clustering, so re-reporting a finished run gives the same numbers; in full
        precision, as `stellar-dist cluster` re-reports it."""
        state, metrics = run_clustering(self.ema.module, self.options, replace(self.data, autocast_dtype=None),
                                        seed=self.seed,
                                        num_reclusterings=self._done(), plots_dir=output_dir / "plots",
                                        assignments=output_dir / "assignments.csv")
        if not self.active:
            self.state = state
        self._log(metrics, step, plots=True)
        return metrics

    def _done(self) -> int:
        """Re-clusterings so far, which seed the next k-means (a run without a head counts none: its clusterings
        are reports, seeded alike)."""
        return self.state.num_reclusterings if self.state is not None and self.active else 0

    def _log(self, metrics: dict | None, step: int, plots: bool = False) -> None:
        if metrics is None:  # not the main process
            return
        probe = {"cluster/linear_probe_accuracy": metrics["linear_probe"]["accuracy"]} if "linear_probe" in metrics \
            else {}  # the final report's only
        self.tracker.log({"cluster/accuracy": metrics["accuracy"], "cluster/nmi": metrics["nmi"],
                          "cluster/ari": metrics["ari"], "cluster/inertia": metrics["inertia"], **probe}, step)
        if plots:
            self.tracker.log_images({f"cluster/{name}": Path(path) for name, path in metrics["plots"].items()}, step)

    # -- checkpoints and the model folder -------------------------------------------------------------------
    @property
    def has_clustering(self) -> bool:
        return self.state is not None

    def portable_tensors(self) -> dict:
        """The latest clustering's space (PCA mean and projection, centroids) for the model folder, so that
        predict can name each object's cluster; none without a clustering."""
        if self.state is None:
            return {}
        tensors = {"cluster.centroids": self.state.centroids}
        if self.state.pca_projection is not None:
            tensors |= {"cluster.pca_mean": self.state.pca_mean, "cluster.pca_projection": self.state.pca_projection}
        return tensors

    def portable_description(self) -> dict | None:
        """The model folder's "cluster" entry: k, predict's `unusual` thresholds, the space (None: no clustering)."""
        state = self.state
        if state is None:
            return None
        return {"k": int(state.centroids.shape[0]), "far_distance": state.far_distance,
                # the 99th percentile of the training features' whitened distance (None: no PCA)
                "far_feature_distance": None if math.isinf(state.far_feature_distance) else state.far_feature_distance,
                "space": "L2-normalised whitened PCA of the backbone features" if state.pca_projection is not None
                else "L2-normalised backbone features"}

    def state_dict(self) -> dict | None:
        return None if self.state is None else self.state.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        self.state = None if state is None else ClusterState.from_state_dict(state, self.data.device)
