"""bench/gpu.sh, the script a lent GPU machine runs once: its CPU dry run (SIZES=tiny), with the packages that
machine lacks hidden, runs every step, each recording its status, the log streamed as it runs, the smoke's sync
counts per step, at most 8 files in $OUT."""

import json
import os
import subprocess
import sys

from conftest import REPO_ROOT

# What the lent GPU machine lacks (the device README; webdataset travels as a carried wheel): hidden from the
# dry run's processes
GPU_MACHINE_LACKS = ("astropy", "wandb", "faiss", "fitsio")

HIDING = """import importlib.abc, importlib.util, sys

HIDDEN = {hidden!r}


class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named '{{name}}'", name=name)


def find_spec(name, package=None, _find_spec=importlib.util.find_spec):
    return None if name.split(".")[0] in HIDDEN else _find_spec(name, package)


sys.meta_path.insert(0, Hide())
importlib.util.find_spec = find_spec
"""


def without(tmp_path, hidden: tuple[str, ...]) -> dict:
    """The environment of a machine where `hidden` are not installed: a sitecustomize that every Python process
    of the script imports at start makes `import NAME` fail and `find_spec(NAME)` answer None, as when absent."""
    folder = tmp_path / "hide"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(HIDING.format(hidden=set(hidden)))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}


def test_the_lease_script_runs_every_step_on_a_cpu(tmp_path):
    """Every step, on this machine made to lack what the GPU machine lacks (the carried wheels give webdataset)."""
    out = tmp_path / "out"
    env = {**without(tmp_path, GPU_MACHINE_LACKS), "SIZES": "tiny", "OUT": str(out), "TMPDIR": str(tmp_path)}
    hidden = subprocess.run([sys.executable, "-c", "import importlib.util as u; print([u.find_spec(n) for n in "
                             f"{GPU_MACHINE_LACKS!r}])"], env=env, capture_output=True, text=True, check=True)
    assert hidden.stdout.strip() == str([None] * len(GPU_MACHINE_LACKS))  # hidden, though installed
    result = subprocess.run(["bash", "bench/gpu.sh"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    expected = ["facts", "import torch", "import accelerate", "import webdataset", "cutouts", "pack", "smoke",
                "step_speed", "train", "wait-workers", "wait-device", "kmeans"]
    assert list(summary["steps"]) == expected
    assert {name: step["status"] for name, step in summary["steps"].items()} == dict.fromkeys(expected, "ok")
    assert summary["wait-device"]["images_per_second"] > 0 and summary["train"]["reclusterings"] >= 1
    assert len(list(out.iterdir())) <= 8 and not list(tmp_path.glob("stellar-gpu.*"))  # scratch removed
    log = (out / "gpu.log").read_text()
    markers = [log.index(f"s] {number}. ") for number in range(8)]  # every step's header, in order, with its time
    assert markers == sorted(markers) and "cores: " in log and "smoke: engine_steps ok" in log
    smoke = json.loads((out / "smoke.json").read_text())
    assert all(name in smoke for name in ("bf16_step", "device_views", "device_kmeans", "engine_steps"))
    for algorithm, counted in smoke["engine_steps"].items():
        if isinstance(counted, dict) and "syncs_per_step" in counted:
            assert counted["syncs_per_step"].get("4", 0) > 0  # the log step reads: the counter is on
            assert not {line for step in ("2", "3") for line in counted.get("quiet_step_syncs_by_line", {})
                        if counted["syncs_per_step"].get(step)}, (algorithm, counted)


def test_a_failed_step_does_not_end_the_lease_script(tmp_path):
    """Without webdataset (a machine that lacks it, no wheels carried), the shard steps are skipped with one line
    saying so, and the independent checks (smoke's device checks, step speed, k-means) still run and record."""
    out = tmp_path / "out"
    env = {**without(tmp_path, ("webdataset", *GPU_MACHINE_LACKS)), "SIZES": "tiny", "OUT": str(out),
           "TMPDIR": str(tmp_path)}
    subprocess.run(["bash", "bench/gpu.sh"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
                   check=False)
    summary = json.loads((out / "summary.json").read_text())
    steps = {name: step["status"] for name, step in summary["steps"].items()}
    assert steps["import webdataset"] == "missing" and "pack" not in steps
    assert steps["step_speed"] == "ok" and steps["kmeans"] == "ok" and steps["smoke"].startswith("failed")
    smoke = json.loads((out / "smoke.json").read_text())
    assert "loss" in smoke["bf16_step"] and "failed" in smoke["engine_steps"]
    assert "webdataset missing: the steps on shards are skipped" in (out / "gpu.log").read_text()
