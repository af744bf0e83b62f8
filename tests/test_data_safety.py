"""Packing never loses the user's files, never runs what the data says, and reads ids and pixels exactly."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from PIL import Image

from conftest import REPO_ROOT, copied_catalog, one_line_error, run_cli, tree
from test_bad_input import pack_fails


def test_overwrite_never_deletes_the_catalog_or_unrelated_files(sim_catalog, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(sim_catalog.parent, data)
    before = tree(data)
    # --out is the catalog's own folder: refused, with or without --overwrite, and every file stays.
    for extra in ([], ["--overwrite"]):
        line = one_line_error(run_cli("pack", "--catalog", str(data / "catalog.csv"), "--out", str(data),
                                      "--workers", "1", *extra, check=False))
        assert "catalog" in line
    assert tree(data) == before
    # A folder of the user's own files: refused even with --overwrite, and the message does not suggest it.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a week of work")
    (mine / "manifest.json").write_text("{}")
    for extra in ([], ["--overwrite"]):
        result = run_cli("pack", "--catalog", str(data / "catalog.csv"), "--out", str(mine), "--workers", "1",
                         *extra, check=False)
        line = one_line_error(result)
        assert "did not write" in line and "--overwrite" not in line
    assert (mine / "notes.txt").read_text() == "a week of work" and (mine / "manifest.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "mine"], "staging folders left behind"


def test_overwrite_of_a_symlinked_out_replaces_the_target_and_keeps_the_link(sim_catalog, sim_shards, tmp_path):
    target = tmp_path / "storage" / "shards"
    shutil.copytree(sim_shards, target)
    link = tmp_path / "shards"
    link.symlink_to(target)
    # A pack output with one extra file of the user's is no longer pack's to replace.
    (target / "README.txt").write_text("mine")
    one_line_error(run_cli("pack", "--catalog", str(sim_catalog), "--out", str(link), "--overwrite",
                           "--workers", "1", check=False))
    assert (target / "README.txt").exists() and (target / "manifest.json").exists()
    (target / "README.txt").unlink()
    run_cli("pack", "--catalog", str(sim_catalog), "--out", str(link), "--image-size", "16", "--overwrite",
            "--workers", "1")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert json.loads((target / "manifest.json").read_text())["image_size"] == 16
    assert "OK: " in run_cli("pack", "--verify", str(link)).stdout
    assert sorted(p.name for p in (tmp_path / "storage").iterdir()) == ["shards"]


def test_shard_names_from_the_manifest_are_never_run(sim_shards, tmp_path):
    marker = tmp_path / "ran"
    shards = tmp_path / "shards"
    shutil.copytree(sim_shards, shards)
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["shards"]["test"][0]["name"] = f"pipe:touch {marker} && cat {shards}/test-000000.tar"
    (shards / "manifest.json").write_text(json.dumps(manifest))
    assert "not of the form test-NNNNNN.tar" in one_line_error(run_cli("pack", "--verify", str(shards),
                                                                       check=False))
    result = subprocess.run([sys.executable, "launch/train.py", f"data.shards={shards}",
                             f"output_dir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=REPO_ROOT)
    one_line_error(result)
    assert not marker.exists() and not (tmp_path / "run").exists()
    # The stream itself opens local files only: a pipe: path is a missing file, not a command.
    from stellar_dist.data.streams import iter_samples
    from stellar_dist.core.errors import UserError

    with pytest.raises(UserError, match="can no longer be read"):
        list(iter_samples([f"pipe:touch {marker}"]))
    assert not marker.exists()


def test_ids_round_trip_exactly_whatever_the_csv_dialect(sim_catalog, tmp_path):
    source = pd.read_csv(sim_catalog, dtype=str)
    rows = []
    for index, row in source.iterrows():
        specobjid = "" if index == 5 else str(2**63 - 1000 + index)  # one missing value in a 64-bit column
        rows.append(f'"{row["objid"]}","{specobjid}","{Path(sim_catalog.parent, row["image_path"])}",'
                    f'"{row["Class"]}",{index * 7},{"NaN" if index == 3 else index / 4}')
    catalog = tmp_path / "c.csv"
    # UTF-8 BOM, quoted header, objid first, and a column named like pack's own fields.
    catalog.write_bytes(("\ufeff" + '"objid","specobjid","image_path","Class","_id","z"\n' + "\n".join(rows) + "\n")
                        .encode("utf-8"))
    run_cli("pack", "--catalog", str(catalog), "--out", str(tmp_path / "out"), "--workers", "1")
    from test_pack import read_shards

    records = {record["id"]: record for split in read_shards(tmp_path / "out").values() for record in split}
    for index, row in source.iterrows():
        meta = records[index]["meta"]
        assert meta["objid"] == int(row["objid"]) and isinstance(meta["objid"], int)
        assert meta["specobjid"] == (None if index == 5 else 2**63 - 1000 + index)
        assert meta["_id"] == index * 7 and records[index]["id"] == index
        assert meta["z"] == (None if index == 3 else index / 4)


def test_sixteen_bit_images_are_refused_not_clipped(sim_catalog, tmp_path):
    catalog = pd.read_csv(sim_catalog)
    catalog["image_path"] = [str(sim_catalog.parent / path) for path in catalog["image_path"]]
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((64, 64), 3000, dtype=np.uint16)).save(deep)
    assert Image.open(deep).mode.startswith("I;16")
    catalog.loc[7, "image_path"] = str(deep)
    catalog.to_csv(tmp_path / "c.csv", index=False)
    line = pack_fails(tmp_path, tmp_path / "c.csv")
    assert "deep.png" in line and "16/32-bit" in line and "8 bits" in line


def test_folder_catalog_ignores_hidden_folders_and_refuses_lookalike_classes(sim_catalog, tmp_path):
    catalog = pd.read_csv(sim_catalog)
    root = tmp_path / "by_class"
    for index, row in catalog.iterrows():
        (root / row["Class"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(sim_catalog.parent / row["image_path"], root / row["Class"] / f"{index}.jpg")
    (root / ".ipynb_checkpoints").mkdir()
    shutil.copy(sim_catalog.parent / catalog["image_path"][0], root / ".ipynb_checkpoints" / "x.jpg")
    run_cli("pack", "--catalog", str(root), "--out", str(tmp_path / "out"), "--workers", "1")
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["classes"] == ["GALAXY", "QSO", "STAR"]
    spelt = catalog.copy()
    spelt["image_path"] = [str(sim_catalog.parent / path) for path in spelt["image_path"]]
    spelt.loc[spelt["Class"] == "STAR", "Class"] = ["Star", "STAR "] * int((spelt["Class"] == "STAR").sum() // 2) + \
        ["STAR"] * int((spelt["Class"] == "STAR").sum() % 2)
    (tmp_path / "spelt").mkdir()
    spelt.to_csv(tmp_path / "spelt" / "s.csv", index=False)
    assert "differ only by case" in pack_fails(tmp_path / "spelt", tmp_path / "spelt" / "s.csv")


def test_sigterm_during_pack_leaves_nothing(sim_catalog, tmp_path):
    copied_catalog(sim_catalog, tmp_path, 15)  # 3,000 images: a few seconds of packing
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "stellar_dist", "pack", "--catalog", str(tmp_path / "c.csv"),
                                "--out", str(out), "--workers", "2", "--shard-size", "50"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO_ROOT)
    deadline, workers = time.time() + 60, []
    while time.time() < deadline and not list(tmp_path.glob(".sdtmp-out-*/*.tar")):
        time.sleep(0.05)
    workers = psutil.Process(process.pid).children(recursive=True)
    assert workers, "pack started no worker processes"
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    assert process.returncode != 0
    assert not out.exists() and not list(tmp_path.glob(".out*")) and not list(tmp_path.glob(".sdtmp-*")), \
        "staging folder left behind"
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"worker processes left running: {alive}"
