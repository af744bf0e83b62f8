"""Injected faults: broken checkpoints and shards, refused runs, non-finite weights, a full or read-only disk, a
shard deleted mid-run. Each ends in one line (or a stated fallback) and loses nothing."""

import json
import shutil
import subprocess
import sys
import tarfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import REPO_ROOT, TINY, one_line_error, run_cli, train, tree
from stellar_dist.training import checkpoint


def ckpt(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step_{step:07d}"


def test_resume_falls_back_past_broken_checkpoints_and_refused_runs_write_nothing(sim_shards, tmp_path, trained_run):
    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run, symlinks=True)
    config_before, wandb_before = (run / "config.yaml").read_bytes(), sorted((run / "wandb").iterdir())
    # A second run into the same folder, and a resume that changes the algorithm: refused, nothing written.
    for overrides, expected in ((["train.lr=0.1"], "already holds a run (step_0000006)"),
                                (["resume=auto", "ssl.algorithm=supervised"], "ssl.algorithm='fixmatch'")):
        result = train(f"data.shards={sim_shards}", f"output_dir={run}", "tracking=wandb", *overrides, check=False)
        assert expected in one_line_error(result)
        assert (run / "config.yaml").read_bytes() == config_before
        assert sorted((run / "wandb").iterdir()) == wandb_before
    # latest is damaged: resume from the newest complete checkpoint, say so, keep the damaged one aside.
    weights = ckpt(run, 6) / "model" / "model.safetensors"
    weights.unlink()  # the file, not the run/model/ it is hard-linked to, is damaged
    weights.write_bytes((run / "model" / "model.safetensors").read_bytes()[:1000])
    result = train(f"data.shards={sim_shards}", f"output_dir={run}", "resume=auto", "data.num_workers=1")
    assert "warning: checkpoint step_0000006 is unreadable" in result.stdout
    assert "at step 3" in result.stdout and "data.num_workers 2 -> 1" in result.stdout
    assert (run / "checkpoints" / "unreadable-step_0000006" / "model" / "model.safetensors").exists()
    assert checkpoint.problem(ckpt(run, 6)) is None and checkpoint.find_latest(run) == ckpt(run, 6)
    # Shards of other classes, or a k the shards cannot hold: one line each, the run untouched.
    other = tmp_path / "other"
    shutil.copytree(sim_shards, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["classes"] = ["ELLIPTICAL", "QSO", "STAR"]
    (other / "manifest.json").write_text(json.dumps(manifest))
    before = tree(run)
    assert "was trained on classes" in one_line_error(run_cli("evaluate", "--checkpoint", str(run), "--shards",
                                                              str(other), check=False))
    for k in ("100000", "-3", "1"):
        line = one_line_error(run_cli("cluster", "--checkpoint", str(run), "--shards", str(sim_shards), "--k", k,
                                      check=False))
        assert "--k" in line
    assert tree(run) == before
    # Nothing complete left: a one-line refusal, never a restart from step 0.
    (run / "checkpoints" / "latest").write_text("step_0000009\n")
    for step in (3, 6):
        (ckpt(run, step) / "trainer_state.pt").write_bytes(b"garbage")
    before = tree(run)
    result = train(f"data.shards={sim_shards}", f"output_dir={run}", "resume=auto", check=False)
    assert "none is complete" in one_line_error(result)
    assert tree(run) == before


def test_non_finite_weights_are_never_saved(sim_shards, tmp_path):
    run = tmp_path / "run"
    result = train(f"data.shards={sim_shards}", f"output_dir={run}", "train.lr=1e12", "ssl.algorithm=supervised",
                   "train.warmup_steps=1", "checkpoint.every_steps=1", "train.log_every_steps=1", check=False)
    line = one_line_error(result)
    assert "non-finite" in line and "last good checkpoint is" in line
    saved = sorted((run / "checkpoints").glob("step_*")) if (run / "checkpoints").exists() else []
    assert all(checkpoint.problem(folder) is None for folder in saved)
    named = line.split("last good checkpoint is ")[1].split(";")[0]
    assert named.startswith("none") or checkpoint.problem(Path(named)) is None


def corrupt_images(shard: Path) -> None:
    """Overwrite every image's signature in place: same size, same members, undecodable pixels."""
    with tarfile.open(shard) as tar:
        members = [m for m in tar.getmembers() if m.name.endswith(".png")]
    with open(shard, "r+b") as handle:
        for member in members:
            handle.seek(member.offset_data)
            handle.write(b"\0" * 16)


def test_a_failing_final_evaluation_keeps_the_trained_model(sim_shards, tmp_path):
    shards, run = tmp_path / "shards", tmp_path / "run"
    shutil.copytree(sim_shards, shards)
    # One unreadable test image is listed and left out (issue 16); none readable fails the final evaluation.
    for shard in shards.glob("test-*.tar"):
        corrupt_images(shard)
    result = train(f"data.shards={shards}", f"output_dir={run}", "eval.every_steps=0", "checkpoint.every_steps=0",
                   check=False)
    line = one_line_error(result)
    assert "could be read" in line and f"saved in {ckpt(run, 6)}" in line
    assert checkpoint.problem(ckpt(run, 6)) is None
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_0000006"]


def test_altered_shards_are_refused_before_training(sim_shards, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(sim_shards, shards)
    victim = shards / "labeled-000000.tar"
    with tarfile.open(victim) as tar:  # cut at a sample boundary: still a valid tar, a sixth of the samples
        members = tar.getmembers()
        cut = members[2].offset
    victim.write_bytes(victim.read_bytes()[:cut] + b"\0" * 1024)
    result = train(f"data.shards={shards}", f"output_dir={tmp_path / 'run'}", check=False)
    assert "pack --verify" in one_line_error(result)
    assert not (tmp_path / "run").exists()


def test_a_shard_deleted_during_training_is_one_line(sim_shards, tmp_path):
    shards, run = tmp_path / "shards", tmp_path / "run"
    shutil.copytree(sim_shards, shards)
    command = [sys.executable, str(REPO_ROOT / "launch" / "train.py"), *TINY, f"data.shards={shards}",
               f"output_dir={run}", "train.steps=2000", "checkpoint.every_steps=0", "eval.every_steps=0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "log.jsonl").exists() and (run / "log.jsonl").read_text()):
        time.sleep(0.2)
    for shard in shards.glob("labeled-*.tar"):
        shard.unlink()
    stdout, stderr = process.communicate(timeout=300)
    line = one_line_error(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    assert "can no longer be read" in line and "labeled-000000.tar" in line


@contextmanager
def tmpfs(path: Path, options: str):
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_and_read_only_disks(sim_catalog, sim_shards, tmp_path):
    with tmpfs(tmp_path / "small", "size=2m") as small:
        # Training: the first checkpoint (~4.5 MB) does not fit; no half-written checkpoint stays.
        result = train(f"data.shards={sim_shards}", f"output_dir={small / 'run'}", "tracking=none", check=False)
        assert "No space left on device" in one_line_error(result)
        assert not list((small / "run" / "checkpoints").glob("*step_*"))
        shutil.rmtree(small / "run")
        # Packing: no staging folder or partial shards stay.
        result = run_cli("pack", "--catalog", str(sim_catalog), "--out", str(small / "shards"), "--workers", "1",
                         "--image-size", "128", check=False)
        assert "No space left on device" in one_line_error(result)
        assert not list(small.iterdir())
    with tmpfs(tmp_path / "ro", "ro,size=1m") as read_only:
        result = train(f"data.shards={sim_shards}", f"output_dir={read_only / 'run'}", check=False)
        assert "is not writable" in one_line_error(result)
        result = run_cli("pack", "--catalog", str(sim_catalog), "--out", str(read_only / "shards"), check=False)
        assert "choose a writable folder" in one_line_error(result)


def test_killed_at_any_moment_the_checkpoints_stay_complete(sim_shards, tmp_path):
    """SIGTERM (what SLURM sends at the time limit) and SIGKILL at moments spread over a run that checkpoints at
    every step: every step_* folder left is complete, `latest` names one, and resume=auto finishes the run."""
    import random
    import signal

    run, rng = tmp_path / "run", random.Random(0)
    command = [sys.executable, str(REPO_ROOT / "launch" / "train.py"), *TINY, f"data.shards={sim_shards}",
               f"output_dir={run}", "train.steps=24", "checkpoint.every_steps=1", "checkpoint.keep_last=2",
               "eval.every_steps=0", "cluster.at_end=false", "data.num_workers=1", "resume=auto"]
    for kill in (signal.SIGTERM, signal.SIGKILL):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   cwd=REPO_ROOT)
        before = checkpoint.find_latest(run)
        deadline = time.time() + 120
        while checkpoint.find_latest(run) == before and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.0))  # somewhere inside the next steps and their checkpoint writes
        process.send_signal(kill)
        process.wait(timeout=60)
        folders = sorted((run / "checkpoints").glob("step_*"))
        assert folders and all(checkpoint.problem(folder) is None for folder in folders), folders
        assert checkpoint.find_latest(run) in folders
    finished = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["steps"] == 24
