"""The portable model folder: written with every checkpoint and at the end, loadable alone (no run, no shards)."""

import json
import shutil

import torch

from stellar_dist import checkpoint
from stellar_dist.errors import UserError
from stellar_dist.inference.model_folder import load_model
from test_train import train


def test_the_model_folder_travels_alone(sim_shards, tmp_path):
    run = tmp_path / "run"
    train(f"data.shards={sim_shards}", f"output_dir={run}", "cluster.at_end=false")
    assert (checkpoint.find_latest(run) / "model" / "model.safetensors").is_file()
    portable = tmp_path / "elsewhere" / "model"
    shutil.copytree(run / "model", portable)
    shutil.rmtree(run)  # nothing of the run or the shards is needed any more
    model, description = load_model(portable)
    manifest = json.loads((sim_shards / "manifest.json").read_text())
    assert description["classes"] == manifest["classes"] and description["image_size"] == manifest["image_size"]
    assert description["arch"] == "resnet18" and description["training"]["steps"] == 6
    assert description["preprocess"] == manifest["preprocess"] and description["package_version"]
    with torch.no_grad():
        probabilities = model(torch.rand(2, 3, 32, 32)).softmax(-1)
    assert probabilities.shape == (2, 3) and torch.allclose(probabilities.sum(-1), torch.ones(2))


def test_a_folder_without_a_model_is_one_line(tmp_path):
    try:
        load_model(tmp_path)
    except UserError as error:
        assert "holds no model" in str(error)
    else:
        raise AssertionError("no error")
