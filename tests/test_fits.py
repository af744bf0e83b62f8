"""N-band FITS input: simulate --format fits, pack (lossless, asinh stretch in the manifest), the three file layouts,
bad files listed, catalogs as FITS/ECSV/parquet tables, 5-channel training, predict and export."""

import io
import json
import tarfile

import numpy as np
import pandas as pd
import pytest
import torch
from astropy.io import fits
from astropy.table import Table

from conftest import run_cli, train
from stellar_dist.data.catalog import read_catalog
from stellar_dist.model.network import StellarNet

BANDS = ["U", "G", "R", "I", "Z"]


@pytest.fixture(scope="module")
def fits_catalog(tmp_path_factory):
    """60 simulated objects as ugriz FITS files (catalog_fits.csv) and as gri JPEGs (catalog.csv)."""
    out = tmp_path_factory.mktemp("simfits") / "data"
    run_cli("simulate", "--out", str(out), "--num", "60", "--seed", "4", "--workers", "2", "--format", "both")
    return out / "catalog_fits.csv"


@pytest.fixture(scope="module")
def fits_shards(fits_catalog, tmp_path_factory):
    out = tmp_path_factory.mktemp("fitsshards") / "shards"
    run_cli("pack", "--catalog", str(fits_catalog), "--out", str(out), "--labeled-fraction", "0.3",
            "--test-fraction", "0.3", "--image-size", "32", "--preprocess", "crop", "--shard-size", "20",
            "--workers", "2")
    return out


def shard_arrays(shards) -> dict[str, np.ndarray]:
    """{source path: stored array} of every sample."""
    found = {}
    for path in sorted(shards.glob("*.tar")):
        with tarfile.open(path) as tar:
            members = {member.name: tar.extractfile(member).read() for member in tar.getmembers()}
        for name, payload in members.items():
            if name.endswith(".npy"):
                record = json.loads(members[name.replace(".npy", ".json")])
                found[record["source"]] = np.load(io.BytesIO(payload), allow_pickle=False)
    return found


def test_pack_stores_the_bands_losslessly_with_the_stretch(fits_catalog, fits_shards):
    manifest = json.loads((fits_shards / "manifest.json").read_text())
    assert manifest["encoding"] == "npy" and manifest["channels"] == 5 and manifest["bands"] == BANDS
    stretch = manifest["stretch"]
    assert stretch["kind"] == "asinh" and all(len(stretch[key]) == 5 for key in ("sky", "softening", "scale"))
    assert min(stretch["softening"]) > 0 and stretch["measured_on"] == 60 - 18  # training rows only, not test
    arrays = shard_arrays(fits_shards)
    assert len(arrays) == 60 and not manifest["skipped"]
    for source, stored in list(arrays.items())[:10]:
        with fits.open(fits_catalog.parent / source) as hdul:
            cube = np.stack([hdul[band].data for band in BANDS]).astype(np.float32)
        assert stored.dtype == np.float32 and stored.shape == (5, 32, 32)
        assert np.array_equal(stored, cube[:, 48:80, 48:80])  # the centre crop, bit for bit
    assert "OK" in run_cli("pack", "--verify", str(fits_shards)).stdout


def _small_catalog(fits_catalog, folder, layout: str) -> pd.DataFrame:
    """The first 12 objects in `layout`: "cube" (one 5 x H x W HDU), "unnamed" (5 HDUs without names, in order)
    or "per-band" (one file per band, image_path with {band})."""
    rows = pd.read_csv(fits_catalog, dtype=str).head(12)
    paths = []
    for index, source in enumerate(rows["image_path"]):
        with fits.open(fits_catalog.parent / source) as hdul:
            planes = [hdul[band].data for band in BANDS]
        if layout == "cube":
            fits.PrimaryHDU(np.stack(planes)).writeto(folder / f"{index}.fits")
            paths.append(f"{index}.fits")
        elif layout == "unnamed":
            fits.HDUList([fits.PrimaryHDU(planes[0])] + [fits.ImageHDU(plane) for plane in planes[1:]]).writeto(
                folder / f"{index}.fits")
            paths.append(f"{index}.fits")
        else:
            for band, plane in zip("ugriz", planes):
                fits.PrimaryHDU(plane).writeto(folder / f"{index}_{band}.fits")
            paths.append(f"{index}_{{band}}.fits")
    return pd.DataFrame({"image_path": paths, "Class": ["A", "B"] * 6, "objid": rows["objid"]})


