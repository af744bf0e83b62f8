"""`stellar-dist predict`: the evaluation's predictions on the same images, bad rows kept with their reason,
2 ranks = 1 rank,
CSV = parquet = FITS."""

import json
import subprocess
from pathlib import Path
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from astropy.table import Table

from conftest import REPO_ROOT, free_port, run_cli, train
from stellar_dist.data.streams import iter_samples, shard_paths


@pytest.fixture(scope="module")
def trained(plain_run):
    return plain_run


def test_object_ids_keep_their_type_and_every_digit(tmp_path):
    """Integer ids (SDSS's 19-digit objID) become 64-bit integer columns in parquet and FITS, a missing one
    masked; any id that is not an integer keeps the column text."""
    from stellar_dist.data.objids import id_type
    from stellar_dist.inference.writer import Writer

    big = "1237648720693755918"  # > 2**53: float64 would change it
    assert id_type([big, None, "-5", ""]) == "int64" and id_type([big, "J1234+5678"]) == "string"
    assert id_type(["9223372036854775808"]) == "string" and id_type([None, ""]) is None
    from stellar_dist.inference.pipeline import columns

    schema = columns(["GALAXY", "QSO"], (), "int64")
    frame = pd.DataFrame({"row": [0, 1], "objid": pd.array([int(big), None], dtype="Int64"), "image_path": "a.png",
                          "predicted_class": "QSO",
                          "p_GALAXY": 0.1, "p_QSO": 0.9, "max_probability": 0.9, "low_confidence": False,
                          "unusual": False,
                          "rejected_reason": ""}).astype(schema)
    for name in ("t.parquet", "t.fits"):
        writer = Writer(tmp_path / name, schema)
        writer.write(frame)
        writer.close()
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = pq.read_table(tmp_path / "t.parquet")["objid"]  # pandas: read_parquet(..., dtype_backend="pyarrow")
    assert ids.type == pa.int64() and ids.to_pylist() == [int(big), None]
    fits = Table.read(tmp_path / "t.fits")
    assert fits["objid"].dtype.str[1:] == "i8" and str(fits["objid"][0]) == big and fits["objid"].mask[1]


def split_catalog_with_bad_rows(sim_catalog, sim_shards, folder):
    """The test split as a user's CSV (absolute paths, objid as text), with a missing and a corrupt image."""
    rows = []
    for raw in iter_samples(shard_paths(sim_shards, "test")):
        record = json.loads(raw["json"])
        rows.append({"image_path": str(sim_catalog.parent / record["source"]), "objid": str(record["meta"]["objid"]),
                     "Class": record["class"]})
    corrupt = folder / "corrupt.jpg"
    corrupt.write_bytes(b"not a jpeg")
    rows[3:3] = [{"image_path": str(folder / "missing.jpg"), "objid": "1", "Class": "STAR"},
                 {"image_path": str(corrupt), "objid": "2", "Class": "STAR"}]
    path = folder / "catalog.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path, rows


