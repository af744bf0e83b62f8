"""bench/gpu.sh, the script a lent GPU machine runs once: its CPU dry run (SIZES=tiny) runs every step, each
recording its status, the log streamed as it runs, the smoke's sync counts per step, at most 8 files in $OUT."""

import json
import os
import subprocess

from conftest import REPO_ROOT


def test_the_lease_script_runs_every_step_on_a_cpu(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "SIZES": "tiny", "OUT": str(out), "TMPDIR": str(tmp_path)}
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
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "webdataset.py").write_text("raise ModuleNotFoundError(\"No module named 'webdataset'\")\n")
    env = {**os.environ, "SIZES": "tiny", "OUT": str(out), "TMPDIR": str(tmp_path),
           "PYTHONPATH": f"{blocker}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run(["bash", "bench/gpu.sh"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
                   check=False)
    summary = json.loads((out / "summary.json").read_text())
    steps = {name: step["status"] for name, step in summary["steps"].items()}
    assert steps["import webdataset"] == "missing" and "pack" not in steps
    assert steps["step_speed"] == "ok" and steps["kmeans"] == "ok" and steps["smoke"].startswith("failed")
    smoke = json.loads((out / "smoke.json").read_text())
    assert "loss" in smoke["bf16_step"] and "failed" in smoke["engine_steps"]
    assert "webdataset missing: the steps on shards are skipped" in (out / "gpu.log").read_text()
