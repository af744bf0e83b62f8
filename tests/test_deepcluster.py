"""DeepCluster in training (cluster head, re-clustering, resume) and `stellar-dist cluster`, one process."""

import json
import shutil

import numpy as np
import torch
from safetensors.torch import load_file

from conftest import TEST_ARCH, run_cli, train

CLUSTER = ["cluster.every_steps=3", "cluster.lambda_c=0.5", "cluster.k=6", "cluster.pca_dim=16",
           "cluster.grid_clusters=4"]


def test_resume_restores_cluster_state(sim_shards, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    train(f"data.shards={sim_shards}", f"output_dir={full}", *CLUSTER)
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step_0000003", resumed / "checkpoints" / "step_0000003")
    (resumed / "checkpoints" / "latest").write_text("step_0000003\n")
    train(f"data.shards={sim_shards}", f"output_dir={resumed}", "resume=auto", *CLUSTER)
    state_full = torch.load(full / "checkpoints" / "step_0000006" / "trainer_state.pt", weights_only=True)
    state_resumed = torch.load(resumed / "checkpoints" / "step_0000006" / "trainer_state.pt", weights_only=True)
    # the head's targets: clustered at the start and at step 3 (the final report does not replace them)
    assert state_full["cluster"]["num_reclusterings"] == 2
    for key in ("assignments", "centroids", "cluster_weights"):
        assert torch.equal(state_full["cluster"][key], state_resumed["cluster"][key]), key
    weights_full = load_file(full / "checkpoints" / "step_0000006" / "model.safetensors")
    weights_resumed = load_file(resumed / "checkpoints" / "step_0000006" / "model.safetensors")
    assert "cluster_head.weight" in weights_full
    assert all(torch.equal(value, weights_resumed[key]) for key, value in weights_full.items())
    metrics = json.loads((full / "metrics.json").read_text())["cluster"]
    assert metrics["k"] == 6 and sum(metrics["cluster_sizes"]) == 160 and 0 <= metrics["nmi"] <= 1
    assert sum(map(sum, metrics["cluster_class_table"])) == metrics["num_scored"] == 80  # labeled + test
    assert (full / "plots" / "cluster_grid.png").stat().st_size > 0
    log = [json.loads(line) for line in (full / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log if "cluster/accuracy" in row] == [0, 3, 6]
    assert all(row["train/cluster_loss"] > 0 for row in log if "train/cluster_loss" in row)


def test_deepcluster_alone_and_the_cluster_command(sim_shards, tmp_path):
    out = tmp_path / "dc"
    result = train(f"data.shards={sim_shards}", f"output_dir={out}", "ssl.algorithm=deepcluster", "cluster.k=6",
                   "cluster.pca_dim=16", "cluster.backend=torch")
    assert "linear probe" in result.stdout and "Hungarian accuracy" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["algorithm"] == "deepcluster" and "test" not in metrics  # no class head: no test report
    assert set(metrics["cluster"]["linear_probe"]) >= {"accuracy", "macro_f1"}
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    # 40 labeled + 120 unlabeled images / (4 x 2 per step) = 20 steps per epoch-equivalent > 6 steps: clustered
    # at the start and the end only
    assert [row["step"] for row in log if "cluster/nmi" in row] == [0, 6]
    assert all(row["train/sup_loss"] == 0 for row in log if "train/sup_loss" in row)
    report = run_cli("cluster", "--checkpoint", str(out), "--shards", str(sim_shards), "--k", "3",
                     "--backend", "faiss")
    assert "clusters k=3: Hungarian accuracy" in report.stdout
    saved = json.loads((out / "cluster_step_0000006" / "metrics.json").read_text())["cluster"]
    assert saved["k"] == 3 and len(saved["cluster_sizes"]) == 3
    assert (out / "cluster_step_0000006" / "cluster_grid.png").exists()
    import pandas as pd

    for table, k in ((out / "assignments.csv", 6), (out / "cluster_step_0000006" / "assignments.csv", 3)):
        rows = pd.read_csv(table, dtype={"objid": str})
        assert len(rows) == 200 and rows["id"].is_monotonic_increasing and rows["objid"].str.len().min() == 19
        assert set(rows["split"]) == {"labeled", "unlabeled", "test"} and rows["cluster"].between(0, k - 1).all()
        assert (rows["distance"] >= 0).all()
    fit = rows[rows["split"] != "test"]  # cluster sizes count the samples the clusters were fit on
    assert np.bincount(fit["cluster"], minlength=3).tolist() == saved["cluster_sizes"]


def test_deepcluster_reads_every_training_image_labels_unread(sim_catalog, tmp_path):
    """Shards whose training pool is all labeled (no unlabeled split) still pretrain: DeepCluster's stream is the
    labeled and unlabeled images alike, and an epoch-equivalent counts them all (160 / 8 = 20 steps)."""
    shards, out = tmp_path / "all_labeled", tmp_path / "dc"
    run_cli("pack", "--catalog", str(sim_catalog), "--out", str(shards), "--labeled-fraction", "0.8",
            "--test-fraction", "0.2", "--image-size", "32", "--shard-size", "40", "--workers", "0")
    assert not json.loads((shards / "manifest.json").read_text())["shards"].get("unlabeled")
    train(f"data.shards={shards}", f"output_dir={out}", "ssl.algorithm=deepcluster", "cluster.k=6",
          "cluster.pca_dim=8", "train.steps=21", "eval.every_steps=0", "checkpoint.every_steps=0")
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log if "cluster/nmi" in row] == [0, 20, 21]
    assert sum(json.loads((out / "metrics.json").read_text())["cluster"]["cluster_sizes"]) == 160


def test_pretraining_then_fine_tuning_is_one_resumable_command(sim_shards, tmp_path):
    """pretrain.steps: DeepCluster on the unlabeled images in OUT/pretrain, then the algorithm from its final EMA
    backbone in OUT; the command run again continues (stage 1 is never trained twice)."""
    out = tmp_path / "two"
    stages = ["pretrain.steps=4", "train.steps=4", "checkpoint.every_steps=2", "eval.every_steps=0",
              "cluster.k=6", "cluster.pca_dim=8", "ssl.algorithm=softmatch"]
    result = train(f"data.shards={sim_shards}", f"output_dir={out}", *stages)
    assert "stage 1 of 2" in result.stdout and "stage 2 of 2" in result.stdout
    first = json.loads((out / "pretrain" / "metrics.json").read_text())
    assert first["algorithm"] == "deepcluster" and first["steps"] == 4 and "linear_probe" in first["cluster"]
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    weights = (out / "pretrain" / "checkpoints" / "step_0000004" / "model" / "model.safetensors").resolve()
    assert saved["model"]["weights"] == str(weights) and saved["ssl"]["algorithm"] == "softmatch"
    # stage 2 starts from stage 1's backbone: model.weights loads every backbone tensor of that checkpoint
    from stellar_dist.model.network import StellarNet

    pretrained = load_file(weights)
    model = StellarNet(TEST_ARCH, 3, str(weights))
    loaded = {f"backbone.{key}": value for key, value in model.backbone.state_dict().items()}
    backbone = [key for key in pretrained if key.startswith("backbone.") and pretrained[key].is_floating_point()]
    assert len(backbone) > 10 and all(torch.equal(loaded[key], pretrained[key]) for key in backbone)
    final = json.loads((out / "metrics.json").read_text())
    assert final["algorithm"] == "softmatch" and "test" in final
    log_before = (out / "pretrain" / "log.jsonl").read_text()
    again = train(f"data.shards={sim_shards}", f"output_dir={out}", *stages, "resume=auto", "train.steps=6")
    assert "stage 1 of 2" not in again.stdout and "resumed from" in again.stdout
    assert (out / "pretrain" / "log.jsonl").read_text() == log_before
    assert json.loads((out / "metrics.json").read_text())["steps"] == 6


def test_a_catalog_beyond_the_fit_sample_is_assigned_in_a_second_pass(sim_shards, tmp_path):
    """cluster.fit_samples below the 160 labeled + unlabeled samples: PCA and k-means see a sample of about 100,
    and every sample still gets a cluster in the table, the sizes and assignments.csv."""
    out = tmp_path / "sampled"
    train(f"data.shards={sim_shards}", f"output_dir={out}", "cluster.k=6", "cluster.pca_dim=16",
          "cluster.fit_samples=100", "cluster.probe_samples=30")
    metrics = json.loads((out / "metrics.json").read_text())["cluster"]
    assert sum(metrics["cluster_sizes"]) == 160 and metrics["num_scored"] == 80  # every sample, not the fit sample
    rows = (out / "assignments.csv").read_text().splitlines()[1:]
    assert len(rows) == 200 and len({row.split(",")[0] for row in rows}) == 200
    assert {row.split(",")[2] for row in rows} == {"labeled", "unlabeled", "test"}
    assert 0 <= metrics["nmi"] <= 1 and set(metrics["linear_probe"]) >= {"accuracy", "macro_f1"}
