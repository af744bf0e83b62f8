"""Packing in parts (a job array's tasks) and merging them equals one pack of the same catalog and options."""

import json

from conftest import one_line_error, run_cli

PACK = ["--labeled-fraction", "0.2", "--test-fraction", "0.2", "--image-size", "32", "--shard-size", "40"]
SAME = ("classes", "counts", "num_samples", "shards", "skipped", "num_input", "encoding", "preprocess")


def manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def test_parts_merged_equal_one_pack(sim_catalog, tmp_path):
    single, merged = tmp_path / "single", tmp_path / "merged"
    run_cli("pack", "--catalog", str(sim_catalog), "--out", str(single), *PACK, "--workers", "2")
    for part in ("2/3", "0/3"):
        run_cli("pack", "--catalog", str(sim_catalog), "--out", str(merged), *PACK, "--workers", "1", "--part", part)
    early = run_cli("pack", "--merge", str(merged), check=False)
    assert early.returncode == 2 and "parts 1 of 3 are missing or unfinished" in one_line_error(early)
    assert not merged.exists()
    run_cli("pack", "--catalog", str(sim_catalog), "--out", str(merged), *PACK, "--workers", "1", "--part", "1/3")
    again = run_cli("pack", "--catalog", str(sim_catalog), "--out", str(merged), *PACK, "--part", "1/3")
    assert "ready" in again.stdout  # a re-run task (a requeue) finds its part done
    other = run_cli("pack", "--catalog", str(sim_catalog), "--out", str(merged), *PACK[:-1], "50", "--part", "1/3",
                    check=False)
    assert other.returncode == 2 and "other options" in one_line_error(other)
    run_cli("pack", "--merge", str(merged))
    assert all(manifest(single)[key] == manifest(merged)[key] for key in SAME)
    assert not (tmp_path / "merged.parts").exists()
    run_cli("pack", "--verify", str(merged))


def test_a_bad_part_is_refused(sim_catalog, tmp_path):
    result = run_cli("pack", "--catalog", str(sim_catalog), "--out", str(tmp_path / "s"), "--part", "3/3",
                     check=False)
    assert result.returncode == 2 and "0 <= INDEX < COUNT" in one_line_error(result)
    assert not list(tmp_path.iterdir())
