"""The portable model folder: written with every checkpoint and at the end, loadable alone (no run, no shards)."""

import json
import shutil

import torch

from stellar_dist.training import checkpoint
from stellar_dist.core.errors import UserError
from stellar_dist.inference.model_folder import load_model
from conftest import TEST_ARCH, TEST_FEATURES


def test_the_model_folder_travels_alone(sim_shards, tmp_path, plain_run):
    run = tmp_path / "run"
    shutil.copytree(plain_run, run, symlinks=True)
    assert (checkpoint.find_latest(run) / "model" / "model.safetensors").is_file()
    portable = tmp_path / "elsewhere" / "model"
    shutil.copytree(run / "model", portable)
    shutil.rmtree(run)  # nothing of the run or the shards is needed any more
    model, description = load_model(portable)
    manifest = json.loads((sim_shards / "manifest.json").read_text())
    assert description["classes"] == manifest["classes"] and description["image_size"] == manifest["image_size"]
    assert description["arch"] == TEST_ARCH and description["training"]["steps"] == 6
    assert description["preprocess"] == manifest["preprocess"] and description["package_version"]
    assert description["photometry"] is True and description["centre_crop"] == 24
    assert model.feature_dim == TEST_FEATURES + 256
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


def test_exports_give_pytorchs_probabilities(sim_shards, tmp_path, plain_run):
    import numpy as np
    import onnxruntime

    from conftest import run_cli

    run = tmp_path / "run"
    shutil.copytree(plain_run, run, symlinks=True)
    model, _ = load_model(run)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(images).softmax(-1).numpy()
    for fmt, name in (("torchscript", "model.torchscript.pt"), ("onnx", "model.onnx"), ("pt2", "model.pt2")):
        result = run_cli("export", "--model", str(run), "--format", fmt)
        assert f"wrote {run / 'model' / name}" in result.stdout
        assert "Warning" not in result.stderr, result.stderr  # no deprecation or archive warnings
    program = torch.export.load(str(run / "model" / "model.pt2")).module()
    assert np.abs(program(images).detach().numpy() - expected).max() < 1e-4
    scripted = torch.jit.load(str(run / "model" / "model.torchscript.pt"))
    assert np.abs(scripted(images).detach().numpy() - expected).max() < 1e-4
    session = onnxruntime.InferenceSession(str(run / "model" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, {"images": images.numpy()})[0] - expected).max() < 1e-4
    meta = session.get_modelmeta().custom_metadata_map  # what a server needs beside the graph
    assert meta["classes"] == "GALAXY,QSO,STAR" and meta["image_size"] == "32" and "255" in meta["normalisation"]


def test_every_command_loads_a_checkpoint_moved_out_of_its_run(sim_shards, tmp_path, plain_run):
    """One loader for evaluate, cluster and predict: a checkpoint copied anywhere (no run folder around it, no
    config.yaml) gives the numbers it gives inside its run, in the run's layout."""
    from conftest import run_cli

    run = tmp_path / "run"
    shutil.copytree(plain_run, run, symlinks=True)
    inside = checkpoint.find_latest(run)
    moved = tmp_path / "elsewhere" / inside.name
    shutil.copytree(inside, moved)
    reports = {}
    for name, path in (("inside", inside), ("moved", moved)):
        run_cli("evaluate", "--checkpoint", str(path), "--shards", str(sim_shards), "--out", str(tmp_path / name))
        reports[name] = json.loads((tmp_path / name / "metrics.json").read_text())["test"]
    assert reports["moved"] == reports["inside"] and sum(map(sum, reports["moved"]["confusion_matrix"])) > 0
    run_cli("cluster", "--checkpoint", str(moved), "--shards", str(sim_shards), "--out", str(tmp_path / "c"))
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["cluster"]["num_scored"] > 0
    model, description = load_model(moved)
    assert description["channels_last"] is True  # the run's layout (train.channels_last)
    first_conv = next(module for module in model.backbone.modules() if isinstance(module, torch.nn.Conv2d))
    assert first_conv.weight.is_contiguous(memory_format=torch.channels_last)
