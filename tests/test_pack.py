import io
import json
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from conftest import REAL_DATA, run_cli


def read_shards(shards_dir: Path) -> dict[str, list[dict]]:
    """Every sample's JSON record per split, read straight from the tar files; checks each image decodes."""
    manifest = json.loads((shards_dir / "manifest.json").read_text())
    records = {}
    for split, entries in manifest["shards"].items():
        records[split] = []
        for entry in entries:
            with tarfile.open(shards_dir / entry["name"]) as tar:
                members = {member.name: member for member in tar.getmembers()}
                for name in sorted(members):
                    key, suffix = name.split(".", 1)
                    if suffix == "json":
                        record = json.loads(tar.extractfile(members[name]).read())
                        image = Image.open(io.BytesIO(tar.extractfile(members[f"{key}.{manifest['encoding']}"]).read()))
                        assert image.size == (manifest["image_size"],) * 2 and image.mode == "RGB"
                        records[split].append(record)
    return records


def test_round_trip_every_sample_once_and_stratified(sim_catalog, sim_shards):
    catalog = pd.read_csv(sim_catalog)
    manifest = json.loads((sim_shards / "manifest.json").read_text())
    records = read_shards(sim_shards)
    all_ids = [record["id"] for split in records.values() for record in split]
    assert sorted(all_ids) == list(range(len(catalog)))
    assert sorted(record["meta"]["objid"] for split in records.values() for record in split) == sorted(catalog["objid"])
    for split, split_records in records.items():
        assert len(split_records) == manifest["num_samples"][split]
        for entry in manifest["shards"][split]:
            assert entry["num_samples"] <= 40
    fractions = {"labeled": 0.2, "test": 0.2}
    for name, count in catalog["Class"].value_counts().items():
        for split, fraction in fractions.items():
            got = sum(1 for record in records[split] if record["class"] == name)
            assert abs(got - count * fraction) <= 1, (name, split, got, count)
            assert manifest["counts"][split][name] == got
    for record in records["unlabeled"]:
        assert "label" not in record and record["true_class"] in manifest["classes"]
    for record in records["labeled"] + records["test"]:
        assert manifest["classes"][record["label"]] == record["class"]
    assert manifest["skipped"] == [] and manifest["arguments"]["image_size"] == 32