def test_predict_equals_the_evaluation_and_lists_bad_rows(trained, sim_catalog, sim_shards, tmp_path):
    catalog, rows = split_catalog_with_bad_rows(sim_catalog, sim_shards, tmp_path)
    result = run_cli("predict", "--model", str(trained), "--input", str(catalog), "--out", str(tmp_path / "p.csv"))
    assert "2 input(s) could not be read" in result.stdout
    every = pd.read_csv(tmp_path / "p.csv", dtype={"objid": str})
    assert every["row"].tolist() == list(range(len(rows)))  # one row per input row, in input order
    assert every["objid"].tolist() == [row["objid"] for row in rows]
    bad = every.iloc[[3, 4]]  # unread images keep their place: empty predictions, the reason
    assert bad["rejected_reason"].str.len().gt(0).all() and bad["predicted_class"].isna().all()
    assert bad["max_probability"].isna().all() and bad["unusual"].isna().all()
    assert bad["image_path"].iloc[0].endswith("missing.jpg") and every["rejected_reason"].drop([3, 4]).isna().all()
    out = every.drop(index=[3, 4]).reset_index(drop=True)
    truth = [row["Class"] for index, row in enumerate(rows) if index not in (3, 4)]
    accuracy = float(np.mean(out["predicted_class"].to_numpy() == np.array(truth)))
    assert accuracy == pytest.approx(json.loads((trained / "metrics.json").read_text())["test"]["accuracy"])
    probabilities = out[[column for column in out.columns if column.startswith("p_")]].to_numpy()
    assert np.allclose(probabilities.sum(1), 1, atol=1e-5)
    assert (out["unusual"] == (out["max_probability"] < 0.6)).all()
    # From Python, an astropy Table: every row back, its own columns kept (64-bit ids), the same predictions
    from stellar_dist import predict_catalog

    table = Table({"image_path": [row["image_path"] for row in rows], "objid": [int(row["objid"]) for row in rows],
                   "ra": np.linspace(150.0, 151.0, len(rows))})
    predicted = predict_catalog(str(trained), table)
    assert isinstance(predicted, Table) and len(predicted) == len(rows) and predicted["objid"].dtype == np.int64
    assert predicted.colnames[:3] == ["image_path", "objid", "ra"] and "rejected_reason" in predicted.colnames
    read = [index for index in range(len(rows)) if index not in (3, 4)]
    assert [bool(predicted["rejected_reason"][index]) for index in range(len(rows))] == \
        [index in (3, 4) for index in range(len(rows))]
    assert list(predicted["predicted_class"][read]) == out["predicted_class"].tolist()
    assert np.allclose(np.array(predicted["max_probability"][read]), out["max_probability"], atol=1e-5)
    assert np.isnan(predicted["max_probability"][3]) and predicted["predicted_class"].mask[4]
    assert predicted["cluster"].mask[3] if "cluster" in predicted.colnames else True
    # the README's example: the returned Table writes to FITS and parquet and reads back the same
    for name in ("qso_candidates.fits", "qso_candidates.parquet"):
        predicted.write(tmp_path / name)
        back = Table.read(tmp_path / name)
        assert list(back["predicted_class"][read]) == list(predicted["predicted_class"][read])
        assert back["predicted_class"].mask[4] and list(back["objid"]) == list(predicted["objid"])
        assert np.allclose(np.array(back["max_probability"][read]), np.array(predicted["max_probability"][read]))
    frame = predict_catalog(trained, catalog)  # a CSV path: a DataFrame, ids as written
    assert frame["objid"].tolist() == [row["objid"] for row in rows]
    assert frame["predicted_class"].iloc[read].tolist() == out["predicted_class"].tolist()
    frame.to_parquet(tmp_path / "frame.parquet")  # typed columns: pyarrow writes them
    # a DataFrame of relative paths used from another working directory: an error naming base_dir, not NaN rows;
    # refusals are the exceptions a notebook catches (ValueError; FileNotFoundError for a path that is not there)
    relative = pd.DataFrame({"image_path": [str(Path(row["image_path"]).relative_to(sim_catalog.parent))
                                            for row in rows if str(sim_catalog.parent) in row["image_path"]]})
    with pytest.raises(ValueError, match="base_dir"):
        predict_catalog(trained, relative)
    with pytest.raises(FileNotFoundError, match="no-such.fits does not exist"):
        predict_catalog(trained, tmp_path / "no-such.fits")
    with pytest.raises(FileNotFoundError, match="no-such-run does not exist"):
        predict_catalog(tmp_path / "no-such-run", relative)
    with pytest.raises(ValueError, match="has no 'cutout' column"):
        predict_catalog(trained, relative, image_column="cutout")
    assert len(predict_catalog(trained, relative, base_dir=sim_catalog.parent)) == len(relative)
    table.write(tmp_path / "catalog.fits")  # the command reads every table format pack reads
    from_path = predict_catalog(trained, tmp_path / "catalog.fits")  # FITS text arrives as bytes: paths still read
    assert from_path["predicted_class"].iloc[read].tolist() == out["predicted_class"].tolist()
    assert isinstance(from_path["image_path"].iloc[0], str)
    run_cli("predict", "--model", str(trained), "--input", str(tmp_path / "catalog.fits"), "--out",
            str(tmp_path / "f.csv"))
    from_fits = pd.read_csv(tmp_path / "f.csv", dtype={"objid": str}).drop(index=[3, 4])
    assert from_fits["objid"].tolist() == out["objid"].tolist()
    assert from_fits["predicted_class"].tolist() == out["predicted_class"].tolist()
    # SDSS's own column names through the command: objID found as the id, the path column named, every other
    # catalog column (ra, class) carried into the output
    sdss = pd.DataFrame({"objID": [row["objid"] for row in rows], "cutout": [row["image_path"] for row in rows],
                         "ra": [f"{150 + index / 100:.5f}" for index in range(len(rows))],
                         "specObjID": [str(2**63 - 1 - index) if index % 3 else "" for index in range(len(rows))],
                         "class": [row["Class"] for row in rows]})
    sdss.to_csv(tmp_path / "sdss.csv", index=False)
    run_cli("predict", "--model", str(trained), "--input", str(tmp_path / "sdss.csv"), "--out",
            str(tmp_path / "sdss.parquet"), "--path-column", "cutout")
    back = pd.read_parquet(tmp_path / "sdss.parquet", dtype_backend="pyarrow")
    assert list(back.columns[:6]) == ["row", "objid", "image_path", "ra", "specObjID", "class"]
    assert [str(value) for value in back["objid"]] == sdss["objID"].tolist()  # 19-digit ids, every digit
    # the catalog's columns keep their type: numbers as numbers, 19-digit integers exact, an empty cell missing
    assert str(back["ra"].dtype) == "double[pyarrow]" and back["ra"].tolist() == sdss["ra"].astype(float).tolist()
    assert [None if value is None or value is pd.NA else str(value) for value in back["specObjID"]] == \
        [value or None for value in sdss["specObjID"]]
    assert back["class"].tolist() == sdss["class"].tolist()
    with warnings.catch_warnings():  # astropy reads it, rejected rows (missing text) included, without a warning
        warnings.simplefilter("error")
        table = Table.read(tmp_path / "sdss.parquet")
    assert len(table) == len(rows) and table["rejected_reason"][3] and table["predicted_class"][0] in ("GALAXY", "QSO", "STAR")
    assert table["objid"].dtype == np.int64 and table["ra"].dtype == float  # (astropy's parquet reader turns an
    # integer column with a missing value into float64: the README sends astropy users to FITS, masked)
    assert back["predicted_class"].drop(index=[3, 4]).tolist() == out["predicted_class"].tolist()
    clash = run_cli("predict", "--model", str(trained), "--input", str(catalog), "--out", str(tmp_path / "x.csv"),
                    "--path-column", "nothing", check=False)
    assert clash.returncode == 2 and "has no nothing column" in clash.stderr and "--path-column" in clash.stderr


