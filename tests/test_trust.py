"""Trust the outputs (issue 16): packs and runs that did nothing fail, one image is packed once, merges verify their
parts, one run per folder, Ctrl-C checkpoints, resume falls back, sizes are bounded, permissions follow the umask.
Real processes and files throughout."""

import hashlib
import io
import json
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stellar_dist.core.outputs import umask
from conftest import REPO_ROOT, TINY, one_line_error, run_cli, train, tree
from test_bad_input import pack_fails


def user_catalog(sim_catalog, folder: Path, rows: int = 200) -> pd.DataFrame:
    frame = pd.read_csv(sim_catalog, dtype=str).head(rows)
    frame["image_path"] = [str(sim_catalog.parent / path) for path in frame["image_path"]]
    return frame


def test_a_pack_that_packs_nothing_or_one_class_fails_and_writes_nothing(sim_catalog, tmp_path):
    frame = user_catalog(sim_catalog, tmp_path)
    for index in range(len(frame)):
        broken = tmp_path / f"broken_{index}.jpg"
        broken.write_bytes(f"not an image {index}".encode())  # distinct bytes: not one duplicated image
        frame.loc[index, "image_path"] = str(broken)
    frame.to_csv(tmp_path / "c.csv", index=False)
    line = pack_fails(tmp_path, tmp_path / "c.csv")
    assert "no image could be packed" in line and "broken_" in line
    one = user_catalog(sim_catalog, tmp_path)
    one["Class"] = "STAR"
    one.to_csv(tmp_path / "one.csv", index=False)
    assert "at least two" in pack_fails(tmp_path, tmp_path / "one.csv")
    assert "[8, 1024]" in pack_fails(tmp_path, tmp_path / "one.csv", "--image-size", "100000")


def test_the_same_image_is_packed_once_and_never_in_two_splits(sim_catalog, tmp_path):
    frame = user_catalog(sim_catalog, tmp_path)
    base = Path(frame.loc[0, "image_path"])
    copy = tmp_path / "copy.jpg"
    shutil.copy(frame.loc[1, "image_path"], copy)  # the same bytes in another file
    extra = [{"image_path": str(base.parent / ".." / base.parent.name / base.name), "Class": frame.loc[0, "Class"]},
             {"image_path": str(copy), "Class": frame.loc[1, "Class"]}]
    frame = pd.concat([frame[["image_path", "Class"]], pd.DataFrame(extra)], ignore_index=True)
    frame.to_csv(tmp_path / "c.csv", index=False)
    result = run_cli("pack", "--catalog", str(tmp_path / "c.csv"), "--out", str(tmp_path / "out"), "--workers", "1",
                     "--image-size", "16")
    assert "packed once: 2 catalog row(s)" in result.stdout
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sum(manifest["num_samples"].values()) == 200
    assert {item["reason"] for item in manifest["duplicates"]} == {"the same file", "the same bytes"}
    frame.loc[201, "Class"] = "QSO" if frame.loc[1, "Class"] != "QSO" else "STAR"
    frame.to_csv(tmp_path / "d.csv", index=False)
    (tmp_path / "d").mkdir()
    assert "with two classes" in pack_fails(tmp_path / "d", tmp_path / "d.csv")


def test_merge_verifies_every_part_and_keeps_them_when_it_refuses(sim_catalog, tmp_path):
    frame = user_catalog(sim_catalog, tmp_path)
    frame.to_csv(tmp_path / "c.csv", index=False)
    out = tmp_path / "shards"
    common = ["--out", str(out), "--image-size", "16", "--shard-size", "20", "--workers", "1"]
    for part in (0, 1):
        run_cli("pack", "--catalog", str(tmp_path / "c.csv"), *common, "--part", f"{part}/2")
    parts = out.with_name("shards.parts")
    before = tree(parts)
    victim = sorted(parts.glob("part-001-of-002/*.tar"))[0]
    original = victim.read_bytes()
    middle = len(original) // 2
    victim.write_bytes(original[:middle] + bytes([original[middle] ^ 0xFF]) + original[middle + 1:])  # one byte
    line = one_line_error(run_cli("pack", "--merge", str(out), check=False))
    assert "does not match the hash" in line and not out.exists()
    victim.write_bytes(original)
    assert tree(parts) == before
    # A part packed from an edited catalog (one class changed): refused, parts kept.
    shutil.rmtree(parts / "part-001-of-002")
    frame.loc[5, "Class"] = "QSO" if frame.loc[5, "Class"] != "QSO" else "STAR"
    frame.to_csv(tmp_path / "c.csv", index=False)
    run_cli("pack", "--catalog", str(tmp_path / "c.csv"), *common, "--part", "1/2")
    assert "another version of the catalog" in one_line_error(run_cli("pack", "--merge", str(out), check=False))
    assert (parts / "part-000-of-002").is_dir() and (parts / "part-001-of-002").is_dir() and not out.exists()


