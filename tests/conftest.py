"""Shared fixtures: a small simulated catalog and its shards, built once per test session."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = REPO_ROOT.parent / "shared" / "sdss_dr16"


class Warm:
    """This worker's warm interpreter (tests/zygote.py): each command a process of its own, forked from it."""

    process = None

    @classmethod
    def run(cls, argv: list[str], *, module: str | None = None, path: str | None = None, cwd=REPO_ROOT,
            timeout: float = 600, hide: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        """`hide`: packages the command cannot import (none of them is imported before the fork)."""
        import json
        import os
        import tempfile

        if cls.process is None or cls.process.poll() is not None:
            cls.process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("zygote.py"))],
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
            assert json.loads(cls.process.stdout.readline()) == {"ready": True}
        with tempfile.TemporaryDirectory() as folder:
            out, err = Path(folder) / "out", Path(folder) / "err"
            request = {"argv": argv, "module": module, "path": path, "cwd": str(cwd), "env": dict(os.environ),
                       "stdout": str(out), "stderr": str(err), "timeout": timeout, "hide": list(hide)}
            cls.process.stdin.write(json.dumps(request) + "\n")
            cls.process.stdin.flush()
            code = json.loads(cls.process.stdout.readline())["returncode"]
            stdout, stderr = out.read_text(errors="replace"), err.read_text(errors="replace")
        if code == -9:
            raise subprocess.TimeoutExpired(argv, timeout, stdout, stderr)
        return subprocess.CompletedProcess([sys.executable, *(["-m", module] if module else [path]), *argv[1:]],
                                           code, stdout, stderr)


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `stellar-dist ARGS` as a user would: a process of its own (forked from this worker's warm
    interpreter: the same as `python -m stellar_dist ARGS`, without 5 s of imports each time)."""
    result = Warm.run(["stellar_dist", *args], module="stellar_dist")
    if check and result.returncode != 0:
        raise AssertionError(f"stellar-dist {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


# A small network: each test run writes ~5 MB of checkpoints instead of ~140 MB (resnet18) and trains ~1.5x
# faster; the recipes' resnet18 is built and checked in tests/test_photometry.py, test_algorithms.py, test_fits.py.
TEST_ARCH, TEST_FEATURES = "shufflenet_v2_x0_5", 1024
TINY = [f"model.arch={TEST_ARCH}", "train.batch_size=4", "ssl.mu=2", "train.log_every_steps=2", "data.num_workers=2",
        "data.shuffle_buffer=16", "ssl.threshold=0.5", "train.steps=6", "checkpoint.every_steps=3",
        "eval.every_steps=3", "train.warmup_steps=2"]


def train(*overrides, check=True):
    """launch/train.py TINY OVERRIDES in a process of its own (forked from the warm interpreter: conftest.Warm)."""
    script = str(REPO_ROOT / "launch" / "train.py")
    result = Warm.run([script, *TINY, *overrides], path=script)
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_line_error(result) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr
    return last


def tree(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def copied_catalog(sim_catalog: Path, folder: Path, copies: int) -> Path:
    """A catalog of `copies` x the simulated images (hard links under other names): seconds of packing."""
    import os

    import pandas as pd

    catalog = pd.read_csv(sim_catalog)
    images = folder / "images"
    images.mkdir()
    rows = []
    for copy in range(copies):
        for index, row in catalog.iterrows():
            path = images / f"{copy}_{index}.jpg"
            os.link(sim_catalog.parent / row["image_path"], path)
            rows.append({"image_path": str(path), "Class": row["Class"]})
    pd.DataFrame(rows).to_csv(folder / "c.csv", index=False)
    return folder / "c.csv"


@pytest.fixture(scope="session")
def sim_catalog(tmp_path_factory) -> Path:
    """200 simulated cutouts (catalog.csv path)."""
    out = tmp_path_factory.mktemp("sim") / "data"
    run_cli("simulate", "--out", str(out), "--num", "200", "--seed", "3", "--workers", "2")
    return out / "catalog.csv"


@pytest.fixture(scope="session")
def sim_shards(sim_catalog, tmp_path_factory) -> Path:
    """Shards of the simulated catalog: 20% labeled, 20% test, 32x32 pixels, 40 samples per shard."""
    out = tmp_path_factory.mktemp("shards") / "shards"
    run_cli("pack", "--catalog", str(sim_catalog), "--out", str(out), "--labeled-fraction", "0.2",
            "--test-fraction", "0.2", "--image-size", "32", "--shard-size", "40", "--workers", "2")
    return out


@pytest.fixture(scope="session")
def trained_run(sim_shards, tmp_path_factory) -> tuple[Path, str]:
    """One tiny FixMatch run (6 steps, checkpoints at steps 3 and 6, clustering at the end, W&B offline), trained
    once for the tests that read it (or copy it before changing it): (run folder, the training's stdout + stderr)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    result = train(f"data.shards={sim_shards}", f"output_dir={run}", "tracking=wandb")
    return run, result.stdout + result.stderr


PLAIN_RUN = ("cluster.at_end=false", "model.photometry=true", "model.centre_crop=24", "data.max_shift_fraction=0")


@pytest.fixture(scope="session")
def plain_run(sim_shards, tmp_path_factory) -> Path:
    """The same run without the final clustering (its model carries no clusters) and with the recipe's photometric
    branch and centre crop (every command downstream must take that model as it takes a plain one), trained once;
    read it or copy it."""
    run = tmp_path_factory.mktemp("plain") / "run"
    train(f"data.shards={sim_shards}", f"output_dir={run}", *PLAIN_RUN)
    return run


# The longest files first: two workers each take whole files (--dist loadfile), so a long file started last would
# leave the other worker idle at the end (measured with `pytest --durations=40`).
LONGEST_FIRST = ("test_slurm.py", "test_two_machines.py", "test_deepcluster.py", "test_faults.py", "test_train.py",
                 "test_trust.py", "test_shared_fs.py", "test_predict.py", "test_ddp.py", "test_outputs.py",
                 "test_selection.py", "test_bad_input.py")


def pytest_collection_modifyitems(items):
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
