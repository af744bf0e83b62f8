"""Run under `accelerate launch` by test_ddp.py: each rank writes what the test compares.

    probe.py train OUT_DIR SHARDS   -> trains a few steps (FixMatch + DeepCluster head, re-clustering every 2 steps);
                                       OUT_DIR/rank{R}.pt: steps, parameters, test ids seen, cluster report
    probe.py grads OUT_DIR SHARDS   -> one FixMatch loss + backward on this rank's half of a fixed global batch
    probe.py cluster OUT_DIR SHARDS -> features of the initial EMA model and cluster tables (faiss and torch)
    probe.py state OUT_DIR SHARDS   -> FlexMatch and FreeMatch (+ distribution alignment) state after 3 steps on
                                       this rank's half of fixed global batches
"""

import sys
from pathlib import Path

import torch

from stellar_dist.core import dist
from stellar_dist.training.config import load_config
from stellar_dist.training.engine import setup, train_loop
from stellar_dist.training.evaluation import gather_predictions

TINY = ["cluster.k=6", "cluster.pca_dim=16", "model.arch=resnet18", "train.batch_size=4", "ssl.mu=2", "train.log_every_steps=2", "eval.every_steps=1000",
        "checkpoint.every_steps=1000", "data.num_workers=1", "data.shuffle_buffer=16", "ssl.threshold=0.5"]


def fixed_batch(global_size: int, image_size: int, seed: int = 0) -> tuple[dict, dict]:
    generator = torch.Generator().manual_seed(1234 + seed)
    labeled = {"image": torch.rand(global_size, 3, image_size, image_size, generator=generator),
               "label": torch.randint(3, (global_size,), generator=generator)}
    unlabeled = {"weak": torch.rand(2 * global_size, 3, image_size, image_size, generator=generator),
                 "strong": torch.rand(2 * global_size, 3, image_size, image_size, generator=generator),
                 "id": torch.arange(2 * global_size) * 3 + seed}
    return labeled, unlabeled


STATE_ALGORITHMS = {"flexmatch": ["ssl.threshold=0.36"],
                    "freematch": ["ssl.threshold=0.36", "ssl.distribution_alignment=true",
                                  "ssl.freematch.ema_momentum=0.5"],
                    "softmatch": ["ssl.softmatch.ema_momentum=0.5"]}


def algorithm_states(model, manifest, device, rank: int, shards: str, world_size: int = 2) -> dict:
    """Each algorithm's state after 3 steps on this rank's share of fixed global batches of 8 + 16."""
    from stellar_dist.algorithms import ALGORITHMS

    states = {}
    for name, overrides in STATE_ALGORITHMS.items():
        config = load_config(None, TINY + overrides + [f"ssl.algorithm={name}", f"data.shards={shards}"])
        algorithm = ALGORITHMS[name](config, manifest, device)
        for step in range(3):
            labeled, unlabeled = fixed_batch(8, 32, seed=step)
            per = 8 // world_size
            local_l = {key: value[rank * per : (rank + 1) * per] for key, value in labeled.items()}
            local_u = {key: value[rank * 2 * per : (rank + 1) * 2 * per] for key, value in unlabeled.items()}
            with torch.no_grad():
                algorithm.loss(model, local_l, local_u, step)
        states[name] = algorithm.state_dict()
    return states


def sampled_clustering(run, shards: str, local, out_dir: Path) -> dict:
    """The two-pass path of a catalog beyond the fit sample (limits made small), and assignments.csv written by
    every rank a few ids at a time."""
    from stellar_dist.clustering import gathered
    from stellar_dist.clustering.features import assign_kept, assign_stream, extract_features, plan_selection
    from stellar_dist.clustering.recluster import finish_clustering, fit_clustering

    passes = {"batch_size": 16, "num_workers": 1, "grayscale": False, "device": run.accelerator.device}
    selection = plan_selection(run.manifest, 5, fit_limit=60, probe_limit=20)
    sampled = extract_features(run.ema.module, shards, run.manifest, selection=selection, **passes)
    state, _ = fit_clustering(sampled, k=6, backend="torch", pca_dim=16, seed=0, iterations=10)
    assigned = assign_stream(run.ema.module, shards, run.manifest, state, **passes)
    state = finish_clustering(state, assigned, run.manifest["num_input"])
    full, reduced = fit_clustering(local, k=6, backend="torch", pca_dim=16, seed=0, iterations=10)
    streamed = assign_stream(run.ema.module, shards, run.manifest, full, **passes)
    kept = assign_kept(local, reduced, full.centroids)
    gathered.IDS_PER_ROUND = 37  # several rounds over the 200 ids
    world = run.accelerator.num_processes
    gathered.write_assignments(assigned, shards, out_dir / f"assignments_of{world}.csv", run.manifest["num_input"])
    return {"table_sampled": state.assignments, "kept_ids": dist.gather_variable(sampled.ids),
            "fit_ids": dist.gather_variable(sampled.ids[sampled.fit]),
            "streamed": dist.gather_variable(torch.stack([streamed.ids, streamed.assignment.long()], 1)),
            "kept": dist.gather_variable(torch.stack([kept.ids, kept.assignment.long()], 1)),
            "streamed_distance": dist.gather_variable(streamed.distance),
            "kept_distance": dist.gather_variable(kept.distance)}


