"""Real 2-process DDP on gloo through `accelerate launch` (accelerate_configs/cpu_ddp.yaml)."""

import socket
import subprocess
import sys

import torch

from conftest import REPO_ROOT
from ddp_probe import TINY, fixed_batch


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(*args: str) -> None:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO_ROOT / "accelerate_configs" / "cpu_ddp.yaml"), "--main_process_port", str(free_port()),
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
    assert [line["step"] for line in lines] == [2, 4]  # only the main process writes the log


def test_ddp_gradients_match_one_process_with_the_global_batch(sim_shards, tmp_path):
    from stellar_dist.config import load_config
    from stellar_dist.engine import compute_loss
    from stellar_dist.models import StellarNet
    from accelerate.utils import set_seed

    launch("grads", str(tmp_path), str(sim_shards))
    ddp = torch.load(tmp_path / "grads0.pt", weights_only=True)
    assert torch.equal(ddp["grads"], torch.load(tmp_path / "grads1.pt", weights_only=True)["grads"])
    config = load_config(None, TINY + [f"data.shards={sim_shards}"])
    set_seed(config.seed)
    model = StellarNet("resnet18", 3).eval()
    labeled, unlabeled = fixed_batch(8, 32)
    loss, _ = compute_loss(model, labeled, unlabeled, config)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert torch.allclose(ddp["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
    assert torch.allclose(ddp["grads"], grads, rtol=1e-4, atol=1e-6)
