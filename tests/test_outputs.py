"""Outputs never destroy inputs or the user's files, one writer per output, nothing silently wrong (issue 16):
predict, export, evaluate and cluster, with real processes and files."""

import json
import shutil
import sys

import pandas as pd
import pytest
from safetensors.torch import load_file, save_file

from stellar_dist.core.outputs import umask
from conftest import one_line_error, run_cli, tree


@pytest.fixture(scope="module")
def model(plain_run, tmp_path_factory):
    """A copy of the trained run's portable model folder (tests change copies of it, never the run)."""
    folder = tmp_path_factory.mktemp("model") / "model"
    shutil.copytree(plain_run / "model", folder)
    return folder


@pytest.fixture
def catalog(sim_catalog, tmp_path):
    """The user's catalog in their own folder: 30 rows, relative image paths, extra columns."""
    frame = pd.read_csv(sim_catalog, dtype=str).head(30)
    frame["image_path"] = [str(sim_catalog.parent / path) for path in frame["image_path"]]
    path = tmp_path / "cat.csv"
    frame.to_csv(path, index=False)
    return path


def predict(model, source, out, *extra, check=False):
    return run_cli("predict", "--model", str(model), "--input", str(source), "--out", str(out), *extra, check=check)


def refused(*args, **options) -> str:
    """predict() in this process (the command's own code, without a new interpreter): its one-line refusal."""
    from stellar_dist.core.errors import UserError
    from stellar_dist.inference.predict import predict as predict_rows

    with pytest.raises(UserError) as error:
        predict_rows(*map(str, args), **options)
    return str(error.value)


def test_predict_never_writes_over_its_inputs_or_the_users_files(model, catalog, tmp_path):
    before = tree(tmp_path)
    # The catalog as --out, as --embeddings, and the model folder's own file: refused, nothing changed.
    assert "would destroy an input" in one_line_error(predict(model, catalog, catalog))
    assert "would destroy an input" in refused(model, catalog, tmp_path / "p.csv", embeddings=str(model / "x.npy"))
    assert "must end in .npy" in refused(model, catalog, tmp_path / "p.csv", embeddings=str(catalog))
    mine = tmp_path / "p.csv"
    mine.write_text("row,reason\nmy own notes\n")  # a file of the user's under the output's name
    assert "not written by `stellar-dist predict`" in refused(model, catalog, mine)
    assert mine.read_text() == "row,reason\nmy own notes\n"
    mine.unlink()
    assert tree(tmp_path) == before
    # Its own output is replaced by a second run; once the user edits it, it is theirs.
    out = tmp_path / "p.csv"
    predict(model, catalog, out, check=True)
    predict(model, catalog, out, "--embeddings", str(tmp_path / "e.npy"), check=True)
    assert len(pd.read_csv(out)) == 30
    out.write_text(out.read_text() + "my,extra,row\n")
    assert "--overwrite" in refused(model, catalog, out) and out.read_text().endswith("my,extra,row\n")
    predict(model, catalog, out, "--overwrite", check=True)
    assert len(pd.read_csv(out)) == 30
    assert not list(tmp_path.glob(".sdtmp-*")), "temporary files left behind"