def hold_when_locked(args: list[str], lock: Path) -> subprocess.Popen:
    """Start a real writer and freeze it (SIGSTOP) once it holds its lock: a second writer meets it for sure."""
    process = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.exists() and lock.read_text().strip()) and process.poll() is None:
        time.sleep(0.02)
    assert process.poll() is None, process.communicate()[1][-2000:]
    process.send_signal(signal.SIGSTOP)
    return process


def finish(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGCONT)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]


def test_a_second_pack_into_the_same_out_exits_at_once(sim_catalog, tmp_path):
    user_catalog(sim_catalog, tmp_path).to_csv(tmp_path / "c.csv", index=False)
    out = tmp_path / "out"
    first = hold_when_locked([sys.executable, "-m", "stellar_dist", "pack", "--catalog", str(tmp_path / "c.csv"),
                              "--out", str(out), "--workers", "1"], tmp_path / ".out.lock")
    second = run_cli("pack", "--catalog", str(tmp_path / "c.csv"), "--out", str(out), "--workers", "1", check=False)
    assert f"PID {first.pid}" in one_line_error(second)
    finish(first)
    assert "OK: " in run_cli("pack", "--verify", str(out)).stdout
    assert not (tmp_path / ".out.lock").exists(), "the lock file outlived its holder"
    mode = 0o777 & ~umask()
    assert oct(out.stat().st_mode & 0o777) == oct(mode), "the shards folder ignores the umask"
    assert all(oct(path.stat().st_mode & 0o777) == oct(mode & 0o666) for path in out.iterdir())



def test_a_run_owns_its_names_and_one_run_writes_a_folder(sim_shards, tmp_path):
    folder = tmp_path / "mine"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "notes.txt").write_text("mine")
    (folder / "predictions.csv").write_text("my predictions")
    before = tree(folder)
    line = one_line_error(train(f"data.shards={sim_shards}", f"output_dir={folder}", check=False))
    assert "model, predictions.csv" in line and tree(folder) == before
    assert "lies inside data.shards" in one_line_error(
        train(f"data.shards={sim_shards}", f"output_dir={sim_shards / 'run'}", check=False))
    # Two runs into one folder: the second exits at once naming the first; the first finishes untouched.
    run = tmp_path / "run"
    lock = tmp_path / ".run.lock"
    first = hold_when_locked([sys.executable, "launch/train.py", *TINY, f"data.shards={sim_shards}",
                              f"output_dir={run}", "train.steps=12", "cluster.at_end=false", "eval.every_steps=0",
                              "checkpoint.every_steps=4"], lock)
    (run / "notes.txt").write_text("the user's own file")
    second = train(f"data.shards={sim_shards}", f"output_dir={run}", "resume=auto", "train.steps=12", check=False)
    assert "is being written by stellar-dist train (host" in one_line_error(second)
    assert f"PID {first.pid}" in second.stderr
    finish(first)
    assert (run / "notes.txt").read_text() == "the user's own file" and not lock.exists()
    # Broken parts of the two newest checkpoints: an optimizer state, and an RNG state (which Accelerate alone would
    # only log); resume falls back past both, says so, and warns that the schedule changes with train.steps.
    (run / "checkpoints" / "step_0000012" / "optimizer.bin").write_bytes(b"broken")
    (run / "checkpoints" / "step_0000008" / "random_states_0.pkl").write_bytes(b"broken")
    resumed = train(f"data.shards={sim_shards}", f"output_dir={run}", "resume=auto", "train.steps=14",
                    "cluster.at_end=false", "eval.every_steps=0", "checkpoint.every_steps=4")
    assert "kept as unreadable-step_0000012, resuming from step_0000004" in resumed.stdout
    assert "step_0000008 is unreadable" in resumed.stdout and "random_states_0.pkl" in resumed.stdout
    assert "train.steps 12 -> 14" in resumed.stdout and "learning-rate schedule" in resumed.stdout
    kept_aside = {path.name for path in (run / "checkpoints").iterdir()}
    assert {"unreadable-step_0000012", "unreadable-step_0000008"} <= kept_aside
    assert json.loads((run / "metrics.json").read_text())["steps"] == 14