def main() -> None:
    mode, out_dir, shards = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    extra = ["cluster.lambda_c=0.5", "cluster.every_steps=2"] if mode == "train" else []  # DeepCluster head too
    config = load_config(None, TINY + extra + [f"data.shards={shards}", f"output_dir={out_dir / 'run'}",
                                               "train.steps=4"])
    run = setup(config)
    rank = run.accelerator.process_index
    if mode == "train":
        steps = train_loop(run)
        predictions = gather_predictions(run.ema.module, shards, run.manifest, batch_size=8, num_workers=1,
                                         grayscale=False, device=run.accelerator.device)
        clusters = run.head.final_report(steps, out_dir / "run")  # the final cluster report, made on rank 0
        parameters = torch.cat([p.detach().flatten() for p in run.accelerator.unwrap_model(run.model).parameters()])
        torch.save({"steps": steps, "parameters": parameters, "test_ids": torch.as_tensor(predictions["id"]),
                    "cluster_scored": torch.tensor(clusters["num_scored"] if clusters else -1),
                    "cluster_sizes": torch.tensor(clusters["cluster_sizes"] if clusters else [])},
                   out_dir / f"rank{rank}.pt")
    elif mode == "cluster":
        from stellar_dist.clustering.features import extract_features
        from stellar_dist.clustering.recluster import recluster

        local = extract_features(run.ema.module, shards, run.manifest, batch_size=16, num_workers=1,
                                 grayscale=False, device=run.accelerator.device)
        result = {"ids": dist.gather_variable(local.ids), "features": dist.gather_variable(local.features)}
        for backend in ("faiss", "torch"):
            state, _ = recluster(local, k=6, num_ids=run.manifest["num_input"], backend=backend, pca_dim=16,
                                    seed=0, iterations=10)
            result[f"table_{backend}"], result[f"inertia_{backend}"] = state.assignments, torch.tensor(state.inertia)
        result |= sampled_clustering(run, shards, local, out_dir)
        torch.save(result, out_dir / f"cluster{rank}_of{run.accelerator.num_processes}.pt")
    elif mode == "state":
        run.model.eval()  # frozen batch-norm statistics, so that both ranks' logits equal one process's
        torch.save(algorithm_states(run.model, run.manifest, run.accelerator.device, rank, shards),
                   out_dir / f"state{rank}.pt")
    else:
        run.model.eval()  # frozen batch-norm statistics: per-device BN is the one intended difference
        labeled, unlabeled = fixed_batch(8, 32)
        half = slice(rank * 4, rank * 4 + 4), slice(rank * 8, rank * 8 + 8)
        local_l = {key: value[half[0]] for key, value in labeled.items()}
        local_u = {key: value[half[1]] for key, value in unlabeled.items()}
        loss, _ = run.algorithm.loss(run.model, local_l, local_u, step=0)
        run.accelerator.backward(loss)
        grads = torch.cat([p.grad.flatten() for p in run.accelerator.unwrap_model(run.model).parameters()])
        mean_loss = dist.all_reduce_sum(loss.detach()) / dist.world_size()
        torch.save({"loss": mean_loss, "grads": grads}, out_dir / f"grads{rank}.pt")
    run.tracker.finish()


if __name__ == "__main__":
    try:
        main()
    finally:
        dist.close()  # as every command does: a group left to the interpreter's exit can abort a rank (SIGABRT)