def test_verify_passes_then_detects_tampering(sim_shards, tmp_path):
    assert "OK: " in run_cli("pack", "--verify", str(sim_shards)).stdout
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in sim_shards.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    victim = sorted(copy.glob("unlabeled-*.tar"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside an image (the tar's end is zero padding)
    victim.write_bytes(bytes(data))
    result = run_cli("pack", "--verify", str(copy), check=False)
    assert result.returncode == 2 and "sha256" in result.stderr


def test_same_seed_same_split(sim_catalog, sim_shards, tmp_path):
    out = tmp_path / "again"
    run_cli("pack", "--catalog", str(sim_catalog), "--out", str(out), "--labeled-fraction", "0.2",
            "--test-fraction", "0.2", "--image-size", "32", "--shard-size", "40", "--workers", "1")
    first, second = read_shards(sim_shards), read_shards(out)
    for split in first:
        assert sorted(r["id"] for r in first[split]) == sorted(r["id"] for r in second[split])


def test_folder_per_class_and_unknown_classes(tmp_path):
    for cls, count in (("GALAXY", 6), ("STAR", 6)):
        (tmp_path / "in" / cls).mkdir(parents=True)
        for index in range(count):
            # distinct pixels per class: one image under two classes is refused (issue 16)
            Image.new("RGB", (40, 40), (index * 20, 0, 100 * (cls == "STAR"))).save(tmp_path / "in" / cls / f"{index}.png")
    run_cli("pack", "--catalog", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--labeled-fraction", "0.34",
            "--test-fraction", "0.34", "--image-size", "32", "--preprocess", "crop")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["classes"] == ["GALAXY", "STAR"] and sum(manifest["num_samples"].values()) == 12


@pytest.mark.real_data
@pytest.mark.skipif(not REAL_DATA.exists(), reason="../shared/sdss_dr16 is absent")
def test_real_sdss_slice(tmp_path):
    catalog = pd.read_csv(REAL_DATA / "catalog.csv")
    sample = pd.concat([group.head(60) for _, group in catalog.groupby("Class")])
    sample = sample.assign(image_path=[str(REAL_DATA / path) for path in sample["image_path"]])
    sample.to_csv(tmp_path / "slice.csv", index=False)
    run_cli("pack", "--catalog", str(tmp_path / "slice.csv"), "--out", str(tmp_path / "shards"), "--workers", "2")
    records = read_shards(tmp_path / "shards")
    assert sum(len(split) for split in records.values()) == 180
    assert {record["meta"]["objid"] for split in records.values() for record in split} == set(sample["objid"])
    # images outside the catalog's folder keep the absolute path they were given (select writes it), not ../../..
    assert {record["source"] for split in records.values() for record in split} == set(sample["image_path"])
    assert "OK: " in run_cli("pack", "--verify", str(tmp_path / "shards")).stdout


def test_labeled_counts_are_nested_stratified_and_keep_the_test_split():
    """pack --labeled-count N: one label per class first, then by class share; the N-label set holds every
    smaller one, and the test split is the same rows for every count and fraction. --validation-fraction carves
    the evaluation split from the training pool and packs none of the real test rows."""
    import numpy as np

    from stellar_dist.data.splits import stratified_split
    from stellar_dist.core.errors import UserError

    rng = np.random.default_rng(0)
    classes = pd.Series(rng.choice(["GALAXY", "QSO", "STAR"], size=3000, p=[0.6, 0.08, 0.32]))
    test = np.flatnonzero(stratified_split(classes, 0.1, 0.2, seed=0) == "test")
    previous = set()
    for count in (3, 30, 100, 300, 1000):
        splits = stratified_split(classes, 0.1, 0.2, seed=0, labeled_count=count)
        labeled = np.flatnonzero(splits == "labeled")
        assert len(labeled) == count and previous <= set(labeled)
        assert np.array_equal(np.flatnonzero(splits == "test"), test)
        shares = classes[labeled].value_counts()
        assert set(shares.index) == {"GALAXY", "QSO", "STAR"}
        pool = classes[np.flatnonzero(splits != "test")].value_counts(normalize=True)
        if count >= 100:  # within two labels of the pool's class mix
            assert all(abs(shares[name] - count * pool[name]) <= 2 for name in pool.index)
        previous = set(labeled)
    validation = stratified_split(classes, 0.1, 0.2, seed=0, labeled_count=100, validation_fraction=0.1)
    assert np.array_equal(np.flatnonzero(validation == "heldout"), test)  # never packed
    assert not set(np.flatnonzero(validation == "test")) & set(test)
    assert abs((validation == "test").sum() - 300) <= 3
    with pytest.raises(UserError, match="fewer than the 3 classes"):
        stratified_split(classes, 0.1, 0.2, seed=0, labeled_count=2)
    # --labeled-seed: other labeled objects (still nested, stratified), the same test and validation rows.
    for kind in ({"labeled_count": 30}, {"labeled_count": 100, "validation_fraction": 0.1}, {}):
        base = stratified_split(classes, 0.1, 0.2, seed=0, **kind)
        drawn = [stratified_split(classes, 0.1, 0.2, seed=0, labeled_seed=seed, **kind) for seed in (0, 1)]
        for splits in drawn:
            assert all(np.array_equal(splits == name, base == name) for name in ("test", "heldout"))
            assert (splits == "labeled").sum() == (base == "labeled").sum()
            assert classes[splits == "labeled"].value_counts().equals(classes[base == "labeled"].value_counts())
        labeled = [set(np.flatnonzero(splits == "labeled")) for splits in drawn]
        assert len(labeled[0] & labeled[1]) < len(labeled[0]) / 2  # mostly other objects
    smaller = stratified_split(classes, 0.1, 0.2, seed=0, labeled_count=30, labeled_seed=1) == "labeled"
    larger = stratified_split(classes, 0.1, 0.2, seed=0, labeled_count=100, labeled_seed=1) == "labeled"
    assert not (smaller & ~larger).any()


def test_pack_labeled_count_end_to_end(sim_catalog, tmp_path):
    out = tmp_path / "shards"
    run_cli("pack", "--catalog", str(sim_catalog), "--out", str(out), "--labeled-count", "9", "--image-size", "16",
            "--shard-size", "500", "--workers", "1", "--pixel-scale", "0.396")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_samples"]["labeled"] == 9 and all(manifest["counts"]["labeled"].values())
    assert manifest["arguments"]["labeled_count"] == 9
    # 128 px at 0.396"/px area-resized to 16 px: 3.168"/px (the figures' scale bars); ids all integers
    assert abs(manifest["pixel_scale_arcsec"] - 0.396 * 128 / 16) < 1e-9 and manifest["objid_type"] == "int64"
    refused = run_cli("pack", "--catalog", str(sim_catalog), "--out", str(tmp_path / "no"), "--pixel-scale", "-1",
                      check=False)
    assert refused.returncode == 2 and "--pixel-scale -1.0 must be arcseconds per input pixel" in refused.stderr
    assert not (tmp_path / "no").exists()


def test_a_fits_cutouts_wcs_gives_the_pixel_scale(tmp_path):
    """FITS cutouts: arcsec per pixel from the celestial WCS; none without one; a crop keeps it, a resize scales."""
    import numpy as np
    from astropy.io import fits

    from stellar_dist.data.bands import input_pixel_scale, packed_pixel_scale
    from stellar_dist.data.pack import PackOptions

    header = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CDELT1": -0.262 / 3600, "CDELT2": 0.262 / 3600,
                          "CRPIX1": 32, "CRPIX2": 32, "CRVAL1": 150.0, "CRVAL2": 2.0})
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((64, 64), np.float32), header, name="r")]).writeto(
        tmp_path / "wcs.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((64, 64), np.float32), name="r")]).writeto(
        tmp_path / "plain.fits")
    assert abs(input_pixel_scale(str(tmp_path / "wcs.fits")) - 0.262) < 1e-9
    assert input_pixel_scale(str(tmp_path / "plain.fits")) is None
    crop, resize = PackOptions(preprocess="crop", image_size=32), PackOptions(preprocess="resize", image_size=32)
    assert abs(packed_pixel_scale(str(tmp_path / "wcs.fits"), crop) - 0.262) < 1e-9
    assert abs(packed_pixel_scale(str(tmp_path / "wcs.fits"), resize) - 0.524) < 1e-9
    assert packed_pixel_scale(str(tmp_path / "plain.fits"), resize) is None


