"""Shared fixtures: a small simulated catalog and its shards, built once per test session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = REPO_ROOT.parent / "shared" / "sdss_dr16"


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `stellar-dist ARGS` as a user would, in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-m", "stellar_dist.cli", *args], capture_output=True, text=True, cwd=REPO_ROOT
    )
    if check and result.returncode != 0:
        raise AssertionError(f"stellar-dist {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


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