@pytest.mark.parametrize("layout", ["cube", "unnamed", "per-band"])
def test_every_file_layout_gives_the_same_pixels(fits_catalog, tmp_path, layout):
    _small_catalog(fits_catalog, tmp_path, layout).to_csv(tmp_path / "catalog.csv", index=False)
    out = tmp_path / "shards"
    run_cli("pack", "--catalog", str(tmp_path / "catalog.csv"), "--out", str(out), "--bands", "u,g,r,i,z",
            "--labeled-fraction", "0.3", "--test-fraction", "0.3", "--image-size", "64", "--workers", "1")
    rows = pd.read_csv(fits_catalog, dtype=str).head(12)
    arrays = shard_arrays(out)
    assert len(arrays) == 12
    for index, source in enumerate(rows["image_path"]):
        stored = arrays[f"{index}_{{band}}.fits" if layout == "per-band" else f"{index}.fits"]
        with fits.open(fits_catalog.parent / source) as hdul:
            cube = np.stack([hdul[band].data for band in BANDS]).astype(np.float64)
        rebinned = cube.reshape(5, 64, 2, 64, 2).mean(axis=(2, 4))  # --preprocess resize: 2 x 2 area average
        assert np.allclose(stored, rebinned, rtol=1e-6, atol=1e-7)


def test_bad_fits_files_are_skipped_and_listed(fits_catalog, tmp_path):
    frame = _small_catalog(fits_catalog, tmp_path, "cube")
    (tmp_path / "0.fits").write_bytes(b"SIMPLE  =  not really a FITS file")
    with fits.open(tmp_path / "1.fits") as hdul:
        data = hdul[0].data.copy()
    data[:, :100] = np.nan  # off the survey's edge: 78% of the pixels
    (tmp_path / "1.fits").unlink()
    fits.PrimaryHDU(data).writeto(tmp_path / "1.fits")
    fits.PrimaryHDU(data[:3]).writeto(tmp_path / "three.fits")
    frame.loc[2, "image_path"] = "three.fits"
    frame.loc[3, "image_path"] = "missing.fits"
    frame.to_csv(tmp_path / "catalog.csv", index=False)
    out = tmp_path / "shards"
    result = run_cli("pack", "--catalog", str(tmp_path / "catalog.csv"), "--out", str(out), "--bands", "u,g,r,i,z",
                     "--labeled-fraction", "0.3", "--test-fraction", "0.3", "--workers", "1")
    manifest = json.loads((out / "manifest.json").read_text())
    reasons = {entry["image_path"].rsplit("/", 1)[-1]: entry["reason"] for entry in manifest["skipped"]}
    assert set(reasons) == {"0.fits", "1.fits", "three.fits", "missing.fits"} and "4 " in result.stdout
    assert "NaN" in reasons["1.fits"] and "3 planes" in reasons["three.fits"]
    assert sum(manifest["num_samples"].values()) == 8


def test_fits_input_mistakes_are_one_line_and_write_nothing(fits_catalog, tmp_path):
    frame = _small_catalog(fits_catalog, tmp_path, "per-band")
    frame.to_csv(tmp_path / "catalog.csv", index=False)
    result = run_cli("pack", "--catalog", str(tmp_path / "catalog.csv"), "--out", str(tmp_path / "s"), check=False)
    assert result.returncode != 0 and "--bands" in result.stderr and "Traceback" not in result.stderr
    frame.loc[0, "image_path"] = "picture.jpg"
    frame.to_csv(tmp_path / "mixed.csv", index=False)
    result = run_cli("pack", "--catalog", str(tmp_path / "mixed.csv"), "--out", str(tmp_path / "s"), "--bands",
                     "u,g,r,i,z", check=False)
    assert result.returncode != 0 and "mixes FITS" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "s").exists() and not list(tmp_path.glob(".sdtmp-*"))