def test_ctrl_c_checkpoints_at_a_step_and_names_the_command_that_resumes(sim_shards, tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "launch/train.py", *TINY, f"data.shards={sim_shards}", f"output_dir={run}",
            "train.steps=20", "cluster.at_end=false", "eval.every_steps=0", "checkpoint.every_steps=0"]
    process = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "log.jsonl").exists() and (run / "log.jsonl").read_text()):
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 2 and "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: stopped at step ") and "on Ctrl-C" in last, last
    step = int(last.split("stopped at step ")[1].split()[0])
    assert (run / "checkpoints" / f"step_{step:07d}").is_dir()
    command = last.split("continue with: ")[1]
    assert command.endswith("resume=auto") and f"output_dir={run}" in command
    resumed = subprocess.run([sys.executable, *command.split()[1:]], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0 and f"resumed from {run / 'checkpoints'}" in resumed.stdout, resumed.stderr[-2000:]


def rewrite_member(shards: Path, split: str, edit) -> None:
    """Rewrite the first sample of a split's first shard with `edit(member name, bytes) -> bytes`, and the
    manifest's size and hash with it (a shard edited by hand, as a user or another tool could)."""
    path = shards / f"{split}-000000.tar"
    members = []
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            members.append((member.name, tar.extractfile(member).read()))
    first_key = members[0][0].split(".")[0]
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            data = edit(name, data) if name.startswith(first_key + ".") else data
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    manifest = json.loads((shards / "manifest.json").read_text())
    for entry in manifest["shards"][split]:
        if entry["name"] == path.name:
            entry["bytes"], entry["sha256"] = path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()
    (shards / "manifest.json").write_text(json.dumps(manifest))


def test_bad_samples_in_shards_evaluation_goes_on_training_says_one_line(trained_run, sim_shards, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(sim_shards, shards)

    def huge(name, data):  # an image far larger than the shards' 32 px, refused from its header
        if not name.endswith(".png"):
            return data
        buffer = io.BytesIO()
        Image.fromarray(np.zeros((3000, 3000, 3), dtype=np.uint8)).save(buffer, format="PNG")
        return buffer.getvalue()

    rewrite_member(shards, "test", huge)
    result = run_cli("evaluate", "--checkpoint", str(trained_run[0]), "--shards", str(shards), "--out",
                     str(tmp_path / "eval"), "--workers", "0")
    assert "1 test sample(s) could not be read" in result.stdout
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())["test"]
    assert len(report["refused_ids"]) == 1 and sum(map(sum, report["confusion_matrix"])) == 39

    def bad_label(name, data):
        if not name.endswith(".json"):
            return data
        return json.dumps(json.loads(data) | {"label": 7}).encode()

    rewrite_member(shards, "labeled", bad_label)
    line = one_line_error(train(f"data.shards={shards}", f"output_dir={tmp_path / 'run'}", "data.num_workers=0",
                                "data.shuffle_buffer=1", check=False))
    assert "label 7 is not one of the 3 classes" in line


def test_sizes_and_overrides_are_bounded_one_line_each(sim_shards, tmp_path):
    from stellar_dist.training.config import load_config
    from stellar_dist.core.errors import UserError

    for override, expected in (("data.shuffle_buffer=100000000", "[1, 100000]"),
                               ("train.batch_size=10000000", "[1, 65536]"),
                               ("ssl.threshold=[0.9", "not a valid value")):
        with pytest.raises(UserError, match=expected.replace("[", r"\[").replace("]", r"\]")):
            load_config(None, [override])
    from stellar_dist.data.pack import PackOptions, prepare

    with pytest.raises(UserError, match=r"--workers must lie|--image-size must lie"):
        prepare(tmp_path / "none.csv", tmp_path / "o", PackOptions(workers=5000))
