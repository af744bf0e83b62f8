"""slurm/fixmatch.sbatch on a real SLURM controller (munged + slurmctld + slurmd started for these tests):
a CPU run, preemption (checkpoint, requeue, resume to the same weights and the same W&B run) and a 2-task job
whose tasks meet as two Accelerate machines."""

import json
import os
import re
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, run_cli
from slurm_cluster import SlurmCluster, missing

STEPS = 24
CPU_JOB = ["--gpus-per-node=0", "--cpus-per-task=1", "--time=15"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = missing()
    if why:
        if os.environ.get("STELLAR_REQUIRE_SLURM"):  # CI sets it: there the SLURM tests must run
            pytest.fail(f"SLURM is required here but {why}")
        pytest.skip(f"no SLURM here: {why}")
    slurm = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    yield slurm
    slurm.stop()


def submit(cluster, folder: Path, shards: Path, *sbatch_args: str, wait: bool = True, overrides=()) -> str:
    args = ["sbatch", "--parsable", f"--output={folder}/slurm-%j.out", *CPU_JOB, *sbatch_args]
    args += ["--wait"] if wait else []
    args += ["slurm/fixmatch.sbatch", "configs/demo.yaml", *TINY, f"data.shards={shards}", f"output_dir={folder}/run",
             f"train.steps={STEPS}", "checkpoint.every_steps=0", "eval.every_steps=0", "cluster.at_end=false",
             "tracking=wandb", "data.num_workers=1", *overrides]
    result = cluster.run(*args, check=False, timeout=900)
    job = result.stdout.strip().split(";")[0]
    assert result.returncode == 0, result.stderr + "".join(p.read_text() for p in folder.glob("slurm-*.out"))
    return job


def job_output(folder: Path, job: str) -> str:
    return (folder / f"slurm-{job}.out").read_text()


def wandb_ids(run: Path) -> set[str]:
    return {path.name.rsplit("-", 1)[-1] for path in (run / "wandb").glob("offline-run-*")}


@pytest.fixture(scope="module")
def uninterrupted(cluster, sim_shards, tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    job = submit(cluster, folder, sim_shards)
    return folder, job


def test_the_batch_script_trains_on_cpu(uninterrupted):
    folder, job = uninterrupted
    metrics = json.loads((folder / "run" / "metrics.json").read_text())
    assert metrics["steps"] == STEPS and metrics["world_size"] == 1
    assert "accuracy" in job_output(folder, job)
    assert len(wandb_ids(folder / "run")) == 1


def test_preemption_checkpoints_requeues_and_finishes_with_the_same_weights(cluster, sim_shards, tmp_path,
                                                                            uninterrupted):
    job = submit(cluster, tmp_path, sim_shards, wait=False)
    log, deadline = tmp_path / "run" / "log.jsonl", time.time() + 300
    while time.time() < deadline and not (log.exists() and any(json.loads(line)["step"] >= 6
                                                                for line in log.read_text().splitlines())):
        time.sleep(0.3)
    cluster.run("scancel", "--signal=USR1", "--batch", job)  # what --signal=B:USR1@180 does before the limit
    deadline = time.time() + 400
    while time.time() < deadline and not (tmp_path / "run" / "metrics.json").exists():
        time.sleep(1)
    output = job_output(tmp_path, job)
    assert (tmp_path / "run" / "metrics.json").exists(), output[-3000:]
    assert "SLURM warning signal" in output and "requeueing job" in output and "(restart 1)" in output
    stopped_at = int(re.search(r"stopped at step (\d+); requeueing", output).group(1))
    assert 6 <= stopped_at < STEPS and "resumed from" in output and f"at step {stopped_at}" in output
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == STEPS
    assert len(wandb_ids(tmp_path / "run")) == 1 and len(list((tmp_path / "run" / "wandb").glob("offline-*"))) == 2
    final = f"checkpoints/step_{STEPS:07d}/model.safetensors"
    reference, resumed = load_file(uninterrupted[0] / "run" / final), load_file(tmp_path / "run" / final)
    assert all(torch.equal(value, resumed[key]) for key, value in reference.items())


def test_two_tasks_meet_as_two_machines(cluster, sim_shards, tmp_path):
    job = submit(cluster, tmp_path, sim_shards, "--ntasks-per-node=2", overrides=["tracking=none"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == STEPS and metrics["world_size"] == 2, job_output(tmp_path, job)[-3000:]
    assert len(metrics["peak_rss_mb"]) == 2  # each rank's peak memory


def test_a_pack_job_array_and_its_merge_equal_one_pack(cluster, sim_catalog, tmp_path):
    from test_pack_parts import PACK, SAME, manifest

    out = tmp_path / "shards"
    array = cluster.run("sbatch", "--parsable", "--array=0-2", "--cpus-per-task=1", f"--output={tmp_path}/%A_%a.out",
                        "slurm/pack.sbatch", str(sim_catalog), str(out), *PACK).stdout.strip().split(";")[0]
    merged = cluster.run("sbatch", "--parsable", "--wait", f"--dependency=afterok:{array}", "--cpus-per-task=1",
                         f"--output={tmp_path}/merge.out", "slurm/pack_merge.sbatch", str(out), check=False,
                         timeout=600)
    assert merged.returncode == 0, "".join(path.read_text() for path in tmp_path.glob("*.out"))
    assert "merged" in (tmp_path / "merge.out").read_text()
    single = tmp_path / "single"
    run_cli("pack", "--catalog", str(sim_catalog), "--out", str(single), *PACK, "--workers", "2")
    assert all(manifest(single)[key] == manifest(out)[key] for key in SAME)
    run_cli("pack", "--verify", str(out))


def test_a_predict_job_array_writes_every_part_once(cluster, plain_run, sim_shards, tmp_path):
    """slurm/predict.sbatch as a 3-task array: 4 parts of 60 rows, each written by one task, together the same
    rows as a single-file predict."""
    import pandas as pd

    out = tmp_path / "parts"
    array = cluster.run("sbatch", "--parsable", "--wait", "--array=0-2", "--cpus-per-task=1",
                        f"--output={tmp_path}/%A_%a.out", "slurm/predict.sbatch", str(plain_run), str(sim_shards),
                        str(out), "--part-rows", "60", check=False, timeout=600)
    assert array.returncode == 0, "".join(path.read_text() for path in tmp_path.glob("*.out"))
    assert sorted(path.name for path in out.glob("part-*.parquet")) == [f"part-{i:06d}.parquet" for i in range(4)]
    run_cli("predict", "--model", str(plain_run), "--input", str(sim_shards), "--out", str(tmp_path / "one.csv"))
    one = pd.read_csv(tmp_path / "one.csv", dtype={"objid": str})
    dataset = pd.read_parquet(out)
    assert dataset["row"].tolist() == one["row"].tolist()
    assert dataset["predicted_class"].tolist() == one["predicted_class"].tolist()
