"""A real catalog (a few spectra among many unlabeled objects) and `stellar-dist select` (which to observe next)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import one_line_error, run_cli


@pytest.fixture(scope="module")
def partial_catalog(sim_catalog, tmp_path_factory):
    """The simulated catalog as an astronomer's: 40 of 200 rows keep their class (column `class`), the rest are
    empty; image paths in column `cutout`."""
    frame = pd.read_csv(sim_catalog, dtype=str)
    frame["image_path"] = [str(sim_catalog.parent / path) for path in frame["image_path"]]
    keep = np.zeros(len(frame), dtype=bool)
    for name in frame["Class"].unique():  # some of every class
        keep[np.flatnonzero(frame["Class"].to_numpy() == name)[:14]] = True
    truth = frame["Class"].copy()
    frame.loc[~keep, "Class"] = ""
    frame = frame.rename(columns={"image_path": "cutout", "Class": "class"})
    folder = tmp_path_factory.mktemp("partial")
    frame.to_csv(folder / "cat.csv", index=False)
    return folder / "cat.csv", keep, truth


def pack(catalog, out, *extra, check=True):
    return run_cli("pack", "--catalog", str(catalog), "--out", str(out), "--path-column", "cutout", "--image-size",
                   "16", "--shard-size", "50", "--workers", "1", *extra, check=check)


def test_every_spectrum_is_used_and_a_tiny_test_split_is_flagged(partial_catalog, tmp_path):
    catalog, keep, _ = partial_catalog
    result = pack(catalog, tmp_path / "s")
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    counts = manifest["num_samples"]
    assert counts["labeled"] + counts["test"] == keep.sum() and counts["unlabeled"] == (~keep).sum()
    assert all(manifest["counts"]["test"][name] >= 1 for name in manifest["classes"])
    assert "without a class 158" in result.stdout
    assert "warning: the test split holds fewer than 10 objects" in result.stdout and "--fold 1/5" in result.stdout


def test_no_test_split_trains_and_says_so(partial_catalog, tmp_path):
    from conftest import train

    catalog, keep, _ = partial_catalog
    assert "no test split" in pack(catalog, tmp_path / "s", "--test-fraction", "0").stdout
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["num_samples"]["labeled"] == keep.sum()
    result = train(f"data.shards={tmp_path / 's'}", f"output_dir={tmp_path / 'run'}", "ssl.algorithm=supervised",
                   "pretrain.steps=0", "cluster.at_end=false")
    assert "no test split" in result.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["evaluated_on"] == "none" and "test" not in metrics
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_labels_file_adds_spectra_by_id_and_refuses_conflicts(partial_catalog, tmp_path):
    catalog, keep, truth = partial_catalog
    frame = pd.read_csv(catalog, dtype=str)
    new = np.flatnonzero(~keep)[:10]
    pd.DataFrame({"objid": frame["objid"].iloc[new], "CLASS": truth.iloc[new]}).to_csv(tmp_path / "new.csv",
                                                                                         index=False)
    pack(catalog, tmp_path / "s", "--labels", str(tmp_path / "new.csv"), "--label-column", "class")
    counts = json.loads((tmp_path / "s" / "manifest.json").read_text())["num_samples"]
    assert counts["labeled"] + counts["test"] == keep.sum() + 10
    wrong = {"GALAXY": "STAR", "STAR": "QSO", "QSO": "GALAXY"}
    first = np.flatnonzero(keep)[0]
    pd.DataFrame({"objid": [frame["objid"].iloc[first]], "class": [wrong[truth.iloc[first]]]}).to_csv(
        tmp_path / "conflict.csv", index=False)
    line = one_line_error(pack(catalog, tmp_path / "no", "--labels", str(tmp_path / "conflict.csv"), check=False))
    assert "in the catalog and" in line and not (tmp_path / "no").exists()
    pd.DataFrame({"objid": ["42"], "class": ["STAR"]}).to_csv(tmp_path / "unknown.csv", index=False)
    line = one_line_error(pack(catalog, tmp_path / "no", "--labels", str(tmp_path / "unknown.csv"), check=False))
    assert "not in the catalog's 'objid' column (first 42)" in line


def test_errors_name_the_users_columns_and_benchmark_refusals_tell_the_truth(partial_catalog, tmp_path):
    catalog, keep, _ = partial_catalog
    line = one_line_error(run_cli("pack", "--catalog", str(catalog), "--out", str(tmp_path / "s"), check=False))
    assert "no column 'image_path'" in line and "has: cutout" in line and "--path-column" in line
    line = one_line_error(pack(catalog, tmp_path / "s", "--labeled-count", "60", check=False))
    assert "more than the" in line and "drop --labeled-count" in line
    # the benchmark on a partly labeled catalog: every row with a class may be labeled (the rest is unlabeled)
    pack(catalog, tmp_path / "b", "--labeled-count", "30")
    counts = json.loads((tmp_path / "b" / "manifest.json").read_text())["num_samples"]
    assert counts["labeled"] == 30 and counts["unlabeled"] == (~keep).sum() + keep.sum() - 30 - counts["test"]


def test_folds_test_every_spectrum_once():
    from stellar_dist.data.splits import split_catalog

    classes = pd.Series(["A"] * 13 + ["B"] * 7 + [""] * 30)
    tested = [np.flatnonzero(split_catalog(classes, 0.2, seed=3, fold=(fold, 5)) == "test") for fold in range(1, 6)]
    together = np.concatenate(tested)
    assert len(together) == len(np.unique(together)) == 20 and set(together) == set(range(20))
    plain = split_catalog(classes, 0.2, seed=3)
    assert (plain[20:] == "unlabeled").all() and (plain[:20] != "unlabeled").all()
    assert (plain == "test").sum() == round(13 * 0.2) + round(7 * 0.2)


def test_new_spectra_keep_the_objects_the_last_pack_tested():
    """An astronomer's rounds: 150 spectra, then 60 more. Decided by a seeded hash of each object's id, the second
    pack tests every object the first one tested, whatever the order of the rows; a seeded permutation of row
    positions (the old rule) kept about a fifth of them."""
    from stellar_dist.data.splits import object_keys, split_catalog

    rng = np.random.default_rng(0)
    names = [f"id:{1237650000000000000 + index}" for index in range(400)]
    classes = pd.Series(rng.choice(["GALAXY", "QSO", "STAR"], 400, p=[0.6, 0.1, 0.3]))
    first = classes.where(np.arange(400) < 150, "")
    second = classes.where(np.arange(400) < 210, "")
    keys = object_keys(names, seed=42)
    before = set(np.flatnonzero(split_catalog(first, 0.2, seed=42, keys=keys) == "test"))
    after = set(np.flatnonzero(split_catalog(second, 0.2, seed=42, keys=keys) == "test"))
    assert before <= after and 0.1 * 210 <= len(after) <= 0.3 * 210  # every object tested before is tested again
    shuffled = rng.permutation(400)  # the same objects in another row order: the same split for each
    again = split_catalog(second.iloc[shuffled].reset_index(drop=True), 0.2, seed=42, keys=keys[shuffled])
    assert set(shuffled[np.flatnonzero(again == "test")]) == after
    old_rule = [set(np.flatnonzero(split_catalog(catalog, 0.2, seed=42) == "test")) for catalog in (first, second)]
    assert len(old_rule[0] & old_rule[1]) < 0.6 * len(old_rule[0])


def test_select_cold_start_writes_targets_from_the_unlabeled_split(sim_shards, tmp_path):
    result = run_cli("select", "--shards", str(sim_shards), "--budget", "12", "--out", str(tmp_path / "t.csv"),
                     "--workers", "1")
    assert "by typical" in result.stdout
    targets = pd.read_csv(tmp_path / "t.csv", dtype=str)
    assert len(targets) == 12 and targets["id"].is_unique and targets["objid"].str.len().min() > 0
    manifest = json.loads((sim_shards / "manifest.json").read_text())
    splits = {}
    from stellar_dist.data.streams import iter_samples, shard_paths

    for split in ("labeled", "unlabeled", "test"):
        for raw in iter_samples(shard_paths(sim_shards, split)):
            splits[json.loads(raw["json"])["id"]] = split
    assert {splits[int(value)] for value in targets["id"]} == {"unlabeled"}
    assert targets["cluster"].astype(int).nunique() == 12  # one per cluster: spread over the catalog
    assert (tmp_path / "t.png").stat().st_size > 1000 and manifest["num_samples"]["unlabeled"] > 12
    line = one_line_error(run_cli("select", "--shards", str(sim_shards), "--budget", "100000", "--out",
                                  str(tmp_path / "u.csv"), check=False))
    assert "--budget 100000 must lie in" in line and not (tmp_path / "u.csv").exists()


def test_select_warm_start_from_a_model_and_a_catalog_without_classes(plain_run, sim_shards, sim_catalog,
                                                                      tmp_path):
    run = plain_run  # with the photometric branch: its features are the joined ones
    run_cli("select", "--shards", str(sim_shards), "--budget", "5", "--out", str(tmp_path / "t.parquet"),
            "--model", str(run), "--workers", "1")
    targets = pd.read_parquet(tmp_path / "t.parquet")
    assert len(targets) == 5 and set(targets["rule"]) == {"uncertain"} and targets["score"].between(0, 1).all()
    frame = pd.read_csv(sim_catalog, dtype=str).drop(columns=["Class"])
    frame["image_path"] = [str(sim_catalog.parent / path) for path in frame["image_path"]]
    frame.to_csv(tmp_path / "none.csv", index=False)
    result = run_cli("pack", "--catalog", str(tmp_path / "none.csv"), "--out", str(tmp_path / "s"), "--image-size",
                     "16", "--workers", "1")
    assert "no row has a class" in result.stdout
    run_cli("select", "--shards", str(tmp_path / "s"), "--budget", "7", "--out", str(tmp_path / "c.fits"),
            "--workers", "1")
    from astropy.table import Table

    assert len(Table.read(tmp_path / "c.fits")) == 7
    from conftest import train

    line = one_line_error(train(f"data.shards={tmp_path / 's'}", f"output_dir={tmp_path / 'run'}", check=False))
    assert "holds no object with a class" in line and "stellar-dist select" in line


def test_typical_choice_covers_every_region_and_never_a_labeled_row():
    from stellar_dist.selection.choose import typical, uncertain

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 4)) * 20
    points = np.concatenate([centre + rng.normal(size=(50, 4)) for centre in centres]).astype(np.float32)
    labeled = np.zeros(len(points), dtype=bool)
    labeled[:50] = True  # region 0 already has spectra
    choice = typical(points, labeled, 5, seed=1)
    regions = choice.rows // 50
    assert sorted(regions.tolist()) == [1, 2, 3, 4, 5] and not labeled[choice.rows].any()
    probabilities = rng.dirichlet(np.ones(3), size=len(points))
    picked = uncertain(points, probabilities, labeled, 6, seed=1)
    assert len(set(picked.rows.tolist())) == 6 and not labeled[picked.rows].any()


def test_folds_report_pools_every_test_object(tmp_path):
    for fold, rows in ((1, [(0, "STAR", "STAR"), (1, "QSO", "STAR")]), (2, [(2, "QSO", "QSO"), (3, "STAR", "STAR")])):
        (tmp_path / f"f{fold}").mkdir()
        pd.DataFrame([{"id": i, "objid": i, "true_class": t, "predicted_class": p} for i, t, p in rows]).to_csv(
            tmp_path / f"f{fold}" / "predictions.csv", index=False)
    result = run_cli("evaluate", "--folds", str(tmp_path / "f1"), str(tmp_path / "f2"), "--out", str(tmp_path / "cv"))
    metrics = json.loads((tmp_path / "cv" / "metrics.json").read_text())
    assert metrics["accuracy"] == 0.75 and metrics["folds"] == 2 and "every spectrum tested once" in result.stdout
    line = one_line_error(run_cli("evaluate", "--folds", str(tmp_path / "f1"), str(tmp_path / "f1"), check=False))
    assert "in the test split of two runs" in line


def test_two_ranks_choose_what_one_rank_chooses(sim_shards, tmp_path):
    import subprocess
    import sys

    from conftest import REPO_ROOT
    from conftest import free_port

    run_cli("select", "--shards", str(sim_shards), "--budget", "9", "--out", str(tmp_path / "one.csv"),
            "--workers", "1")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO_ROOT / "accelerate_configs" / "cpu_ddp.yaml"), "--main_process_port", str(free_port()),
               "-m", "stellar_dist", "select", "--shards", str(sim_shards), "--budget", "9", "--out",
               str(tmp_path / "two.csv"), "--workers", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("chose 9 of") == 1  # rank 0 alone writes and reports
    one, two = pd.read_csv(tmp_path / "one.csv", dtype=str), pd.read_csv(tmp_path / "two.csv", dtype=str)
    assert one[["rank", "id", "objid", "cluster"]].equals(two[["rank", "id", "objid", "cluster"]])
