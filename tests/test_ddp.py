"""Real 2-process DDP on gloo through `accelerate launch` (accelerate_configs/cpu_ddp.yaml)."""

import subprocess
import sys

import torch

from conftest import REPO_ROOT, free_port
from ddp_probe import TINY, fixed_batch


def launch(*args: str, config: str = "cpu_ddp.yaml") -> None:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO_ROOT / "accelerate_configs" / config), "--main_process_port", str(free_port()),
               str(REPO_ROOT / "tests" / "ddp_probe.py"), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT / "tests")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_two_ranks_train_in_step_and_cover_the_test_split_once(sim_shards, tmp_path):
    import json

    launch("train", str(tmp_path), str(sim_shards))
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["steps"] == rank1["steps"] == 4
    assert torch.equal(rank0["parameters"], rank1["parameters"])
    manifest = json.loads((sim_shards / "manifest.json").read_text())
    test_ids = rank0["test_ids"].tolist()
    assert len(test_ids) == len(set(test_ids)) == manifest["num_samples"]["test"]
    lines = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "train/sup_loss" in line] == [2, 4]  # only the main process logs
    assert [line["step"] for line in lines if "cluster/nmi" in line] == [0, 2, 4]
    assert all(line["train/cluster_loss"] > 0 for line in lines if "train/cluster_loss" in line)
    assert rank0["cluster_scored"] == 80 and rank1["cluster_scored"] == -1  # cluster report on rank 0 only
    assert rank0["cluster_sizes"].sum() == 160
    assert (tmp_path / "run" / "plots" / "cluster_grid.png").stat().st_size > 0


def test_ddp_gradients_match_one_process_with_the_global_batch(sim_shards, tmp_path):
    from stellar_dist.algorithms import ALGORITHMS
    from stellar_dist.training.config import load_config
    from stellar_dist.data.manifest import load_manifest
    from stellar_dist.model.network import StellarNet
    from accelerate.utils import set_seed

    launch("grads", str(tmp_path), str(sim_shards))
    ddp = torch.load(tmp_path / "grads0.pt", weights_only=True)
    assert torch.equal(ddp["grads"], torch.load(tmp_path / "grads1.pt", weights_only=True)["grads"])
    config = load_config(None, TINY + [f"data.shards={sim_shards}"])
    set_seed(config.seed)
    model = StellarNet("resnet18", 3).eval()
    labeled, unlabeled = fixed_batch(8, 32)
    algorithm = ALGORITHMS["fixmatch"](config, load_manifest(sim_shards), torch.device("cpu"))
    loss, _ = algorithm.loss(model, labeled, unlabeled, step=0)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert torch.allclose(ddp["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
    assert torch.allclose(ddp["grads"], grads, rtol=1e-4, atol=1e-6)


def test_two_rank_clustering_equals_one_rank(sim_shards, tmp_path):
    launch("cluster", str(tmp_path), str(sim_shards))
    launch("cluster", str(tmp_path), str(sim_shards), config="cpu.yaml")
    rank0, rank1, single = (torch.load(tmp_path / name, weights_only=True)
                            for name in ("cluster0_of2.pt", "cluster1_of2.pt", "cluster0_of1.pt"))
    # Gathered features: the same ids and values as one process computing them all.
    order2, order1 = torch.argsort(rank0["ids"]), torch.argsort(single["ids"])
    assert torch.equal(rank0["ids"][order2], single["ids"][order1])
    assert len(set(single["ids"].tolist())) == len(single["ids"]) == 200
    assert torch.allclose(rank0["features"][order2], single["features"][order1], atol=1e-4, rtol=1e-4)
    for backend in ("faiss", "torch"):
        table = rank0[f"table_{backend}"]
        assert torch.equal(table, rank1[f"table_{backend}"])  # every rank holds the same assignment table
        assert (table >= 0).sum() == 160  # labeled + unlabeled clustered, test not
        assert torch.equal(table, single[f"table_{backend}"]), backend  # 2 ranks == 1 rank
        assert abs(rank0[f"inertia_{backend}"] - single[f"inertia_{backend}"]) < 1e-3 * single[f"inertia_{backend}"]
    assert abs(single["inertia_faiss"] - single["inertia_torch"]) < 0.01 * single["inertia_torch"]
    # A catalog beyond the fit sample (limits 60 fit, 20 probe): pass 1 keeps a bounded sample chosen by id, the
    # same on 1 and 2 ranks; pass 2 assigns every sample; the clusters and assignments.csv do not depend on ranks.
    fit_ids = set(single["fit_ids"].tolist())
    assert set(rank0["fit_ids"].tolist()) == fit_ids and 40 <= len(fit_ids) <= 85
    assert len(single["kept_ids"]) < 130  # of 200: the fit sample plus at most ~20 probe rows of each split
    assert torch.equal(rank0["table_sampled"], single["table_sampled"])
    assert (single["table_sampled"] >= 0).sum() == 160  # every labeled + unlabeled sample, not only the fit ones
    for result in (rank0, single):  # streaming pass 2 gives exactly what the kept features give
        streamed, kept = (result[name][torch.argsort(result[name][:, 0])] for name in ("streamed", "kept"))
        assert torch.equal(streamed, kept)
        assert torch.allclose(result["streamed_distance"].sort().values, result["kept_distance"].sort().values,
                              atol=1e-5)
    written = [[line.split(",") for line in (tmp_path / f"assignments_of{world}.csv").read_text().splitlines()]
               for world in (1, 2)]
    assert written[0][0] == written[1][0] == ["id", "objid", "split", "cluster", "distance"]
    assert [row[:4] for row in written[0]] == [row[:4] for row in written[1]] and len(written[0]) == 201
    assert [int(row[0]) for row in written[0][1:]] == sorted(single["ids"].tolist())  # every sample, id order
    assert all(abs(float(a[4]) - float(b[4])) < 1e-3 for a, b in zip(written[0][1:], written[1][1:]))