def test_catalog_columns_by_name_as_sdss_tables_spell_them(sim_catalog, tmp_path):
    """An SDSS-style table: `class` (lower case, found without an option), the image column and a 19-digit
    `specObjID` named by options; the ids reach the shards exactly. Two columns that match only apart from case are
    refused in one line."""
    from astropy.table import Table

    frame = pd.read_csv(sim_catalog, dtype=str)
    ids = [str(1237650000000000000 + i) for i in range(len(frame))]
    sdss = pd.DataFrame({"cutout": [str(sim_catalog.parent / path) for path in frame["image_path"]],
                         "class": frame["Class"], "specObjID": ids})
    table = Table.from_pandas(sdss)
    table["specObjID"] = [int(value) for value in sdss["specObjID"]]
    table.write(tmp_path / "sdss.fits")
    out = tmp_path / "shards"
    run_cli("pack", "--catalog", str(tmp_path / "sdss.fits"), "--out", str(out), "--path-column", "cutout",
            "--id-column", "specObjID", "--image-size", "16", "--shard-size", "500", "--workers", "1")
    records = [record for split in read_shards(out).values() for record in split]
    assert len(records) == len(frame)
    assert {str(record["meta"]["objid"]) for record in records} == set(sdss["specObjID"])
    manifest = json.loads((out / "manifest.json").read_text())
    counts = {name: sum(split.get(name, 0) for split in manifest["counts"].values()) for name in manifest["classes"]}
    assert counts == frame["Class"].value_counts().to_dict()
    sdss["CLASS"] = sdss["class"]
    sdss.to_csv(tmp_path / "twice.csv", index=False)
    result = run_cli("pack", "--catalog", str(tmp_path / "twice.csv"), "--out", str(tmp_path / "no"),
                     "--path-column", "cutout", check=False)
    assert result.returncode == 2 and "several columns named 'Class' apart from case" in result.stderr