def test_two_ranks_equal_one_and_every_format_holds_the_same_rows(trained, sim_shards, tmp_path):
    run_cli("predict", "--model", str(trained / "model"), "--input", str(sim_shards), "--out",
            str(tmp_path / "one.csv"), "--embeddings", str(tmp_path / "one.npy"))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO_ROOT / "accelerate_configs" / "cpu_ddp.yaml"), "--main_process_port", str(free_port()),
               "-m", "stellar_dist", "predict", "--model", str(trained), "--input", str(sim_shards),
               "--out", str(tmp_path / "two.parquet"), "--embeddings", str(tmp_path / "two.npy")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    run_cli("predict", "--model", str(trained), "--input", str(sim_shards), "--out", str(tmp_path / "one.fits"))
    one = pd.read_csv(tmp_path / "one.csv", dtype={"objid": str})
    two = pd.read_parquet(tmp_path / "two.parquet")
    fits = Table.read(tmp_path / "one.fits").to_pandas()
    assert len(one) == 200 and one["row"].tolist() == list(range(200))
    def text(values):  # FITS string columns come back as bytes
        return [(value.decode() if isinstance(value, bytes) else str(value)).strip() for value in values]

    # SDSS-like 19-digit ids (every id an integer: pack recorded it): 64-bit integers in parquet and FITS, exact
    assert two["objid"].dtype == np.int64 and fits["objid"].dtype.str[1:] == "i8"
    assert one["objid"].str.len().eq(19).all()
    for other in (two, fits):
        assert other["row"].tolist() == one["row"].tolist()
        assert text(other["objid"]) == one["objid"].tolist()
        assert text(other["predicted_class"]) == one["predicted_class"].tolist()
        assert np.allclose(other["p_GALAXY"].to_numpy(), one["p_GALAXY"].to_numpy(), atol=1e-5)
    assert np.allclose(np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy"), atol=1e-4)
    import pyarrow.parquet as pq  # provenance: which model (path, hash), classes, date, in the file itself

    recorded = json.loads(pq.read_schema(tmp_path / "two.parquet").metadata[b"stellar_dist"])
    assert recorded["classes"] == "GALAXY,QSO,STAR" and len(recorded["model_sha256"]) == 16
    assert Table.read(tmp_path / "one.fits").meta["SDSHA256"] == recorded["model_sha256"]

    # a partitioned parquet dataset, 2 ranks each writing its own parts: the same rows as the single file
    parts = tmp_path / "parts"
    command[command.index("--out") + 1:command.index("--out") + 4] = [f"{parts}/", "--part-rows", "60"]
    command[command.index("--main_process_port") + 1] = str(free_port())
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(path.name for path in parts.glob("part-*.parquet"))
    assert names == [f"part-{part:06d}.parquet" for part in range(4)]  # 200 rows / 60 per part
    dataset = pd.read_parquet(parts)
    assert dataset["row"].tolist() == one["row"].tolist() and (dataset["rejected_reason"] == "").all()
    assert str(dataset["objid"].dtype) == "Int64"
    assert text(dataset["objid"]) == one["objid"].tolist()
    assert dataset["predicted_class"].tolist() == one["predicted_class"].tolist()
    assert np.allclose(dataset["p_GALAXY"].to_numpy(), one["p_GALAXY"].to_numpy(), atol=1e-5)
    assert json.loads((parts / "_index.json").read_text())["complete"] is True
    # resumable: a lost part is the only one computed again
    (parts / names[2]).unlink()
    before = {name: (parts / name).stat().st_mtime_ns for name in names if name != names[2]}
    run_cli("predict", "--model", str(trained), "--input", str(sim_shards), "--out", f"{parts}/",
            "--part-rows", "60")
    assert {name: (parts / name).stat().st_mtime_ns for name in before} == before
    assert pd.read_parquet(parts)["predicted_class"].tolist() == one["predicted_class"].tolist()
    changed = run_cli("predict", "--model", str(trained), "--input", str(sim_shards), "--out", f"{parts}/",
                      "--part-rows", "50", check=False)
    assert changed.returncode == 2 and "holds parts of another prediction (part_rows differ)" in changed.stderr


def test_predict_names_the_clusters_of_the_final_clustering(sim_shards, tmp_path):
    run = tmp_path / "run"
    train(f"data.shards={sim_shards}", f"output_dir={run}", "cluster.k=4", "cluster.pca_dim=8")
    run_cli("predict", "--model", str(run), "--input", str(sim_shards), "--out", str(tmp_path / "p.csv"))
    predicted = pd.read_csv(tmp_path / "p.csv", dtype={"objid": str}).set_index("objid")
    clustered = pd.read_csv(run / "assignments.csv", dtype={"objid": str}).set_index("objid")
    joined = clustered.join(predicted.add_suffix("_predict"))
    assert len(joined) == 200 and (joined["cluster"] == joined["cluster_predict"]).mean() > 0.98
    assert np.allclose(joined["distance"], joined["cluster_distance_predict"], atol=1e-3)
    description = json.loads((run / "model" / "config.json").read_text())
    far = description["cluster"]["far_feature_distance"]
    beyond = predicted["feature_distance"] > far
    assert (predicted["unusual"] == ((predicted["max_probability"] < 0.6) | beyond)).all()
    # the two reasons apart: the model hesitates, or the object is unlike the training images
    assert (predicted["low_confidence"] == (predicted["max_probability"] < 0.6)).all()
    assert (predicted["unlike_training"] == beyond).all()
    # calibrated: ~1% of the images the clustering was fit on lie beyond the threshold (histogram bins: 0.2%)
    fit = joined["split"].isin(["labeled", "unlabeled"])
    assert fit.sum() > 100 and beyond[joined.index[fit]].mean() <= 0.02
    # images unlike the training ones (noise fields): flagged one by one, and the share gives a warning
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "noise"
    folder.mkdir()
    for index in range(60):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    result = run_cli("predict", "--model", str(run), "--input", str(folder), "--out", str(tmp_path / "noise.csv"))
    noise = pd.read_csv(tmp_path / "noise.csv")
    assert (noise["feature_distance"] > far).mean() > 0.9 and noise["unusual"].all()
    assert noise["unlike_training"].mean() > 0.9
    assert sorted(noise["objid"]) == list(range(60))  # <objid>.png: the file name is the object's id
    assert "warning: 60 of 60 objects (100.0%) lie farther from the training images' features" in result.stdout


def test_a_rank_reads_only_the_shards_of_its_own_parts(sim_shards, tmp_path):
    """input_rows(needed=...): a shard none of whose rows is needed is never opened (its rows come as None), the
    others come with their true row numbers."""
    import shutil

    from stellar_dist.inference.inputs import input_rows

    shards = tmp_path / "shards"
    shutil.copytree(sim_shards, shards)
    manifest = json.loads((shards / "manifest.json").read_text())
    entries = [entry for split in ("labeled", "unlabeled", "test") for entry in manifest["shards"][split]]
    first = entries[0]["num_samples"]
    (shards / entries[1]["name"]).unlink()  # not needed below: must not be read
    every = list(input_rows(sim_shards).rows)
    inputs = input_rows(shards, needed=lambda start, stop: start == 0)
    total, rows = inputs.total, list(inputs.rows)
    assert len(rows) == total == len(every)
    assert rows[:first] == every[:first] and all(row is None for row in rows[first:])


def test_the_readmes_python_example_runs_as_written(trained, sim_catalog, tmp_path):
    """The README's "From Python" block, run as a user's script in a folder holding runs/demo, cutouts/ and
    my_cutouts.fits (a FITS table of relative paths: its text arrives as bytes)."""
    import re
    import shutil

    from conftest import Warm

    readme = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"\*\*From Python\*\*.*?```python\n(.*?)```", readme, flags=re.S).group(1)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "demo").symlink_to(trained)
    catalog = pd.read_csv(sim_catalog).head(40)
    shutil.copytree(sim_catalog.parent / "images", tmp_path / "cutouts" / "images")
    Table({"image_path": catalog["image_path"].tolist(), "objid": np.arange(40, dtype=np.int64) + 10**18,
           "Class": catalog["Class"].tolist()}).write(tmp_path / "my_cutouts.fits")
    script = tmp_path / "example.py"
    script.write_text(block)
    result = Warm.run([str(script)], path=str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    candidates = Table.read(tmp_path / "qso_candidates.fits")
    assert set(candidates["predicted_class"]) <= {"QSO"}  # the tiny test model may find none: an empty table
    assert candidates["objid"].dtype.str[1:] == "i8"
    assert {"max_probability", "rejected_reason"} <= set(candidates.colnames)