def test_predict_that_classifies_nothing_fails_and_mismatches_are_named(model, sim_catalog, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for index in range(3):
        (images / f"{index}.jpg").write_bytes(b"not an image")
    line = one_line_error(predict(model, images, tmp_path / "p.csv"))
    assert "none of the 3 input(s) could be classified" in line and "UnidentifiedImageError" in line
    assert not (tmp_path / "p.csv").exists() and not list(tmp_path.glob("p.*"))
    # Shards of another size than the model's: one line naming both, before any row is read.
    other = tmp_path / "other"
    run_cli("pack", "--catalog", str(sim_catalog), "--out", str(other), "--image-size", "16", "--workers", "1")
    line = one_line_error(predict(model, other, tmp_path / "q.csv"))
    assert "16 px" in line and "32 px" in line
    # Malformed, non-UTF-8 and empty CSVs, and a batch size of 0: one line each.
    (tmp_path / "bad.csv").write_bytes(b"image_path\n\xff\xfe\x00bad\n")
    assert "not a readable CSV" in refused(model, tmp_path / "bad.csv", tmp_path / "r.csv")
    (tmp_path / "empty.csv").write_text("")
    assert "is empty" in refused(model, tmp_path / "empty.csv", tmp_path / "r.csv")
    result = predict(model, images, tmp_path / "r.csv", "--batch-size", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "between 1 and 65536" in result.stderr


def test_non_finite_or_inconsistent_models_are_refused_everywhere(model, sim_shards, catalog, tmp_path):
    broken = tmp_path / "nan_model"
    shutil.copytree(model, broken)
    tensors = load_file(broken / "model.safetensors")
    tensors["classifier.weight"][0, 0] = float("nan")
    save_file(tensors, broken / "model.safetensors", metadata={"format": "stellar-dist-model/1"})
    for command in (["predict", "--model", str(broken), "--input", str(catalog), "--out", str(tmp_path / "n.csv")],
                    ["export", "--model", str(broken), "--format", "torchscript"]):
        assert "non-finite weights" in one_line_error(run_cli(*command, check=False))
    assert not (tmp_path / "n.csv").exists()
    assert sorted(path.name for path in broken.iterdir() if not path.name.startswith(".")) == [
        "config.json", "model.safetensors"], "an export or temporary file was left"
    assert not [path for path in broken.iterdir() if "tmp" in path.name]
    # config.json that does not match the weights, or with an absurd size: one line, nothing built.
    for change, expected in (({"arch": "mobilenet_v2"}, "does not match its weights"),
                             ({"image_size": 100000}, "not an integer in [8, 1024]")):
        odd = tmp_path / f"odd_{len(expected)}"
        shutil.copytree(model, odd)
        description = json.loads((odd / "config.json").read_text()) | change
        (odd / "config.json").write_text(json.dumps(description))
        assert expected in one_line_error(run_cli("predict", "--model", str(odd), "--input", str(catalog),
                                                  "--out", str(tmp_path / "o.csv"), check=False))


def test_export_never_overwrites_the_model_and_survives_a_rerun(plain_run, sim_shards, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(plain_run, run)
    weights = (run / "model" / "model.safetensors").read_bytes()
    line = one_line_error(run_cli("export", "--model", str(run), "--format", "torchscript", "--out",
                                  str(run / "model" / "model.safetensors"), check=False))
    assert "would destroy an input" in line and (run / "model" / "model.safetensors").read_bytes() == weights
    (tmp_path / "mine.pt").write_text("my own file")
    assert "--overwrite" in one_line_error(run_cli("export", "--model", str(run), "--format", "torchscript",
                                                   "--out", str(tmp_path / "mine.pt"), check=False))
    assert (tmp_path / "mine.pt").read_text() == "my own file"
    run_cli("export", "--model", str(run), "--format", "torchscript")
    run_cli("export", "--model", str(run), "--format", "torchscript")  # its own export: replaced
    (run / "model" / "notes.txt").write_text("mine")
    (run / "notes.txt").write_text("mine too")
    # Running the finished run's command again re-reports it: the export and the user's notes stay.
    from conftest import train

    from conftest import PLAIN_RUN

    train(f"data.shards={sim_shards}", f"output_dir={run}", "resume=auto", *PLAIN_RUN)  # plain_run's command
    assert (run / "model" / "model.torchscript.pt").is_file() and (run / "model" / "notes.txt").read_text() == "mine"
    assert (run / "notes.txt").read_text() == "mine too"
    assert oct((run / "model" / "model.safetensors").stat().st_mode & 0o777) == oct(0o666 & ~umask())



def test_evaluate_refuses_an_out_holding_other_files_under_its_names(trained_run, sim_shards, tmp_path):
    run = trained_run[0]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.json").write_text("{}")
    args = ["evaluate", "--checkpoint", str(run), "--shards", str(sim_shards), "--workers", "0"]
    assert "not written by `stellar-dist evaluate`" in one_line_error(run_cli(*args, "--out", str(mine), check=False))
    assert (mine / "metrics.json").read_text() == "{}"
    line = one_line_error(run_cli(*args, "--out", str(sim_shards / "eval"), check=False))
    assert "would destroy an input" in line and not (sim_shards / "eval").exists()
    run_cli(*args, "--out", str(tmp_path / "e"))
    run_cli(*args, "--out", str(tmp_path / "e"))  # its own files: replaced
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["test"]["refused_ids"] == []


def test_two_writers_of_one_output_the_second_exits_at_once(model, catalog, tmp_path):
    """A real first writer holds the lock (frozen there): the second names it in one line and changes nothing."""
    from test_trust import finish, hold_when_locked

    out = tmp_path / "p.csv"
    first = hold_when_locked([sys.executable, "-m", "stellar_dist", "predict", "--model", str(model), "--input",
                              str(catalog), "--out", str(out)], tmp_path / ".p.csv.lock")
    line = one_line_error(predict(model, catalog, out))
    assert "is being written by stellar-dist predict" in line and f"PID {first.pid}" in line
    finish(first)
    assert len(pd.read_csv(out)) == 30 and not (tmp_path / ".p.csv.lock").exists()


def test_a_forked_child_never_keeps_a_killed_writers_lock(tmp_path):
    """A run's DataLoader workers are forked while it holds its folder's lock; when the run is killed they live on
    for a moment. They must not hold the lock (the rerun would be refused) nor release the parent's."""
    import os
    import signal
    import subprocess
    import time

    from stellar_dist.core.errors import UserError
    from stellar_dist.core.outputs import OutputLock

    target = tmp_path / "run"
    script = (f"import os, sys, time; from stellar_dist.core.outputs import OutputLock; OutputLock({str(target)!r}, 'x')\n"
              "child = os.fork()\n"
              "if child == 0:\n    time.sleep(60); os._exit(0)\n"
              "print(child, flush=True); time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        with pytest.raises(UserError, match="is being written by x"):
            OutputLock(target, "y")  # the parent holds it, and the child's fork did not release it
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        time.sleep(0.2)
        os.kill(child, 0)  # the forked child is still alive...
        OutputLock(target, "y").release()  # ...and the lock is free
    finally:
        parent.kill()
        os.kill(child, signal.SIGKILL)