@pytest.mark.parametrize("suffix", [".fits", ".ecsv", ".parquet"])
def test_catalog_tables_read_through_astropy_like_the_csv(tmp_path, suffix):
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / name).write_bytes(b"")
    objids = np.array([1237645941824356443, 1237645941824356444, 0], dtype=np.int64)
    table = Table({"image_path": ["a.jpg", "b.jpg", "c.jpg"], "Class": ["STAR", "", "QSO"], "objid": objids,
                   "r_mag": [17.5, 18.25, np.nan]}, masked=True)
    table["objid"].mask = [False, False, True]
    table["Class"].mask = [False, True, False]
    table.write(tmp_path / f"catalog{suffix}")
    frame = read_catalog(tmp_path / f"catalog{suffix}")
    assert frame["objid"].tolist() == [1237645941824356443, 1237645941824356444, None]  # exact, missing kept
    assert frame["Class"].tolist() == ["STAR", "", "QSO"] and frame["r_mag"].tolist() == [17.5, 18.25, None]
    assert frame["image_path"].tolist() == [str(tmp_path / name) for name in ("a.jpg", "b.jpg", "c.jpg")]


def test_first_convolution_takes_the_bands_and_keeps_rgb_weights(tmp_path):
    torch.manual_seed(0)
    rgb = StellarNet("resnet18", 3).eval()
    torch.save(rgb.backbone.state_dict(), tmp_path / "rgb.pt")
    five = StellarNet("resnet18", 3, weights=str(tmp_path / "rgb.pt"), in_channels=5).eval()
    assert five.backbone.conv1.in_channels == 5
    flat = torch.rand(2, 1, 32, 32)  # a source with the same flux in every band
    with torch.no_grad():
        assert torch.allclose(five.features(flat.expand(-1, 5, -1, -1)), rgb.features(flat.expand(-1, 3, -1, -1)),
                              atol=1e-5)
    assert StellarNet("mobilenet_v2", 3, in_channels=5).eval().features(torch.rand(1, 5, 32, 32)).shape == (1, 1280)


def test_five_band_training_predict_and_export_agree(fits_catalog, fits_shards, tmp_path):
    run = tmp_path / "run"
    train(f"data.shards={fits_shards}", f"output_dir={run}", "tracking=wandb", "cluster.at_end=true", "cluster.k=3")
    description = json.loads((run / "model" / "config.json").read_text())
    assert description["channels"] == 5 and description["stretch"]["kind"] == "asinh"
    assert (run / "plots" / "cluster_grid.png").is_file()
    worst = json.loads(next((run / "wandb").glob("offline-run-*/files/media/table/test/worst_classified_*.json"))
                       .read_text())  # 18 test objects, each with an i, r, g rendering of its 5 bands
    assert len(worst["data"]) == 18 and all(row[-1] == "Image" for row in worst["data"])  # None if unreadable
    run_cli("predict", "--model", str(run), "--input", str(fits_catalog), "--out", str(tmp_path / "p.csv"))
    predicted = pd.read_csv(tmp_path / "p.csv", dtype={"objid": str}).set_index("objid")
    evaluated = pd.read_csv(run / "predictions.csv", dtype={"objid": str}).set_index("objid")
    columns = [column for column in evaluated.columns if column.startswith("p_")]
    assert len(evaluated) == 18 and len(predicted) == 60
    assert np.allclose(predicted.loc[evaluated.index, columns].to_numpy(), evaluated[columns].to_numpy(), atol=1e-5)
    result = run_cli("export", "--model", str(run), "--format", "torchscript")
    assert "largest difference from PyTorch" in result.stdout and (run / "model" / "model.torchscript.pt").is_file()
