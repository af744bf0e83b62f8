"""Two "machines" on 127.0.0.1 (one process each, each under its own launcher, as on two nodes): they train
exactly like 2 processes on one machine; and when one of them dies (kill -9) or freezes (SIGSTOP: a hung node, a
stuck filesystem), the other ends within dist.timeout_s with one line naming the last good checkpoint, and
resume=auto finishes the run from it."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO_ROOT, TINY, free_port

TIMEOUT_S = 10


def start(shards, run, port: int, *overrides) -> list[subprocess.Popen]:
    """Two "machines" on 127.0.0.1, one process each, each under its own launcher (as on two nodes: no launcher
    sees both ranks, so the survivor must notice the loss itself)."""
    launchers = []
    for machine in (0, 1):
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(REPO_ROOT / "accelerate_configs" / "multi_node.yaml"), "--num_machines", "2",
                   "--num_processes", "2", "--machine_rank", str(machine), "--main_process_ip", "127.0.0.1",
                   "--main_process_port", str(port), "--mixed_precision", "no",
                   str(REPO_ROOT / "launch" / "train.py"), *TINY, "data.num_workers=1", f"data.shards={shards}",
                   f"output_dir={run}", "train.steps=20", "checkpoint.every_steps=4", "eval.every_steps=0",
                   "cluster.at_end=false", f"dist.timeout_s={TIMEOUT_S}", *overrides]
        launchers.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          cwd=REPO_ROOT, start_new_session=True))
    return launchers


def worker(launcher: subprocess.Popen) -> psutil.Process:
    """The training process under `launcher` (not its dataloader workers)."""
    return next(child for child in psutil.Process(launcher.pid).children()
                if any(part.endswith("train.py") for part in child.cmdline()))


def stop_all(launchers: list[subprocess.Popen]) -> None:
    """Kill what is left, workers first: they live in their own process groups, and a frozen (stopped) one
    takes only SIGKILL."""
    for launcher in launchers:
        if launcher.poll() is None:
            for process in psutil.Process(launcher.pid).children(recursive=True):
                process.kill()
            launcher.kill()
        launcher.wait()


@pytest.mark.parametrize("lost_signal, words", [(signal.SIGKILL, "died"), (signal.SIGSTOP, "stopped answering")],
                         ids=["kill-9", "SIGSTOP"])
def test_a_lost_rank_ends_the_run_in_one_line_and_resume_finishes_it(sim_shards, tmp_path, lost_signal, words):
    run = tmp_path / "run"
    first, second = launchers = start(sim_shards, run, free_port())
    try:
        deadline = time.time() + 240
        while not (run / "checkpoints" / "latest").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, first.communicate()[1][-3000:]
        time.sleep(1.0)  # a step or two past the checkpoint
        os.kill(worker(second).pid, lost_signal)
        lost_at = time.time()
        _, stderr = first.communicate(timeout=TIMEOUT_S + 60)
        survivor_seconds = time.time() - lost_at
        print(f"rank 0 ended {survivor_seconds:.1f} s after rank 1 got signal {lost_signal}")
    finally:
        stop_all(launchers)
    line = next((line for line in stderr.splitlines() if line.startswith("error: another rank")), stderr[-3000:])
    assert words in line and f"the last good checkpoint is {run / 'checkpoints'}" in line and "resume=auto" in line
    # the bound: the collective's timeout, plus slack for a loaded machine; a closed socket is noticed at once
    assert survivor_seconds < (TIMEOUT_S + 30 if lost_signal == signal.SIGSTOP else TIMEOUT_S)
    if lost_signal == signal.SIGKILL:
        return
    resumed = start(sim_shards, run, free_port(), "resume=auto")
    try:
        stdout, stderr = resumed[0].communicate(timeout=300)
        resumed[1].wait(timeout=60)
    finally:
        stop_all(resumed)
    assert resumed[0].returncode == 0 == resumed[1].returncode, stderr[-3000:]
    assert "resumed from" in stdout
    assert json.loads((run / "metrics.json").read_text())["steps"] == 20


def test_two_machines_train_exactly_as_two_processes_on_one(sim_shards, tmp_path):
    steps = ["train.steps=8", "checkpoint.every_steps=0", "train.cpu_threads=1"]  # same float reductions
    machines = start(sim_shards, tmp_path / "machines", free_port(), *steps)
    try:
        for launcher in machines:
            launcher.wait(timeout=300)
    finally:
        stop_all(machines)
    assert [launcher.returncode for launcher in machines] == [0, 0], machines[0].stderr.read()[-3000:]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO_ROOT / "accelerate_configs" / "cpu_ddp.yaml"), "--main_process_port", str(free_port()),
               str(REPO_ROOT / "launch" / "train.py"), *TINY, "data.num_workers=1", f"data.shards={sim_shards}",
               f"output_dir={tmp_path / 'one'}", "eval.every_steps=0", "cluster.at_end=false", *steps]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    final = "checkpoints/step_0000008/model.safetensors"
    one, two = load_file(tmp_path / "one" / final), load_file(tmp_path / "machines" / final)
    assert all(torch.equal(value, two[key]) for key, value in one.items())
